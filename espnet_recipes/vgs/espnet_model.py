"""ESPnet model wrappers: our VGS models behind ESPnet's ``AbsESPnetModel`` contract.

Each wrapper builds the model from ``--model_conf`` (``preset`` plus deep-merged
overrides of the model's config dataclass; unknown keys are an error), calls
its training forward on an ESPnet batch and returns
``force_gatherable((loss, stats, batch_size))``.

Batch keys (the data names of :class:`espnet_recipes.tasks.vgs.VGSTask`):
``speech`` (B, L) + ``speech_lengths``; ``image_id`` (B, 1) int, the split's
image index, so other captions of the same image leave the loss's softmaxes;
``roi_feats`` (B, R, 2048) + ``roi_boxes`` (B, R, 4) for FaST-VGS; ``image``
(B, 3, S, S) for the MIM family.

Training-time state that ESPnet's trainer does not give a model is set by
:class:`espnet_recipes.vgs.trainer.VGSTrainer`: the epoch (``set_epoch``,
for the MIM weight switch-on) and, after every optimizer step,
``after_optimizer_step`` (the momentum encoder update).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from s3prl_vgs.models import build_model


def _batch_recall_at_1(scores: torch.Tensor, same_image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """In-batch R@1 (audio->image, image->audio) of a (B, B) score matrix, any same-image hit counting."""
    a2i = same_image.gather(1, scores.argmax(1, keepdim=True)).float().mean()
    i2a = same_image.t().gather(1, scores.t().argmax(1, keepdim=True)).float().mean()
    return a2i, i2a


class ESPnetVGSModel(AbsESPnetModel):
    """Base of the wrappers: builds ``self.model`` and keeps the trainer's state.

    Args:
        preset: a preset name of the model's config (``base``, ``tiny``, ...).
        **overrides: fields of the model's config dataclass; nested mappings
            (``speech: {pretrained: ...}``) merge into the preset's.
    """

    model_name: str = ""

    def __init__(self, preset: str = "base", **overrides):
        super().__init__()
        self.model = build_model(self.model_name, preset, **overrides)
        self.epoch: Optional[int] = None  # ESPnet's 1-based epoch, set by VGSTrainer
        self.total_steps: Optional[int] = None  # optimizer steps of the whole run, set by VGSTrainer
        # Optimizer steps taken so far; a buffer, so ESPnet's checkpoint (and --resume) keeps it.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def set_epoch(self, epoch: int) -> None:
        """ESPnet's (1-based) epoch that the next forwards belong to."""
        self.epoch = int(epoch)

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)

    def after_optimizer_step(self) -> None:
        """Called by VGSTrainer after every optimizer step."""
        self.num_updates += 1

    @staticmethod
    def _same_image(image_id: Optional[torch.Tensor], batch_size: int) -> torch.Tensor:
        if image_id is None:
            raise ValueError("the batch has no 'image_id': add --{train,valid}_data_path_and_name_and_type "
                             "DUMP/image_id,image_id,text_int (written by espnet_recipes.bin.vgs_dump), "
                             "without it captions of the same image would count as negatives")
        ids = image_id.view(-1)
        if ids.numel() != batch_size:
            raise ValueError(f"image_id has {ids.numel()} entries for a batch of {batch_size} (one integer per utterance)")
        return ids[:, None] == ids[None, :]  # (B, B)

    @staticmethod
    def _require(**items) -> None:
        missing = [name for name, value in items.items() if value is None]
        if missing:
            raise ValueError(f"the batch has no {missing}: add them with --train_data_path_and_name_and_type "
                             f"(see espnet_recipes/TEMPLATE/vgs1/vgs.sh, stage 4)")

    def collect_feats(self, speech: torch.Tensor, speech_lengths: torch.Tensor, **kwargs) -> Dict[str, torch.Tensor]:
        """The waveforms themselves (the models normalise them inside; no feature stats are needed)."""
        return {"speech": speech, "speech_lengths": speech_lengths}


class ESPnetFaSTVGSModel(ESPnetVGSModel):
    """FaST-VGS: coarse + fine masked margin softmax losses over the batch."""

    model_name = "fast_vgs"

    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        roi_feats: Optional[torch.Tensor] = None,
        roi_boxes: Optional[torch.Tensor] = None,
        image_id: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Args: see the module docstring; ``kwargs`` takes ESPnet's ``utt_id``."""
        self._require(roi_feats=roi_feats, roi_boxes=roi_boxes)
        batch_size = speech.size(0)
        same_image = self._same_image(image_id, batch_size)
        out = self.model(speech, speech_lengths, roi_feats, roi_boxes, same_image=same_image)
        a2i, i2a = _batch_recall_at_1(out.coarse_scores.detach(), same_image)
        stats = dict(loss=out.loss.detach(), coarse_loss=out.coarse_loss.detach(), fine_loss=out.fine_loss.detach(),
                     batch_r1_a2i=a2i, batch_r1_i2a=i2a)
        if out.fine_scores is not None:
            stats["fine_batch_r1_a2i"], stats["fine_batch_r1_i2a"] = _batch_recall_at_1(out.fine_scores.detach(), same_image)
        loss, stats, weight = force_gatherable((out.loss, stats, batch_size), out.loss.device)
        return loss, stats, weight


class ESPnetVGMIMModel(ESPnetVGSModel):
    """Speech-guided MIM (and VG-HuBERT): InfoNCE / margin loss + lambda(epoch) * MIM loss.

    The momentum image encoder follows the paper's cosine schedule
    ``momentum_at(num_updates, total_steps)``, updated after every optimizer step.
    """

    model_name = "vg_mim"

    def after_optimizer_step(self) -> None:
        if self.model.momentum_image_encoder is not None:
            if self.total_steps is None:
                raise RuntimeError("the momentum schedule needs total_steps (set by VGSTrainer before training)")
            self.model.update_momentum_encoder(self.model.momentum_at(int(self.num_updates), self.total_steps))
        super().after_optimizer_step()

    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        image: Optional[torch.Tensor] = None,
        image_id: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Args: see the module docstring; ``kwargs`` takes ESPnet's ``utt_id``."""
        self._require(image=image)
        batch_size = speech.size(0)
        same_image = self._same_image(image_id, batch_size)
        epoch = None if self.epoch is None else self.epoch - 1  # the model counts epochs from 0
        out = self.model(speech, speech_lengths, image, same_image=same_image, epoch=epoch)
        a2i, i2a = _batch_recall_at_1(out.scores.detach(), same_image)
        stats = dict(loss=out.loss.detach(), nce_loss=out.nce_loss.detach(), batch_r1_a2i=a2i, batch_r1_i2a=i2a)
        if out.mim_loss is not None:  # only while lambda > 0 (the same on every rank)
            stats["mim_loss"] = out.mim_loss.detach()
        loss, stats, weight = force_gatherable((out.loss, stats, batch_size), out.loss.device)
        return loss, stats, weight


__all__ = ["ESPnetVGSModel", "ESPnetFaSTVGSModel", "ESPnetVGMIMModel"]
