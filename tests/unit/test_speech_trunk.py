"""Speech trunk: CLS placement, masks, padding invariance, attention, pretrained loading."""

import pytest
import torch

from s3prl_vgs.modules.speech_trunk import (
    SpeechTrunk,
    SpeechTrunkConfig,
    conv_output_lengths,
    official_frame_lengths,
)

TINY = dict(hidden_size=32, num_heads=4, intermediate_size=64, num_layers=2, conv_dim=(16,) * 7,
            dropout=0.0, attention_dropout=0.0)


def tiny(**kw):
    torch.manual_seed(0)
    return SpeechTrunk(SpeechTrunkConfig(**{**TINY, **kw})).eval()


def test_official_frame_rule_matches_fixture_numbers():
    # reference/parity README: FaST A pads to 32000 samples (T=99, chunk 323);
    # official valid frames 50/85/99 against 49/84/99 from the conv-length rule.
    lengths = torch.tensor([16000, 27200, 32000])
    T = int(conv_output_lengths(torch.tensor([32000]), (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))[0])
    assert T == 99
    assert official_frame_lengths(lengths, 32000, T).tolist() == [50, 85, 99]
    assert conv_output_lengths(lengths, (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)).tolist() == [49, 84, 99]
    # VG-HuBERT A: 40000 samples, T=124, chunk 322 -> 50/90/124
    assert official_frame_lengths(torch.tensor([16000, 28800, 40000]), 40000, 124).tolist() == [50, 90, 124]


@pytest.mark.parametrize("cls_position", ["before_pos_conv", "after_pos_conv"])
def test_padded_batch_equals_each_utterance_alone(cls_position):
    m = tiny(cls_position=cls_position)
    w = torch.randn(3, 16000)
    lengths = torch.tensor([16000, 9000, 5000])
    with torch.no_grad():
        out = m(w, lengths)
        assert out.frames.shape == (3, 49, 32)
        assert out.padding_mask.sum(-1).tolist() == [0, 49 - 27, 49 - 15]
        for i in range(3):
            solo = m(w[i:i + 1, : lengths[i]])
            n = int(out.frame_lengths[i])
            assert solo.frames.shape[1] == n
            torch.testing.assert_close(out.frames[i, :n], solo.frames[0], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(out.cls[i], solo.cls[0], atol=2e-5, rtol=1e-4)


def test_official_compat_depends_on_padding_like_the_official_code():
    m = tiny(official_compat=True)
    w = torch.randn(1, 9000)
    with torch.no_grad():
        a = m(w, torch.tensor([9000]))
        b = m(torch.nn.functional.pad(w, (0, 7000)), torch.tensor([9000]))
    assert int(b.frame_lengths[0]) == 28  # ceil(9000 / (16000 // 49 = 326)) under the chunk rule
    assert (a.frames[0, :27] - b.frames[0, :27]).abs().max() > 1e-3


def test_cls_position_changes_outputs_and_hidden_state_layout():
    w = torch.randn(2, 8000)
    with torch.no_grad():
        a = tiny(cls_position="before_pos_conv")(w)
        b = tiny(cls_position="after_pos_conv")(w)
    assert len(a.hidden_states) == 3 and len(a.cls_hidden_states) == 3
    torch.testing.assert_close(a.hidden_states[0], b.hidden_states[0])  # same weights, same conv features
    assert (a.frames - b.frames).abs().max() > 1e-4


def test_attention_probs_equal_eager_attention():
    m = tiny()
    w = torch.randn(2, 12000)
    lengths = torch.tensor([12000, 7000])
    with torch.no_grad():
        out = m(w, lengths, attention_layer=-1)
        # Recompute the last layer's input and run HF's eager attention with output_attentions.
        layer = m.layers[-1]
        m2 = tiny()
        m2.layers = m2.layers[:-1]
        x_in = m2(w, lengths)
        x = torch.cat([x_in.cls[:, None], x_in.frames], 1)
        full_pad = torch.cat([torch.zeros(2, 1, dtype=torch.bool), out.padding_mask], 1)
        mask = full_pad[:, None, None, :].float() * torch.finfo(torch.float32).min
        layer.attention.config._attn_implementation = "eager"
        _, ref, _ = layer.attention(x, attention_mask=mask, output_attentions=True)
    assert out.attentions.shape == (2, 4, 1 + 37, 1 + 37)
    torch.testing.assert_close(out.attentions, ref, atol=1e-6, rtol=1e-5)
    n = int(out.frame_lengths[1])
    assert out.attentions[1, :, :, 1 + n:].abs().max() == 0  # nothing attends to padding


def test_frozen_conv_gets_no_gradient_rest_does():
    m = tiny()
    m.train()
    out = m(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    (out.cls.sum() + out.frames.sum()).backward()
    assert all(p.grad is None and not p.requires_grad for p in m.feature_extractor.parameters())
    assert m.cls_token.grad is not None and m.layers[0].attention.q_proj.weight.grad.abs().sum() > 0
    assert m.feature_projection.projection.weight.grad is not None


def test_pretrained_local_dir_loads_and_reinit_last(tmp_path):
    from transformers import HubertModel

    cfg = SpeechTrunkConfig(**{**TINY, "num_layers": 3}, backbone="hubert")
    torch.manual_seed(1)
    hf = HubertModel(cfg.hf_config())
    hf.save_pretrained(tmp_path)
    m = SpeechTrunk(cfg.replace(pretrained=str(tmp_path), num_layers=2, reinit_last=1))
    assert len(m.layers) == 2
    torch.testing.assert_close(m.layers[0].attention.q_proj.weight, hf.encoder.layers[0].attention.q_proj.weight)
    assert not torch.equal(m.layers[1].attention.q_proj.weight, hf.encoder.layers[1].attention.q_proj.weight)
    torch.testing.assert_close(m.feature_extractor.conv_layers[0].conv.weight, hf.feature_extractor.conv_layers[0].conv.weight)
    with pytest.raises(ValueError, match="hidden_size"):
        SpeechTrunk(cfg.replace(pretrained=str(tmp_path), hidden_size=64, num_heads=4))
    with pytest.raises(OSError, match="cannot load the pretrained"):
        SpeechTrunk(cfg.replace(pretrained=str(tmp_path / "nope")))


def test_too_short_and_bad_lengths_are_clear_errors():
    m = tiny()
    with pytest.raises(ValueError, match="too short"):
        m(torch.randn(1, 300))
    with pytest.raises(ValueError, match="lengths must be"):
        m(torch.randn(2, 8000), torch.tensor([8000, 9000]))
