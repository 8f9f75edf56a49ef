"""ESPnet model wrapper: any registered VGS model behind ESPnet's ``AbsESPnetModel`` contract.

The wrapper builds the model from ``--model_conf`` (``preset`` plus deep-merged
overrides of the model's config dataclass; unknown keys are an error), calls
its training forward on an ESPnet batch and returns
``force_gatherable((loss, stats, batch_size))``. It reads the model only
through the contract of :mod:`s3prl_vgs.models.base`: ``input_spec`` says
which batch keys feed the image side, the forward returns ``loss``, the named
``losses`` and the in-batch ``batch_scores``, and the model's
``training_schedule()`` holds what changes over training.

Batch keys (the data names of :class:`espnet_recipes.tasks.vgs.VGSTask`):
``speech`` (B, L) + ``speech_lengths``; ``image_id`` (B, 1) int, the split's
image index, so other captions of the same image leave the loss's softmaxes;
the image side by ``input_spec.image_input`` (:data:`IMAGE_BATCH_KEYS`):
``roi_feats`` (B, R, 2048) + ``roi_boxes`` (B, R, 4), or ``image`` (B, 3, S, S).

Stats: ``loss``, ``<name>_loss`` per entry of ``losses`` (``coarse_loss``,
``fine_loss``; ``nce_loss``, ``mim_loss``), and in-batch R@1 per score matrix
(``batch_r1_a2i``/``batch_r1_i2a`` for the coarse one, ``fine_batch_r1_*``...).

Training-time state lives in ``self.schedule`` (the model's
:class:`~s3prl_vgs.models.base.TrainingSchedule`), driven by
:class:`espnet_recipes.vgs.trainer.VGSTrainer` through :meth:`set_epoch`,
:meth:`set_total_steps` and :meth:`after_optimizer_step`; its step count is
the buffer ``schedule.num_updates``, so ESPnet's checkpoint (and ``--resume``)
keeps it.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from s3prl_vgs.losses import global_same_image_mask
from s3prl_vgs.models import build_model

# encode_image argument -> ESPnet data name, per input_spec.image_input.
IMAGE_BATCH_KEYS: Dict[str, Dict[str, str]] = {
    "roi": {"feats": "roi_feats", "boxes": "roi_boxes"},
    "pixels": {"images": "image"},
}


def _batch_recall_at_1(scores: torch.Tensor, same_image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """In-batch R@1 (audio->image, image->audio) of a (B, B) score matrix, any same-image hit counting."""
    a2i = same_image.gather(1, scores.argmax(1, keepdim=True)).float().mean()
    i2a = same_image.t().gather(1, scores.t().argmax(1, keepdim=True)).float().mean()
    return a2i, i2a


def _rename_legacy_keys(state_dict, prefix, *args) -> None:
    """Checkpoints from before the schedule object kept the step count as ``num_updates``."""
    old, new = prefix + "num_updates", prefix + "schedule.num_updates"
    if old in state_dict and new not in state_dict:
        state_dict[new] = state_dict.pop(old)


class ESPnetVGSModel(AbsESPnetModel):
    """The wrapper of every family; subclasses only name the registry entry.

    Args:
        preset: a preset name of the model's config (``base``, ``tiny``, ...).
        **overrides: fields of the model's config dataclass; nested mappings
            (``speech: {pretrained: ...}``) merge into the preset's.
    """

    model_name: str = ""

    def __init__(self, preset: str = "base", **overrides):
        super().__init__()
        self.model = build_model(self.model_name, preset, **overrides)
        self.schedule = self.model.training_schedule()
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)

    # -- trainer hooks (VGSTrainer)

    def set_epoch(self, epoch: int) -> None:
        """ESPnet's (1-based) epoch that the next forwards belong to."""
        self.schedule.set_epoch(int(epoch) - 1)

    @property
    def epoch(self) -> Optional[int]:
        """ESPnet's 1-based epoch, None before the trainer set one."""
        return None if self.schedule.epoch is None else self.schedule.epoch + 1

    def set_total_steps(self, total_steps: int) -> None:
        """Optimizer steps of the whole run."""
        self.schedule.set_total_steps(total_steps)

    @property
    def total_steps(self) -> Optional[int]:
        return self.schedule.total_steps

    @total_steps.setter
    def total_steps(self, value: Optional[int]) -> None:
        self.schedule.total_steps = value

    @property
    def num_updates(self) -> torch.Tensor:
        """Optimizer steps taken so far (the schedule's buffer)."""
        return self.schedule.num_updates

    def after_optimizer_step(self) -> None:
        """Called by VGSTrainer after every optimizer step that really stepped."""
        self.schedule.after_optimizer_step(self.model)

    # -- batch

    @staticmethod
    def _same_image(image_id: Optional[torch.Tensor], batch_size: int) -> torch.Tensor:
        if image_id is None:
            raise ValueError("the batch has no 'image_id': add --{train,valid}_data_path_and_name_and_type "
                             "DUMP/image_id,image_id,text_int (written by espnet_recipes.bin.vgs_dump), "
                             "without it captions of the same image would count as negatives")
        ids = image_id.view(-1)
        if ids.numel() != batch_size:
            raise ValueError(f"image_id has {ids.numel()} entries for a batch of {batch_size} (one integer per utterance)")
        # Under DDP: (B_global, B_global) from every rank's ids, matching the models' global batch_scores.
        return global_same_image_mask(batch_size, image_ids=ids, device=ids.device)

    def image_inputs(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``encode_image`` keyword arguments from an ESPnet batch; names the missing data names."""
        keys = IMAGE_BATCH_KEYS[self.model.input_spec.image_input]
        missing = [name for name in keys.values() if batch.get(name) is None]
        if missing:
            raise ValueError(f"the batch has no {missing}: add them with --train_data_path_and_name_and_type "
                             f"(see espnet_recipes/TEMPLATE/vgs1/vgs.sh, stage 4)")
        return {arg: batch[name] for arg, name in keys.items()}

    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        image_id: Optional[torch.Tensor] = None,
        **batch,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Args: see the module docstring; ``batch`` holds the image side and ESPnet's ``utt_id``."""
        inputs = self.image_inputs(batch)
        batch_size = speech.size(0)
        same_image = self._same_image(image_id, batch_size)
        # image_ids, not a mask: under DDP the model marks same-image pairs across ranks (s3prl_vgs.distributed).
        out = self.model(speech, speech_lengths, **inputs, image_ids=image_id.view(-1), **self.schedule.forward_kwargs())
        stats = {"loss": out.loss.detach()}
        # A term that did not run (MIM before its epoch) is absent, the same on every rank.
        stats.update({f"{name}_loss": value.detach() for name, value in out.losses.items()})
        for name, scores in out.batch_scores.items():
            prefix = "" if name == "coarse" else f"{name}_"
            stats[f"{prefix}batch_r1_a2i"], stats[f"{prefix}batch_r1_i2a"] = _batch_recall_at_1(scores.detach(), same_image)
        loss, stats, weight = force_gatherable((out.loss, stats, batch_size), out.loss.device)
        return loss, stats, weight

    def collect_feats(self, speech: torch.Tensor, speech_lengths: torch.Tensor, **kwargs) -> Dict[str, torch.Tensor]:
        """The waveforms themselves (the models normalise them inside; no feature stats are needed)."""
        return {"speech": speech, "speech_lengths": speech_lengths}


def wrapper_class(name: str) -> type:
    """The ESPnet wrapper of registry entry ``name`` (``--model name``)."""
    return _WRAPPERS.get(name) or type(f"ESPnetVGSModel_{name}", (ESPnetVGSModel,), {"model_name": name})


# Registrations: the classes keep their names for configs and imports.
class ESPnetFaSTVGSModel(ESPnetVGSModel):
    """FaST-VGS: coarse + fine masked margin softmax losses over the batch."""

    model_name = "fast_vgs"


class ESPnetVGMIMModel(ESPnetVGSModel):
    """Speech-guided MIM (and VG-HuBERT): InfoNCE / margin loss + lambda(epoch) * MIM loss; EMA after each step."""

    model_name = "vg_mim"


_WRAPPERS = {cls.model_name: cls for cls in (ESPnetFaSTVGSModel, ESPnetVGMIMModel)}

__all__ = ["ESPnetVGSModel", "ESPnetFaSTVGSModel", "ESPnetVGMIMModel", "IMAGE_BATCH_KEYS", "wrapper_class"]
