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


# ----------------------------------------------------------------------------- fast paths (issue 14)


def _masked_group_norm_reference(x, norm, lengths):
    """The earlier masked GroupNorm (several full-size temporaries), kept as the reference."""
    valid = (torch.arange(x.size(-1))[None, :] < lengths[:, None]).to(x.dtype)[:, None, :]
    n = valid.sum(-1, keepdim=True).clamp(min=1)
    mean = (x * valid).sum(-1, keepdim=True) / n
    var = ((x - mean) ** 2 * valid).sum(-1, keepdim=True) / n
    x = (x - mean) / torch.sqrt(var + norm.eps)
    return x * norm.weight[None, :, None] + norm.bias[None, :, None]


def test_fused_group_norm_equals_masked_reference_and_group_norm_alone():
    from s3prl_vgs.modules.speech_trunk import masked_group_norm

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(16, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 16, 400) * 3 + 0.7
    lengths = torch.tensor([400, 251, 37])
    with torch.no_grad():
        fused = masked_group_norm(x, norm, lengths)
        torch.testing.assert_close(fused, _masked_group_norm_reference(x, norm, lengths), atol=1e-6, rtol=0)
        for i, n in enumerate(lengths.tolist()):  # each row computes what nn.GroupNorm computes on it alone
            torch.testing.assert_close(fused[i, :, :n], norm(x[i:i + 1, :, :n])[0], atol=1e-6, rtol=0)
        full = torch.full((3,), 400)
        torch.testing.assert_close(masked_group_norm(x, norm, full), norm(x), atol=1e-6, rtol=0)
    # it is differentiable like the reference
    xg = x.clone().requires_grad_(True)
    (masked_group_norm(xg, norm, lengths) ** 2).sum().backward()
    xr = x.clone().requires_grad_(True)
    (_masked_group_norm_reference(xr, norm, lengths) ** 2).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("train", [False, True])
def test_packed_sdpa_layer_equals_the_hf_layer(train):
    m = tiny()
    torch.manual_seed(3)
    B, S, D = 3, 20, 32
    x = torch.randn(B, S, D)
    pad = torch.arange(S)[None] >= torch.tensor([20, 13, 5])[:, None]
    mask = pad[:, None, None, :].float() * torch.finfo(torch.float32).min
    idx = (~pad).view(-1).nonzero().squeeze(1)
    layer = m.layers[0]
    layer.attention.config._attn_implementation = "eager"  # the explicit softmax(QK^T) V reference
    if train:  # same maths with dropout off but autograd on
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        layer.attention.dropout = 0.0
    ref = layer(x, attention_mask=mask)[0]
    packed = m._layer(layer, x.reshape(B * S, D).index_select(0, idx), B, S, idx, mask)
    torch.testing.assert_close(packed, ref.reshape(B * S, D)[idx], atol=1e-5, rtol=1e-5)
    full = m._layer(layer, x.reshape(B * S, D), B, S, None, mask).view(B, S, D)
    torch.testing.assert_close(full[~pad], ref[~pad], atol=1e-5, rtol=1e-5)


def test_folded_pos_conv_equals_weight_norm_and_follows_parameter_changes():
    m = tiny()
    x = torch.randn(2, 30, 32)
    with torch.no_grad():
        torch.testing.assert_close(m._pos_conv(x), m.pos_conv_embed(x), atol=1e-6, rtol=1e-6)
        g = m.pos_conv_embed.conv.parametrizations.weight.original0
        g.mul_(2.0)  # an optimizer step / load_state_dict changes the weight in place
        torch.testing.assert_close(m._pos_conv(x), m.pos_conv_embed(x), atol=1e-6, rtol=1e-6)
    assert m._folded_pos_weight is not None


def test_batch_whose_every_clip_is_padded_keeps_shapes_and_solo_values():
    m = tiny()
    w = torch.randn(2, 16000)
    lengths = torch.tensor([9000, 6000])  # samples past 9000 are cut, features padded back
    with torch.no_grad():
        out = m(w, lengths)
        assert out.frames.shape == (2, 49, 32) and out.hidden_states[0].shape == (2, 49, 32)
        for i in range(2):
            solo = m(w[i:i + 1, : lengths[i]])
            n = int(out.frame_lengths[i])
            torch.testing.assert_close(out.frames[i, :n], solo.frames[0], atol=2e-5, rtol=1e-4)
            assert out.frames[i, n:].abs().max() == 0  # padded frames are not computed
