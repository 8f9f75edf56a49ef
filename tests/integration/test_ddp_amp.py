"""Mixed precision: both models' training forward/backward under CPU autocast (bf16), losses in fp32."""

from __future__ import annotations

import pytest
import torch

from s3prl_vgs.losses import info_nce_loss, masked_margin_softmax_loss, mim_regression_loss
from s3prl_vgs.models import build_model
from tests.integration.test_ddp import _batch


def _run(name: str, amp: bool):
    torch.manual_seed(0)
    model = build_model(name, "tiny").eval()
    batch = _batch(name, model, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("name", ["fast_vgs", "vg_mim"])
def test_autocast_bf16_forward_backward(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref, ref_grads = _run(name, amp=False)
        out, grads = _run(name, amp=True)
    finally:
        torch.set_num_threads(threads)
    # the encoders really ran in bf16 ...
    assert out.audio.coarse.dtype == torch.bfloat16 and out.image.coarse.dtype == torch.bfloat16
    # ... and every loss is fp32, finite, and near the fp32 run's (bf16 keeps ~3 significant digits)
    for key, value in {"loss": out.loss, **out.losses}.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), key
        ref_value = ref.loss if key == "loss" else ref.losses[key]
        value, ref_value = float(value.detach()), float(ref_value.detach())
        assert abs(value - ref_value) < 0.05 * abs(ref_value) + 0.02, (key, value, ref_value)
    assert grads.keys() == ref_grads.keys()
    assert all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads.values())
    # gradients point the same way as in fp32
    flat = torch.cat([g.flatten() for g in grads.values()])
    ref_flat = torch.cat([ref_grads[n].flatten() for n in grads])
    assert torch.nn.functional.cosine_similarity(flat, ref_flat, dim=0) > 0.95


def test_losses_compute_in_fp32_under_autocast():
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(6, 6, generator=g) * 4).to(torch.bfloat16)
    same = torch.eye(6, dtype=torch.bool)
    same[0, 3] = same[3, 0] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for fn in (masked_margin_softmax_loss, info_nce_loss):
            loss = fn(scores, same)
            assert loss.dtype == torch.float32
            torch.testing.assert_close(loss, fn(scores.float(), same), rtol=0, atol=0)  # the same as fp32 on the same inputs
        pred, target = torch.randn(2, 4, 8, generator=g).bfloat16(), torch.randn(2, 4, 8, generator=g).bfloat16()
        mask = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]])
        assert mim_regression_loss(pred, target, mask).dtype == torch.float32


@pytest.mark.parametrize("groups", [16, 4])
def test_speech_trunk_under_cpu_autocast_stays_near_fp32(groups):
    # torch's CPU bf16 grouped conv1d is wrong at 4 channels per group (64 / 16): the
    # positional conv must not run through it, or every layer after it is off by ~16%.
    torch.manual_seed(0)
    model = build_model("fast_vgs", "tiny", speech={"num_conv_pos_embedding_groups": groups}).eval()
    wavs, lengths = torch.randn(3, 9000), torch.tensor([9000, 7000, 5000])
    with torch.no_grad():
        ref = model.trunk(wavs, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.trunk(wavs, lengths)
    valid = ~ref.padding_mask
    for a, b in zip(out.hidden_states, ref.hidden_states):
        a, b = a.float()[valid], b[valid]
        assert float((a - b).norm() / b.norm()) < 0.03
