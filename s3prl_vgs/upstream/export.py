"""Speech-only model directories: what an S3PRL upstream needs and nothing else.

A full model directory holds the image encoder, cross encoder, MIM decoder and
momentum encoder too; an S3PRL upstream (and so every copy that ESPnet's
``S3prlFrontend`` puts into its checkpoints) needs only the speech branch.

Which parts are the speech branch is *measured*, not listed per family: the
top-level submodules whose forward runs in ``model.encode_audio`` (plus the
model's own parameters that get a gradient from it). That keeps this file
independent of model internals: a new family or a renamed submodule needs no
edit here. The export then checks that the pruned model gives the same
``encode_audio`` output as the full one, and refuses to write otherwise.

On disk a speech-only directory is an ordinary model directory
(``config.yaml`` + ``model.safetensors``) whose ``extra.speech_only`` lists the
kept parts; ``load_speech_only`` (and ``s3prl_vgs.load_model``) reads it into
the family's class with every other part set to ``None``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

SPEECH_ONLY_KEY = "speech_only"
_PROBE_SAMPLES = 16000  # a 1-s probe waveform: long enough for every family's strides


def _audio_outputs(out: Any) -> List[torch.Tensor]:
    """Every tensor in an ``encode_audio`` output, in a fixed order."""
    fields = vars(out) if hasattr(out, "__dict__") else {}
    tensors = []
    for name in sorted(fields):
        value = fields[name]
        if torch.is_tensor(value) and value.is_floating_point():
            tensors.append(value)
        elif isinstance(value, (tuple, list)):
            tensors.extend(v for v in value if torch.is_tensor(v) and v.is_floating_point())
    return tensors


def _probe_wavs() -> tuple:
    g = torch.Generator().manual_seed(0)
    wavs = torch.randn(2, _PROBE_SAMPLES, generator=g)
    return wavs, torch.tensor([_PROBE_SAMPLES, _PROBE_SAMPLES * 3 // 4])


def speech_branch(model: nn.Module) -> List[str]:
    """Names of the top-level children and own parameters that ``encode_audio`` uses."""
    ran: set = set()
    handles = [child.register_forward_pre_hook(lambda m, a, _n=name: ran.add(_n))
               for name, child in model.named_children()]
    own = dict(model.named_parameters(recurse=False))
    was_training = model.training
    flags = {n: p.requires_grad for n, p in own.items()}
    try:
        model.eval()
        for p in own.values():
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            outs = _audio_outputs(model.encode_audio(*_probe_wavs()))
            total = sum(o.float().sum() for o in outs if o.requires_grad)
            used_own = set()
            if torch.is_tensor(total) and own:
                grads = torch.autograd.grad(total, list(own.values()), allow_unused=True)
                used_own = {n for n, g in zip(own, grads) if g is not None}
    finally:
        for h in handles:
            h.remove()
        for n, p in own.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    return [n for n, _ in model.named_children() if n in ran] + sorted(used_own)


def prune_to(model: nn.Module, keep: List[str]) -> nn.Module:
    """Set every top-level child and own parameter not in ``keep`` to None (in place)."""
    keep = set(keep)
    for name, _ in list(model.named_children()):
        if name not in keep:
            setattr(model, name, None)
    for name, _ in list(model.named_parameters(recurse=False)):
        if name not in keep:
            setattr(model, name, None)
    return model


def speech_only_model(model: nn.Module) -> nn.Module:
    """A pruned copy of ``model`` that encodes audio exactly as ``model`` does."""
    import copy

    keep = speech_branch(model)
    pruned = prune_to(copy.deepcopy(model), keep).eval()
    model_was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = _audio_outputs(model.encode_audio(*_probe_wavs()))
            try:
                got = _audio_outputs(pruned.encode_audio(*_probe_wavs()))
            except (AttributeError, TypeError):  # it reached for a part we dropped
                got = []
    finally:
        model.train(model_was_training)
    if not ref or len(ref) != len(got) or any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(ref, got)):
        raise RuntimeError(f"{type(model).__name__}: the speech-only model (keeping {keep}) does not reproduce "
                           "encode_audio; the speech branch could not be separated")
    pruned.speech_only_parts = keep
    return pruned


def export_speech_only(model_or_dir: Any, out: str | os.PathLike, extra: Dict[str, Any] | None = None) -> Path:
    """Write the speech branch of a model (or of a full model directory) to directory ``out``."""
    from ..checkpoint import load_model, save_model

    source = None
    if isinstance(model_or_dir, (str, os.PathLike)):
        source = str(model_or_dir)
        model_or_dir = load_model(model_or_dir)
    pruned = speech_only_model(model_or_dir)
    info = {SPEECH_ONLY_KEY: {"parts": list(pruned.speech_only_parts)}}
    if source:
        info[SPEECH_ONLY_KEY]["from"] = source
    return save_model(pruned, out, extra={**(extra or {}), **info})


def is_speech_only(meta: Dict[str, Any]) -> bool:
    """Whether a parsed ``config.yaml`` describes a speech-only directory."""
    return isinstance(meta.get("extra"), dict) and isinstance(meta["extra"].get(SPEECH_ONLY_KEY), dict)


def load_speech_only(path: str | os.PathLike, meta: Dict[str, Any], map_location: str | torch.device = "cpu") -> nn.Module:
    """Build the family's model with only the kept parts and load the weights (strictly).

    The full model is first built on the ``meta`` device (no memory, no random
    init), pruned, then materialised: building a speech upstream never
    allocates an image encoder.
    """
    from ..checkpoint import CONFIG_NAME, CheckpointError, load_state_dict_checked, read_model_dir

    path = Path(path)
    parts = meta["extra"][SPEECH_ONLY_KEY].get("parts")
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise CheckpointError(f"{path / CONFIG_NAME}: extra.{SPEECH_ONLY_KEY}.parts must be a non-empty list of names")
    cls, config, state, weights = read_model_dir(path, meta, map_location)
    # A first import of transformers' model modules (torch._dynamo) fails under the meta device.
    from transformers import HubertModel, Wav2Vec2Model  # noqa: F401

    with torch.device("meta"):
        model = cls(config)
    unknown = [p for p in parts if not hasattr(model, p)]
    if unknown:
        raise CheckpointError(f"{path / CONFIG_NAME}: extra.{SPEECH_ONLY_KEY}.parts names {unknown}, "
                              f"which a {meta['model']} model does not have")
    prune_to(model, parts)
    persistent = set(model.state_dict())
    transient = [n for n, _ in model.named_buffers() if n not in persistent]
    if transient:  # buffers that are not saved must come from a real init
        model = prune_to(cls(config), parts)
    else:
        model = model.to_empty(device=map_location)
    load_state_dict_checked(model, state, source=weights)
    model.speech_only_parts = list(parts)
    return model.to(map_location).eval()



__all__ = ["speech_branch", "speech_only_model", "export_speech_only", "load_speech_only", "is_speech_only", "prune_to"]
