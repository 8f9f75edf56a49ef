"""The S3PRL contract with real s3prl: S3PRLUpstream, Featurizer, ESPnet's frontend, entry errors.

The runner runs are in test_s3prl_runner.py, fresh-interpreter registration in test_s3prl_hub.py.
"""

import pytest
import torch

import s3prl_vgs

MODELS = ["fast_vgs", "vg_mim"]


@pytest.fixture(scope="module", params=MODELS)
def model_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    model = s3prl_vgs.build_model(request.param, preset="tiny")
    path = tmp_path_factory.mktemp(request.param)
    model.save(path)
    return request.param, path


def test_s3prl_upstream_and_featurizer(model_dir):
    from s3prl.nn import Featurizer, S3PRLUpstream

    name, path = model_dir
    up = S3PRLUpstream(f"{name}_local", path_or_url=str(path)).eval()
    model = s3prl_vgs.load_model(path).eval()
    wavs = torch.randn(2, 16000)
    wavs_len = torch.tensor([16000, 9600])
    with torch.no_grad():
        all_hs, all_lens = up(wavs, wavs_len)
        ref = model.encode_audio(wavs[1:, :9600], wavs_len[1:])
    assert up.num_layers == len(ref.hidden_states) == len(all_hs)
    assert up.downsample_rates == [320] * up.num_layers
    assert [int(x) for x in all_lens[0]] == [50, 30]  # (len - 1) // 320 + 1
    n = ref.hidden_states[-1].shape[1]  # the utterance alone: 29 conv frames
    torch.testing.assert_close(all_hs[-1][1, :n], ref.hidden_states[-1][0], atol=1e-5, rtol=1e-4)
    feat = Featurizer(up)
    hs, hs_len = feat(all_hs, all_lens)
    assert hs.shape == (2, 50, feat.output_size) and hs_len.tolist() == [50, 30]
    assert feat.downsample_rate == 320


def test_espnet_s3prl_frontend(model_dir):
    from espnet2.asr.frontend.s3prl import S3prlFrontend

    name, path = model_dir
    fe = S3prlFrontend(frontend_conf={"upstream": f"{name}_local", "path_or_url": str(path)}, multilayer_feature=True)
    feats, lens = fe(torch.randn(2, 12800), torch.tensor([12800, 8000]))
    assert feats.shape[0] == 2 and feats.shape[1] == 40 and lens.tolist() == [40, 25]
    assert fe.output_size() == feats.shape[-1] and fe.hop_length == 320


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    import s3prl.hub as hub

    with pytest.raises(ValueError, match="vg_mim_local: pass ckpt=MODEL_DIR"):
        hub.vg_mim_local()
    with pytest.raises(FileNotFoundError, match="nope: not a model directory.*use fast_vgs_url"):
        hub.fast_vgs_local(ckpt=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="vg_hubert: s3prl-vgs publishes no default checkpoint; pass ckpt=MODEL_DIR"):
        hub.vg_hubert()
    with pytest.raises(ValueError, match="not a URL .* or a Hugging Face repo id"):
        hub.vg_mim_url(ckpt="no such thing")
    with pytest.raises(ValueError, match=r"file:///nonexistent/m: could not download the model directory"):
        hub.vg_mim_url(ckpt="file:///nonexistent/m")


def test_fast_vgs_trm2_stream_has_its_own_key_and_rate(tmp_path):
    import s3prl.hub as hub

    torch.manual_seed(0)
    s3prl_vgs.build_model("fast_vgs", preset="tiny").save(tmp_path / "m")
    expert = hub.fast_vgs_local(ckpt=str(tmp_path / "m")).eval()
    assert expert.get_downsample_rates("hidden_states") == 320
    rate2 = expert.get_downsample_rates("trm2_hidden_states")
    assert rate2 == 320 * expert.model.config.conv2_downsample
    wavs = [torch.randn(32000), torch.randn(20000)]
    with torch.no_grad():
        out = expert(wavs)
    T2 = out["trm2_hidden_states"][-1].shape[1]
    # 32000 samples -> 99 Trm1 frames; each stride-2 Conv2 stage gives ceil(n / 2): 50, 25, 13, 7.
    assert T2 == 7
    assert len(out["trm2_hidden_states"]) == 2 and out["hidden_states"][0].shape[1] == 99
