"""BertAdam's warmup-linear LR schedule as an ESPnet scheduler choice (``--scheduler warmuplinear``).

ESPnet keeps its scheduler choices in the module-level dict
``espnet2.tasks.abs_task.scheduler_classes`` and reads it when the parser is
built and when the scheduler is made, so adding an entry (see :func:`register`)
is enough. ESPnet steps every :class:`AbsBatchStepScheduler` after each
optimizer step, which is what the schedule expects.

``total_steps: null`` (the default) lets :class:`espnet_recipes.vgs.trainer.VGSTrainer`
fill in ``optimizer steps per epoch x max_epoch`` from the training iterator,
so a config says "10 % warmup" without knowing the corpus size (the official
``t_total = floor(N_train / batch) * n_epochs``).
"""

from __future__ import annotations

from typing import Optional

from espnet2.schedulers.abs_scheduler import AbsBatchStepScheduler
from torch.optim import Optimizer

from s3prl_vgs.optim import WarmupLinearLR as _WarmupLinearLR


class WarmupLinearLR(_WarmupLinearLR, AbsBatchStepScheduler):
    """Linear warmup over ``warmup_fraction`` of the steps, then linear decay to 0.

    Args:
        optimizer: its ``lr`` is the peak LR.
        total_steps: optimizer steps of the whole training; None = set by the trainer.
        warmup_fraction: official 0.1.
    """

    def __init__(self, optimizer: Optimizer, total_steps: Optional[int] = None, warmup_fraction: float = 0.1,
                 last_epoch: int = -1):
        super().__init__(optimizer, total_steps or 1, warmup_fraction, last_epoch)
        self.auto_total = total_steps is None
        if self.auto_total:
            self.total_steps = None  # step 0 (LR 0) needs no total; later steps do

    def set_total_steps(self, total_steps: int) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)

    def state_dict(self):
        state = super().state_dict()
        if self.auto_total:
            # Derived from the data and max_epoch of the current run: a resumed run with a
            # larger max_epoch stretches the schedule instead of keeping the old end.
            state.pop("total_steps", None)
        return state

    def _factor(self, step: int) -> float:
        if self.total_steps is None:
            if step == 0:
                return 0.0
            raise RuntimeError("warmuplinear: total_steps is not known; set scheduler_conf.total_steps "
                               "or train through VGSTask, whose trainer fills it in")
        return super()._factor(step)


def register() -> None:
    """Make ``--scheduler warmuplinear`` an ESPnet choice (idempotent)."""
    from espnet2.tasks import abs_task

    current = abs_task.scheduler_classes.get("warmuplinear")
    if current is not None and current is not WarmupLinearLR:
        raise RuntimeError(f"ESPnet already has a scheduler 'warmuplinear' ({current})")
    abs_task.scheduler_classes["warmuplinear"] = WarmupLinearLR


__all__ = ["WarmupLinearLR", "register"]
