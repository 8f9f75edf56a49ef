"""Learning-rate schedules of the official recipes, as ``torch.optim.lr_scheduler.LambdaLR``.

FaST-VGS trains with LXMERT's ``BertAdam`` and its ``warmup_linear`` schedule
(``steps/bert_adam.py``, ``--warmup_fraction 0.1``). The schedule is kept
here on top of any torch optimizer; BertAdam itself (Adam without bias
correction, decoupled weight decay 0.01 on every parameter) is not.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_linear(progress: float, warmup: float = 0.1) -> float:
    """LR factor at ``progress = step / total_steps``: linear 0 -> 1 over ``warmup``, then linear 1 -> 0 at 1.

    Beyond ``progress = 1`` the factor stays 0.
    """
    if progress < warmup:
        return progress / warmup
    return max((progress - 1.0) / (warmup - 1.0), 0.0)


class WarmupLinearLR(LambdaLR):
    """BertAdam's ``warmup_linear`` schedule for any optimizer; call ``step()`` once per optimizer step.

    NOTE(original): BertAdam evaluates the schedule at ``step / t_total`` with the
    step counted *before* the update, so the very first update has LR 0; a
    ``LambdaLR`` stepped after each ``optimizer.step()`` does the same.

    Args:
        optimizer: any torch optimizer; its ``lr`` is the peak LR.
        total_steps: ``t_total`` (official: ``floor(N_train / batch) * n_epochs``).
        warmup_fraction: fraction of ``total_steps`` spent warming up (official 0.1).

    Example:
        >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        >>> sched = WarmupLinearLR(opt, total_steps=10_000)
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.1, last_epoch: int = -1):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 < warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in (0, 1), got {warmup_fraction}")
        self.total_steps = int(total_steps)
        self.warmup_fraction = float(warmup_fraction)
        super().__init__(optimizer, self._factor, last_epoch=last_epoch)

    def _factor(self, step: int) -> float:
        return warmup_linear(step / self.total_steps, self.warmup_fraction)


def warmup_linear_schedule(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.1,
                           last_epoch: int = -1) -> WarmupLinearLR:
    """Factory for :class:`WarmupLinearLR` (the official FaST-VGS schedule)."""
    return WarmupLinearLR(optimizer, total_steps, warmup_fraction, last_epoch)


__all__ = ["warmup_linear", "WarmupLinearLR", "warmup_linear_schedule"]
