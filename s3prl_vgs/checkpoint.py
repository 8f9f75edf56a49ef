"""Model directories: ``config.yaml`` + ``model.safetensors``.

The same directory is what ``s3prl_vgs.load_model``, the S3PRL hub entries and
the recipes take. Nothing here unpickles: the config is YAML data read with
``yaml.safe_load`` and the weights are safetensors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import torch
import yaml

from .errors import VGSError
from .io import TextFileError, atomic_dir, load_yaml

FORMAT_VERSION = 1
CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"
META_KEYS = ("format_version", "model", "config", "extra")  # top-level keys of config.yaml


class CheckpointError(VGSError, RuntimeError):
    """A model directory that cannot be loaded; the message names the file."""


def save_model(model: torch.nn.Module, path: str | os.PathLike, extra: Dict[str, Any] | None = None) -> Path:
    """Write ``model`` (which has ``model_name`` and ``config``) to directory ``path``.

    Both files are written into a temporary sibling directory which then
    takes the place of ``path`` as a whole (:func:`s3prl_vgs.io.atomic_dir`),
    so a killed save leaves the previous directory intact, never a new config
    beside old weights. Other files in an existing ``path`` are carried over.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model.model_name,
        "config": model.config.to_dict(),
    }
    if extra:
        meta["extra"] = extra
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    others = sorted(p.name for p in path.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME)) if path.is_dir() else []
    with atomic_dir(path, keep=others) as tmp:
        (tmp / CONFIG_NAME).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
        # safetensors refuses shared storage; contiguous copies keep tied views apart.
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "model": model.model_name})
    return path


def read_model_config(path: str | os.PathLike) -> Dict[str, Any]:
    """The parsed ``config.yaml`` of a model directory (format checked)."""
    cfg_file = Path(path) / CONFIG_NAME
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file}: missing; a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        meta = load_yaml(cfg_file)
    except TextFileError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(meta, dict) or "model" not in meta or "config" not in meta:
        raise CheckpointError(f"{cfg_file}: expected a mapping with keys 'model' and 'config'")
    unknown = sorted(str(k) for k in meta if k not in META_KEYS)
    if unknown:
        raise CheckpointError(f"{cfg_file}: unknown top-level key(s) {unknown}; known keys are {sorted(META_KEYS)}")
    for key, types, what in (("model", str, "a model name"), ("config", dict, "a mapping"),
                             ("extra", (dict, type(None)), "a mapping")):
        if key in meta and not isinstance(meta[key], types):
            raise CheckpointError(f"{cfg_file}: '{key}' must be {what}, got {type(meta[key]).__name__}")
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{cfg_file}: 'format_version' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{cfg_file}: format_version {version} is newer than this s3prl_vgs ({FORMAT_VERSION})")
    return meta


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", strict: bool = True) -> torch.nn.Module:
    """Build the model described by ``path/config.yaml`` and load its weights.

    The model comes back in eval mode (as ``from_pretrained`` in transformers);
    call ``.train()`` to fine-tune.

    Raises:
        CheckpointError: missing files, unknown model name, mismatched config,
            or weights that do not fit the config (missing/unexpected keys or
            wrong shapes are listed).
    """
    path = Path(path)
    meta = read_model_config(path)
    from .upstream.export import is_speech_only, load_speech_only

    if is_speech_only(meta):  # an S3PRL upstream export: encode_audio only (image parts are None)
        return load_speech_only(path, meta, map_location)
    cls, config, state, weights = read_model_dir(path, meta, map_location)
    try:
        model = cls(config)
    except (ValueError, TypeError, ZeroDivisionError) as e:  # values that type-check but build no model
        raise CheckpointError(f"{path / CONFIG_NAME}: cannot build {meta['model']} ({' '.join(str(e).split())})") from None
    load_state_dict_checked(model, state, source=weights, strict=strict)
    return model.to(map_location).eval()


def read_model_dir(path: Path, meta: Dict[str, Any], map_location: str | torch.device = "cpu"):
    """``(model class, config, state dict, weights path)`` of a model dir whose ``config.yaml`` is ``meta``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .config import ConfigError
    from .models import get_model_class

    try:
        cls = get_model_class(meta["model"])
        config = cls.config_class.from_dict(without_pretrained(meta["config"]))
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: {e}") from None
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({e})") from None
    return cls, config, state, weights


def without_pretrained(config: Any) -> Any:
    """A copy of a config dict with every ``pretrained`` (and ``conv_init``) entry set to None.

    The weights come from ``model.safetensors`` (or a checkpoint): a backbone is never fetched again.
    """
    if isinstance(config, dict):
        return {k: (None if k in ("pretrained", "conv_init") else without_pretrained(v)) for k, v in config.items()}
    return config


def load_state_dict_checked(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: Any, strict: bool = True) -> None:
    """``load_state_dict`` that reports missing, unexpected and mis-shaped keys by name."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    problems = []
    if strict and missing:
        problems.append(f"missing keys {missing}")
    if strict and unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"shape mismatches {shapes}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the config: " + "; ".join(problems))
    model.load_state_dict(state, strict=strict)


__all__ = ["save_model", "load_model", "read_model_config", "load_state_dict_checked", "CheckpointError"]
