"""WarmupLinearLR reproduces BertAdam's warmup_linear factors step by step."""

import pytest
import torch

from s3prl_vgs.optim import WarmupLinearLR, warmup_linear, warmup_linear_schedule


def test_factor_by_hand():
    # warmup 0.1: ramp to 1 at progress 0.1, then linear to 0 at progress 1
    assert warmup_linear(0.0) == 0.0
    assert warmup_linear(0.05) == pytest.approx(0.5)
    assert warmup_linear(0.1) == pytest.approx(1.0)
    assert warmup_linear(0.55) == pytest.approx(0.5)
    assert warmup_linear(1.0) == 0.0
    assert warmup_linear(1.3) == 0.0


def test_lr_seen_by_each_optimizer_step():
    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = warmup_linear_schedule(opt, total_steps=100, warmup_fraction=0.1)
    seen = []
    for _ in range(110):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # step n uses 2.0 * warmup_linear(n / 100): 0 at the first update (BertAdam counts from 0)
    assert seen[0] == 0.0
    assert seen[5] == pytest.approx(1.0)
    assert seen[10] == pytest.approx(2.0)
    assert seen[55] == pytest.approx(1.0)
    assert seen[99] == pytest.approx(2.0 * 1 / 90)
    assert seen[100] == 0.0 and seen[109] == 0.0
    assert max(seen) == pytest.approx(2.0)


def test_first_update_does_not_move_weights():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=1.0)
    WarmupLinearLR(opt, total_steps=10)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3))


def test_state_dict_resume():
    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = WarmupLinearLR(opt, total_steps=50)
    for _ in range(20):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=1.0)
    sched2 = WarmupLinearLR(opt2, total_steps=50)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_bad_arguments():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        WarmupLinearLR(opt, total_steps=0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        WarmupLinearLR(opt, total_steps=10, warmup_fraction=1.0)
