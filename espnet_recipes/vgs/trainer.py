"""ESPnet's Trainer plus what VGS training needs from it, and nothing else.

These hooks drive the model's training schedule (``model.schedule``, from
``training_schedule()`` of the model contract; for the MIM family the
MIM-weight switch-on, the momentum schedule and the EMA update):

- Before training: the number of optimizer steps of the whole run
  (``len(train iterator) // accum_grad * max_epoch``) goes to a
  ``warmuplinear`` scheduler without ``total_steps`` and to the model's
  schedule (``set_total_steps``).
- Each epoch: the schedule learns the epoch (``set_epoch``).
- After every optimizer step: ``model.after_optimizer_step()`` (the
  schedule's after-step work), through a torch optimizer step post-hook. The hook fires
  only when the optimizer really stepped: not on the steps that ESPnet skips
  for a non-finite gradient norm, nor the ones AMP's GradScaler skips.
- Each validation: whole-split retrieval recall as the validation statistics
  ``retrieval_r1`` (mean R@1 of both directions), ``r{1,5,10}_{a2i,i2a}``
  (:mod:`espnet_recipes.vgs.validation`), so ``best_model_criterion`` selects by retrieval;
  with ``--valid_utt2subset`` each subset against its own gallery (``<subset>_r1`` ...) and
  ``retrieval_r1`` their mean (Places: dev_seen and dev_unseen). The map is read and checked
  against the validation split (``--valid_shape_file``) before training starts.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Dict, Optional

import torch
from espnet2.train.trainer import Trainer, TrainerOptions

from . import checkpoints
from .scheduler import WarmupLinearLR
from .validation import RetrievalTap, read_utt2subset


# Weights-only loading and atomic saving of ESPnet's checkpoints (see espnet_recipes.vgs.checkpoints).
checkpoints.install()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel / DataParallel."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def steps_per_epoch(train_iter_factory, accum_grad: int) -> Optional[int]:
    """Optimizer steps in one epoch, or None when the iterator has no length."""
    try:
        n_batches = len(train_iter_factory.build_iter(1))
    except TypeError:
        return None
    return n_batches // accum_grad


def shape_file_keys(path) -> list:
    """The utterance ids of an ESPnet shape file (or any ``key value`` file), in file order."""
    with open(path, encoding="utf-8") as f:
        return [line.split(None, 1)[0] for line in f if line.strip()]


@dataclasses.dataclass
class VGSTrainerOptions(TrainerOptions):
    """ESPnet's trainer options plus the validation subset map (``--valid_utt2subset``)."""

    valid_utt2subset: Optional[str] = None
    valid_subsets: Optional[Dict[str, str]] = None  # {utt_id: subset} read from it


class VGSTrainer(Trainer):
    """``espnet2.train.trainer.Trainer`` with the epoch and optimizer-step hooks above."""

    @classmethod
    def build_options(cls, args) -> VGSTrainerOptions:
        base = super().build_options(args)
        options = VGSTrainerOptions(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
        path = getattr(args, "valid_utt2subset", None)
        if path:
            shapes = getattr(args, "valid_shape_file", None) or []
            utts = shape_file_keys(shapes[0]) if shapes else None  # what ESPnet's valid sampler iterates
            options.valid_utt2subset = str(path)
            options.valid_subsets = read_utt2subset(path, utts)
            names = sorted(set(options.valid_subsets.values()))
            logging.info(f"validation by subset ({path}): {', '.join(names)}, each with its own gallery")
        return options

    @classmethod
    def run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
            plot_attention_iter_factory, trainer_options, distributed_option) -> None:
        per_epoch = steps_per_epoch(train_iter_factory, trainer_options.accum_grad)
        total = None if per_epoch is None else max(per_epoch * trainer_options.max_epoch, 1)
        for scheduler in schedulers:
            if isinstance(scheduler, WarmupLinearLR) and scheduler.total_steps is None:
                if total is None:
                    raise RuntimeError("warmuplinear: the training iterator has no length; "
                                       "set scheduler_conf.total_steps")
                scheduler.set_total_steps(total)
                logging.info(f"warmuplinear: total_steps = {total} ({per_epoch} per epoch x "
                             f"{trainer_options.max_epoch} epochs), warmup {scheduler.warmup_fraction:.0%}")
        if total is not None and hasattr(model, "set_total_steps"):
            model.set_total_steps(total)

        cls._best_model_criterion = list(trainer_options.best_model_criterion)  # for resume's repairs
        hooks = []
        if hasattr(model, "after_optimizer_step"):
            hooks = [opt.register_step_post_hook(lambda *_: model.after_optimizer_step()) for opt in optimizers[:1]]
        try:
            super().run(model=model, optimizers=optimizers, schedulers=schedulers,
                        train_iter_factory=train_iter_factory, valid_iter_factory=valid_iter_factory,
                        plot_attention_iter_factory=plot_attention_iter_factory,
                        trainer_options=trainer_options, distributed_option=distributed_option)
        finally:
            for hook in hooks:
                hook.remove()

    @classmethod
    def resume(cls, checkpoint, model, reporter, optimizers, schedulers, scaler, ngpu: int = 0, strict: bool = True):
        """ESPnet's resume (its load is weights-only here), then the epoch files a kill mid-save left undone."""
        super().resume(checkpoint=checkpoint, model=model, reporter=reporter, optimizers=optimizers,
                       schedulers=schedulers, scaler=scaler, ngpu=ngpu, strict=strict)
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:  # rank 0 writes, as ESPnet
            checkpoints.repair_after_resume(Path(checkpoint).parent, {"reporter": reporter.state_dict(),
                                                                      "model": model.state_dict()},
                                            getattr(cls, "_best_model_criterion", ()), reporter)

    @classmethod
    def train_one_epoch(cls, model, iterator, optimizers, schedulers, scaler, reporter, summary_writer,
                        options, distributed_option) -> bool:
        inner = unwrap(model)
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(reporter.get_epoch())
        return super().train_one_epoch(model=model, iterator=iterator, optimizers=optimizers, schedulers=schedulers,
                                       scaler=scaler, reporter=reporter, summary_writer=summary_writer,
                                       options=options, distributed_option=distributed_option)

    @classmethod
    def validate_one_epoch(cls, model, iterator, reporter, options, distributed_option) -> None:
        inner = unwrap(model)
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(reporter.get_epoch())
        # Whole-split retrieval recall (valid/retrieval_r1 etc.), for best_model_criterion.
        # With --valid_utt2subset: per subset, each with its own gallery, and retrieval_r1 their mean.
        tap = None
        if hasattr(getattr(inner, "model", None), "encode_audio"):
            tap = RetrievalTap(inner.model, getattr(options, "valid_subsets", None),
                               getattr(options, "valid_utt2subset", None) or "utt2subset")
        super().validate_one_epoch(model=model, iterator=iterator if tap is None else tap.tap(iterator),
                                   reporter=reporter, options=options, distributed_option=distributed_option)
        stats = {} if tap is None or options.no_forward_run else tap.stats()
        if stats:
            reporter.register(stats)
            reporter.next()


__all__ = ["VGSTrainer", "VGSTrainerOptions", "steps_per_epoch", "unwrap"]
