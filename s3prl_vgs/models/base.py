"""The one contract every model family implements.

Evaluation (``vgs-evaluate``), the ESPnet wrapper, the S3PRL expert and search
talk to a model only through what is defined here, so a new family
(SpeechCLIP, FaST-VGS+) is one model file plus a registry line:

* ``model.input_spec`` (:class:`InputSpec`): what the image side reads
  (``"roi"`` rows + boxes, or ``"pixels"``), the feature widths, the minimum
  audio length, the downsample rate of every hidden-state stream, and
  whether the model has a fine (cross-encoder) scorer. It is computed from
  the config alone (``config.input_spec``), so a data pipeline can ask
  before a model is built.
* ``model.encode_audio(wavs, lengths) -> AudioOutput``;
  ``model.encode_image(**image_inputs) -> ImageOutput``, where the keyword
  arguments are ``input_spec.image_args`` (``feats, boxes`` or ``images``).
* ``model.coarse_scores(a, v)``: (N_audio, N_image), audios as rows.
* optional ``model.fine_scores(a, v, pairs=None)`` when
  ``input_spec.has_fine_scores``: (P,) scores of index pairs, or the full
  (N_audio, N_image) matrix.
* ``model(wavs, lengths, **image_inputs, image_ids=... | same_image=..., **schedule kwargs)``
  -> :class:`TrainOutput` with ``loss`` (what the optimizer minimises),
  ``losses`` (the named unweighted terms) and ``batch_scores`` (the in-batch
  (B, B) matrices, for in-batch recall; (B_global, B_global) under DDP, where
  ``image_ids`` mark same-image pairs across ranks). ``forward`` has no side effects.
* ``model.training_schedule()`` -> :class:`TrainingSchedule`, the object a
  trainer drives (epoch, total steps, after-step updates such as an EMA).
* ``model.speech_trunk``: the family's :class:`~s3prl_vgs.modules.speech_trunk.SpeechTrunk`
  (``trunk`` in FaST-VGS, ``audio_encoder`` in the MIM family; both names stay).

Masks have one meaning: ``*padding_mask`` is bool and True at pad positions.
``padding_mask`` belongs to ``hidden_states`` (the speech trunk's frames,
``downsample_rate`` samples each), ``tokens_padding_mask`` to ``tokens``
(what the fine scorer reads; it may start with a CLS, which is never pad).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..data.audio import SAMPLE_RATE

IMAGE_INPUTS = ("roi", "pixels")
# encode_image keyword arguments per image input kind.
IMAGE_ARGS: Dict[str, Tuple[str, ...]] = {"roi": ("feats", "boxes"), "pixels": ("images",)}


@dataclass(frozen=True)
class InputSpec:
    """What a model reads; derived from its config.

    Attributes:
        image_input: ``"roi"`` (RoI feature rows + x1y1x2y2 boxes from a
            feature store) or ``"pixels"`` (image files through
            ``config.image_transform``).
        min_audio_samples: shortest waveform that gives one frame.
        downsample_rates: samples per frame of every hidden-state stream that
            :meth:`AudioOutput.hidden_state_sets` returns (``hidden_states``
            is always there).
        embed_dim: width of the coarse retrieval vectors.
        has_fine_scores: the model implements ``fine_scores``.
        roi_feat_dim, roi_pos_dim, max_rois: for ``"roi"``: feature and box
            widths, and how many rows (by detector confidence) the model keeps.
        image_size: for ``"pixels"``: the square side the transform produces.
        sample_rate: of the waveforms ``encode_audio`` takes.
    """

    image_input: str
    min_audio_samples: int
    downsample_rates: Dict[str, int]
    embed_dim: int
    has_fine_scores: bool = False
    roi_feat_dim: Optional[int] = None
    roi_pos_dim: Optional[int] = None
    max_rois: Optional[int] = None
    image_size: Optional[int] = None
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self):
        if self.image_input not in IMAGE_INPUTS:
            raise ValueError(f"image_input must be one of {IMAGE_INPUTS}, got {self.image_input!r}")
        if "hidden_states" not in self.downsample_rates:
            raise ValueError("downsample_rates needs a 'hidden_states' entry")

    @property
    def image_args(self) -> Tuple[str, ...]:
        """The keyword arguments of ``encode_image`` (and of the training forward's image side)."""
        return IMAGE_ARGS[self.image_input]

    @property
    def downsample_rate(self) -> int:
        """Samples per ``hidden_states`` frame (320 = 20 ms at 16 kHz)."""
        return self.downsample_rates["hidden_states"]


def _rows(x, index):
    return None if x is None else x[index]


@dataclass
class AudioOutput:
    """What ``encode_audio`` returns, for every family. B = batch, T = trunk frames.

    Attributes:
        coarse: (B, E) the retrieval vector.
        tokens: (B, S, D) what the fine scorer reads (FaST-VGS: Trm2 output,
            CLS first; the MIM family: last-layer frames).
        tokens_padding_mask: (B, S) bool, True at pad (never at a CLS).
        hidden_states: per layer (B, T, D1): the trunk's projected conv
            features, then each transformer layer; CLS removed.
        padding_mask: (B, T) bool, True at pad, for ``hidden_states``.
        downsample_rate: samples per ``hidden_states`` frame.
    """

    coarse: torch.Tensor
    tokens: Optional[torch.Tensor] = None
    tokens_padding_mask: Optional[torch.Tensor] = None
    hidden_states: Tuple[torch.Tensor, ...] = ()
    padding_mask: Optional[torch.Tensor] = None
    downsample_rate: int = 320

    # Fields that a row subset (``out[i]``) and evaluation's cache keep.
    RETRIEVAL_FIELDS = ("coarse", "tokens", "tokens_padding_mask")

    @property
    def mask(self) -> Optional[torch.Tensor]:
        """Old name of ``tokens_padding_mask`` (True at pad)."""
        return self.tokens_padding_mask

    @property
    def frame_rate(self) -> float:
        """``hidden_states`` frames per second."""
        return SAMPLE_RATE / self.downsample_rate

    def hidden_state_sets(self) -> Dict[str, Tuple[torch.Tensor, ...]]:
        """Every hidden-state stream by name; the rates are ``input_spec.downsample_rates``."""
        return {"hidden_states": tuple(self.hidden_states)}

    def __getitem__(self, index) -> "AudioOutput":
        """Rows ``index`` of the retrieval fields only (what ``fine_scores`` reads)."""
        return type(self)(**{f: _rows(getattr(self, f), index) for f in self.RETRIEVAL_FIELDS})

    def __len__(self) -> int:
        return self.coarse.size(0)


@dataclass
class ImageOutput:
    """What ``encode_image`` returns, for every family. R = RoIs or patches.

    Attributes:
        coarse: (B, E) the retrieval vector.
        tokens: (B, S, D) what the fine scorer reads (FaST-VGS: Trm output,
            CLS first; the MIM family: patch tokens).
        tokens_padding_mask: (B, S) bool, True at pad (every family today
            attends to every token: all False).
        hidden_states: per layer (B, R, D), CLS removed (where the family exposes them).
    """

    coarse: torch.Tensor
    tokens: Optional[torch.Tensor] = None
    tokens_padding_mask: Optional[torch.Tensor] = None
    hidden_states: Tuple[torch.Tensor, ...] = ()

    RETRIEVAL_FIELDS = ("coarse", "tokens", "tokens_padding_mask")

    @property
    def mask(self) -> Optional[torch.Tensor]:
        """Old name of ``tokens_padding_mask`` (True at pad)."""
        return self.tokens_padding_mask

    def __getitem__(self, index) -> "ImageOutput":
        return type(self)(**{f: _rows(getattr(self, f), index) for f in self.RETRIEVAL_FIELDS})

    def __len__(self) -> int:
        return self.coarse.size(0)


@dataclass
class TrainOutput:
    """What the training forward returns, for every family.

    Attributes:
        loss: () the weighted total that the optimizer minimises.
        losses: the named unweighted terms (``{"coarse", "fine"}``,
            ``{"nce", "mim"}``); a term that did not run is absent.
        batch_scores: named (B, B) in-batch score matrices, audios as rows
            (``"coarse"`` always).
        audio, image: the encoder outputs of the batch.
    """

    loss: torch.Tensor
    losses: Dict[str, torch.Tensor] = field(default_factory=dict)
    batch_scores: Dict[str, torch.Tensor] = field(default_factory=dict)
    audio: Optional[AudioOutput] = None
    image: Optional[ImageOutput] = None


class TrainingSchedule(nn.Module):
    """What a trainer drives: the epoch, the run's optimizer steps, and after-step updates.

    The step count is a buffer, so a trainer's checkpoint (and ``--resume``)
    keeps it. Subclasses turn the state into forward arguments
    (:meth:`forward_kwargs`) and do their after-step work
    (:meth:`after_optimizer_step`, e.g. a momentum-encoder update). This base
    class changes nothing.
    """

    def __init__(self):
        super().__init__()
        self.epoch: Optional[int] = None  # 0-based
        self.total_steps: Optional[int] = None
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch that the next forwards belong to."""
        self.epoch = int(epoch)

    def set_total_steps(self, total_steps: int) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)

    def forward_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for the model's training forward at the current state."""
        return {}

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Call after every optimizer step that really stepped."""
        self.num_updates += 1


class VGSModelMixin:
    """What every registered model shares: ``model_name``, ``config``, ``save`` and the contract's defaults."""

    model_name: str = ""
    config_class: type = None  # set by subclasses

    @property
    def input_spec(self) -> InputSpec:
        return self.config.input_spec

    @staticmethod
    def coarse_scores(audio, image) -> torch.Tensor:
        """(N_audio, N_image) inner products of the coarse vectors; takes outputs or (N, E) tensors."""
        a = getattr(audio, "coarse", audio)
        v = getattr(image, "coarse", image)
        return a @ v.t()

    def image_transform(self, train: bool):
        """The transform from an image file to ``encode_image``'s input (``"pixels"`` models), else None."""
        return self.config.image_transform(train)

    def training_schedule(self) -> TrainingSchedule:
        """A fresh schedule for a training run of this model (default: nothing changes over training)."""
        return TrainingSchedule()

    def save(self, path) -> "object":
        from ..checkpoint import save_model

        return save_model(self, path)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def minimum_samples(conv_kernel, conv_stride) -> int:
    """Shortest waveform that a conv feature extractor maps to one frame (as ``SpeechTrunk.minimum_samples``)."""
    n = 1
    for k, st in reversed(list(zip(conv_kernel, conv_stride))):
        n = (n - 1) * st + k
    return n


def image_inputs_of(spec: InputSpec, **inputs) -> Dict[str, torch.Tensor]:
    """The ``encode_image`` keyword arguments from ``inputs``; a one-line error names what is missing."""
    missing = [a for a in spec.image_args if inputs.get(a) is None]
    if missing:
        raise ValueError(f"this model reads {spec.image_input} images: give {list(spec.image_args)} (missing {missing})")
    return {a: inputs[a] for a in spec.image_args}


__all__ = [
    "IMAGE_INPUTS",
    "IMAGE_ARGS",
    "InputSpec",
    "AudioOutput",
    "ImageOutput",
    "TrainOutput",
    "TrainingSchedule",
    "VGSModelMixin",
    "image_inputs_of",
    "minimum_samples",
]
