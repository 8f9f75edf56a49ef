"""Model registry: ``name -> class``; classes carry ``config_class`` and ``model_name``.

Classes are imported lazily so ``import s3prl_vgs`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple

import torch

# name -> (module, class name)
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


class VGSModelMixin:
    """What every registered model shares: ``model_name``, ``config``, ``save``."""

    model_name: str = ""
    config_class: type = None  # set by subclasses

    def save(self, path) -> "object":
        from ..checkpoint import save_model

        return save_model(self, path)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


__all__ = ["build_model", "get_model_class", "available_models", "VGSModelMixin"]
