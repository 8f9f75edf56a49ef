"""The conv warm start (``vgs-pretrain-conv``): it learns, it saves and loads exactly, bad files are one line."""

import math

import numpy as np
import pytest
import torch

from s3prl_vgs.errors import FileProblem
from s3prl_vgs.modules.speech_trunk import SpeechTrunk, SpeechTrunkConfig
from s3prl_vgs.pretrain_conv import ConvPretrainConfig, LogMel, load_conv_state, pretrain, resolve, save


def _signals(n: int, seconds: float, seed: int):
    """Phone-like test signals: 100 ms segments, each 1-3 random tones or a noise burst, at random levels."""
    rng = np.random.default_rng(seed)
    seg = 1600
    out = []
    for _ in range(n):
        parts = []
        for _ in range(int(seconds * 16000) // seg):
            t = np.arange(seg) / 16000
            if rng.random() < 0.25:
                x = rng.standard_normal(seg)
            else:
                x = sum(np.sin(2 * math.pi * rng.uniform(100, 4000) * t + rng.uniform(0, 6)) for _ in range(rng.integers(1, 4)))
            parts.append(rng.uniform(0.05, 1.0) * x)
        out.append(np.concatenate(parts).astype(np.float32))
    return out


def _tiny_cfg(**kw):
    return SpeechTrunkConfig(hidden_size=16, num_heads=2, intermediate_size=32, num_layers=1, conv_dim=(8,) * 7, **kw)


def test_pretraining_learns_the_log_mel_regression():
    cfg = ConvPretrainConfig(conv_dim=(8,) * 7, steps=80, batch_size=8, crop_sec=1.0, lr=1e-2, n_mels=16)
    _, curve = pretrain(_signals(24, 1.5, seed=0), cfg, log=lambda s: None)
    # standardised targets: a constant prediction has loss ~1 (measured: 1.07 -> 0.72 in these 80 steps)
    assert curve["first_loss"] > 0.9
    assert curve["final_loss"] < 0.8 * curve["first_loss"]


def test_save_then_conv_init_loads_the_same_weights(tmp_path):
    conv = SpeechTrunk(_tiny_cfg(freeze_conv=False)).feature_extractor
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "conv.safetensors"
    save(conv, path, {"task": "test"})
    trunk = SpeechTrunk(_tiny_cfg(conv_init=str(path)))
    for (k, a), b in zip(conv.state_dict().items(), trunk.feature_extractor.state_dict().values()):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in trunk.feature_extractor.parameters())  # freeze_conv defaults to True
    assert load_conv_state(str(path), SpeechTrunk(_tiny_cfg()).feature_extractor)["task"] == "test"


def test_a_conv_of_other_widths_is_refused_naming_file_and_key(tmp_path):
    path = tmp_path / "conv.safetensors"
    save(SpeechTrunk(_tiny_cfg()).feature_extractor, path, {})
    wide = SpeechTrunkConfig(hidden_size=16, num_heads=2, intermediate_size=32, num_layers=1, conv_dim=(16,) * 7,
                             conv_init=str(path))
    with pytest.raises(FileProblem, match=r"conv\.safetensors.*conv_layers\.0\.conv\.weight has shape \(8, 1, 10\).*\(16, 1, 10\)"):
        SpeechTrunk(wide)


def test_unknown_name_and_broken_file_are_one_line_errors(tmp_path):
    with pytest.raises(FileProblem, match=r"no packaged conv warm start 'nope' \(packaged: .*synth_conv32"):
        resolve("nope")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FileProblem, match=r"bad\.safetensors: not a readable safetensors file"):
        SpeechTrunk(_tiny_cfg(conv_init=str(bad)))
    with pytest.raises(FileProblem, match="not found"):
        resolve(str(tmp_path / "missing.safetensors"))


def _linear_fit_r2(conv, wavs, logmel):
    """R^2 of the best linear read-out of the standardised log-mel from the conv's frames."""
    trunk = SpeechTrunk(_packaged_cfg())
    trunk.feature_extractor = conv
    xs, ys = [], []
    with torch.no_grad():
        for w in wavs:
            x = torch.from_numpy(w)[None]
            x = (x - x.mean()) / x.std()
            f = trunk._conv_features(x, torch.tensor([x.size(1)]))[0]
            y = logmel(x)[0][: f.size(0)]
            xs.append(f[: y.size(0)])
            ys.append(y)
    X, Y = torch.cat(xs).double(), torch.cat(ys).double()
    Y = (Y - Y.mean(0)) / Y.std(0)
    X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    W = torch.linalg.lstsq(X, Y).solution
    return float(1 - (X @ W - Y).pow(2).mean() / Y.pow(2).mean())


def _packaged_cfg(**kw):
    return SpeechTrunkConfig(hidden_size=64, num_heads=4, intermediate_size=256, num_layers=1, conv_dim=(32,) * 7, **kw)


def test_packaged_warm_start_carries_the_spectrum_a_random_conv_loses():
    wavs = _signals(12, 2.0, seed=1)
    logmel = LogMel(40)
    torch.manual_seed(0)
    random_conv = SpeechTrunk(_packaged_cfg()).feature_extractor
    packaged = SpeechTrunk(_packaged_cfg(conv_init="synth_conv32")).feature_extractor
    r2_packaged, r2_random = _linear_fit_r2(packaged, wavs, logmel), _linear_fit_r2(random_conv, wavs, logmel)
    # measured on these non-speech signals: packaged 0.43, random convs (3 seeds) 0.09-0.15
    assert r2_packaged > 0.3
    assert r2_packaged > r2_random + 0.2


def test_model_dir_loading_does_not_need_the_warm_start_file():
    from s3prl_vgs.checkpoint import without_pretrained

    conf = {"speech": {"conv_init": "/gone/conv.safetensors", "pretrained": "facebook/x"}, "preset": "tiny"}
    assert without_pretrained(conf) == {"speech": {"conv_init": None, "pretrained": None}, "preset": "tiny"}
