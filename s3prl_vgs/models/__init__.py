"""Model registry: ``name -> class``; classes carry ``config_class`` and ``model_name``.

Every registered class implements the contract of :mod:`s3prl_vgs.models.base`
(``input_spec``, ``encode_audio``, ``encode_image``, ``coarse_scores``,
optional ``fine_scores``, a training forward returning ``loss`` + ``losses``).
Classes are imported lazily so ``import s3prl_vgs`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple

import torch

from .base import AudioOutput, ImageOutput, InputSpec, TrainingSchedule, TrainOutput, VGSModelMixin

# name -> (module, class name). A new family is one model file plus one line here.
_REGISTRY: Dict[str, Tuple[str, str]] = {
    "fast_vgs": ("s3prl_vgs.models.fast_vgs", "FaSTVGS"),
    "vg_mim": ("s3prl_vgs.models.vg_mim", "SpeechGuidedMIM"),
}


def available_models():
    return sorted(_REGISTRY)


def get_model_class(name: str):
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {available_models()}")
    module, attr = _REGISTRY[name]
    return getattr(importlib.import_module(module), attr)


def build_model(name: str, preset: str = "base", **overrides: Any) -> torch.nn.Module:
    """Build a model by registry name from a named preset plus field overrides.

    Example:
        >>> model = build_model("fast_vgs", preset="tiny")
    """
    cls = get_model_class(name)
    return cls(cls.config_class.preset(preset, **overrides))


__all__ = ["build_model", "get_model_class", "available_models", "VGSModelMixin", "AudioOutput", "ImageOutput",
           "TrainOutput", "InputSpec", "TrainingSchedule"]
