"""The frozen-conv feature cache (``SpeechTrunkConfig.conv_cache_mb``): cached == uncached."""

import pytest
import torch

import s3prl_vgs
from s3prl_vgs.config import ConfigError
from s3prl_vgs.modules.speech_trunk import SpeechTrunk, SpeechTrunkConfig


def _batch(seed=0, lengths=(16000, 9000, 12345)):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    wavs = torch.randn(len(lengths), int(lengths.max()), generator=g)
    for i, n in enumerate(lengths):
        wavs[i, n:] = 0
    return wavs, lengths


def _pair(family):
    """The same model twice (same weights), without and with the cache."""
    if family == "fast_vgs":
        plain = s3prl_vgs.build_model("fast_vgs", "tiny", speech={"conv_init": "synth_conv32"}).eval()
        cached = s3prl_vgs.build_model("fast_vgs", "tiny", speech={"conv_init": "synth_conv32", "conv_cache_mb": 8}).eval()
    else:
        plain = s3prl_vgs.build_model("vg_mim", "tiny", audio={"conv_init": "synth_conv32"}).eval()
        cached = s3prl_vgs.build_model("vg_mim", "tiny", audio={"conv_init": "synth_conv32", "conv_cache_mb": 8}).eval()
    cached.load_state_dict(plain.state_dict())
    return plain, cached


def _trunk(model):
    return model.speech_trunk


@pytest.mark.parametrize("family", ["fast_vgs", "vg_mim"])
def test_cached_audio_encoding_equals_uncached(family):
    plain, cached = _pair(family)
    trunk = _trunk(cached)
    wavs, lengths = _batch()
    with torch.no_grad():
        ref = plain.encode_audio(wavs, lengths)
        first = cached.encode_audio(wavs, lengths)  # fills the cache
        assert (trunk.conv_cache.hits, trunk.conv_cache.misses) == (0, 3)
        # the same utterances in another order, with another amount of padding, plus a new one
        wavs2, lengths2 = _batch(seed=1, lengths=(8000,))
        mixed = torch.zeros(4, 20000)
        for row, (w, n) in enumerate([(wavs[2], 12345), (wavs2[0], 8000), (wavs[0], 16000), (wavs[1], 9000)]):
            mixed[row, :n] = w[:n]
        again = cached.encode_audio(mixed, torch.tensor([12345, 8000, 16000, 9000]))
        assert (trunk.conv_cache.hits, trunk.conv_cache.misses) == (3, 4)
        ref_mixed = plain.encode_audio(mixed, torch.tensor([12345, 8000, 16000, 9000]))
    torch.testing.assert_close(first.coarse, ref.coarse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again.coarse, ref_mixed.coarse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again.coarse[[2, 3, 0]], ref.coarse, atol=1e-5, rtol=1e-5)


def test_cached_training_step_equals_uncached():
    """Loss and every gradient of a training forward are those of the uncached model."""
    plain, cached = _pair("fast_vgs")
    wavs, lengths = _batch()
    feats, boxes = torch.randn(3, 36, 32), torch.rand(3, 36, 4)
    grads = []
    for model in (plain, cached, cached):  # the second cached pass is all hits
        model.train().zero_grad()
        torch.manual_seed(0)  # the same dropout masks
        out = model(wavs, lengths, feats, boxes, image_ids=[0, 1, 2])
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert _trunk(cached).conv_cache.hits == 3
    for loss, g in grads[1:]:
        torch.testing.assert_close(loss, grads[0][0], atol=1e-5, rtol=1e-5)
        assert g.keys() == grads[0][1].keys()
        for name in g:
            torch.testing.assert_close(g[name], grads[0][1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_cache_drops_entries_when_conv_weights_change_and_stays_bounded():
    trunk = SpeechTrunk(SpeechTrunkConfig(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=1,
                                          conv_dim=(16,) * 7, num_conv_pos_embedding_groups=4, conv_cache_mb=0.05))
    trunk.eval()
    wavs, lengths = _batch()
    with torch.no_grad():
        trunk(wavs, lengths)
        assert len(trunk.conv_cache) == 3
        trunk.feature_extractor.conv_layers[0].conv.weight.mul_(2.0)  # bumps the version counter
        changed = trunk(wavs, lengths)
        assert trunk.conv_cache.misses == 6  # recomputed, not served stale
        fresh = SpeechTrunk(trunk.config.replace(conv_cache_mb=0.0)).eval()
        fresh.load_state_dict(trunk.state_dict())
        torch.testing.assert_close(changed.cls, fresh(wavs, lengths).cls, atol=1e-5, rtol=1e-5)
        # 24 more utterances of ~2.5 kB of features each overflow 0.05 MB: the oldest are evicted
        for seed in range(8):
            w, n = _batch(seed=10 + seed)
            trunk(w, n)
        assert trunk.conv_cache.bytes <= trunk.conv_cache.max_bytes
        assert 0 < len(trunk.conv_cache) < 27


def test_cache_needs_a_frozen_conv():
    with pytest.raises(ConfigError, match="conv_cache_mb needs freeze_conv"):
        SpeechTrunkConfig(freeze_conv=False, conv_cache_mb=16)
    with pytest.raises(ConfigError, match="conv_cache_mb needs freeze_conv"):
        SpeechTrunkConfig(official_compat=True, conv_cache_mb=16)
