"""BERT/LXMERT attention: the fused SDPA path equals the explicit softmax(QK^T)V path."""

import pytest
import torch

from s3prl_vgs.modules.transformer import BertAttention, BertLayer, additive_mask


@pytest.mark.parametrize("cross", [False, True])
def test_sdpa_attention_equals_explicit_attention_with_masks(cross):
    torch.manual_seed(0)
    att = BertAttention(32, 4, attention_dropout=0.0).eval()
    h = torch.randn(3, 7, 32)
    ctx = torch.randn(3, 11, 32) if cross else h
    pad = torch.arange(ctx.size(1))[None] >= torch.tensor([ctx.size(1), 4, 2])[:, None]
    mask = additive_mask(pad)
    fused = att(h, ctx, mask)
    explicit, probs = att(h, ctx, mask, need_weights=True)
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=1e-5)
    assert probs[1, :, :, 4:].max() < 1e-4 and probs[2, :, :, 2:].max() < 1e-4  # -10000 masks the pads
    # gradients agree too (training maths, dropout off)
    att.train()
    hs = h.clone().requires_grad_(True)
    he = h.clone().requires_grad_(True)
    (att(hs, ctx if cross else hs, mask) ** 2).sum().backward()
    (att(he, ctx if cross else he, mask, need_weights=True)[0] ** 2).sum().backward()
    torch.testing.assert_close(hs.grad, he.grad, atol=1e-5, rtol=1e-4)


def test_bert_layer_on_padded_batch_matches_each_row_alone():
    torch.manual_seed(1)
    layer = BertLayer(32, 4, 64, dropout=0.0, attention_dropout=0.0).eval()
    x = torch.randn(2, 9, 32)
    pad = torch.arange(9)[None] >= torch.tensor([9, 5])[:, None]
    with torch.no_grad():
        out = layer(x, additive_mask(pad))
        solo = layer(x[1:, :5], None)
    # -10000 is not -inf: masked keys keep a ~e-10000 weight, far below fp32 resolution
    torch.testing.assert_close(out[1, :5], solo[0], atol=1e-5, rtol=1e-5)


def test_folded_first_query_keeps_fp32_softmax_under_bf16_autocast():
    torch.manual_seed(2)
    att = BertAttention(32, 4, attention_dropout=0.0).eval()
    x = torch.randn(4, 10, 32)
    with torch.no_grad():
        ref = att(x)[:, 0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = att.forward_first_query(x)
    assert (low.float() - ref).abs().max() < 0.05  # bf16 GEMMs; the softmax itself is fp32
