"""Frame features of any layer from a model directory, and their ZR2021 text form.

The model is read with :func:`s3prl_vgs.load_model` (or built from the same
``config.yaml`` with fresh random weights, the "untrained" baseline) and run
through the model contract: ``encode_audio(wavs, lengths)`` then
``AudioOutput.hidden_state_sets()``, the same streams the S3PRL expert
returns (``hidden_states``, FaST-VGS's ``trm2_hidden_states``). One utterance
per forward pass, so there is no padding to trim and a frame's features do
not depend on what else was in the batch.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..data.audio import load_audio
from ..errors import FileProblem
from .layers import Layer, LayerError, LayerInventory

# Seven significant digits: float32 precision, and text files a third the size of numpy's default.
TEXT_FORMAT = "%.7g"


class FeatureError(FileProblem):
    """An utterance that gives no usable features (too short, ...); names the wav."""


def build_random_init(model_dir, seed: int = 0) -> torch.nn.Module:
    """The architecture of ``model_dir/config.yaml`` with fresh (seeded) weights and no pretrained backbone."""
    from ..checkpoint import CheckpointError, read_model_config
    from ..config import ConfigError
    from ..models import get_model_class

    meta = read_model_config(model_dir)
    try:
        cls = get_model_class(meta["model"])
        config = cls.config_class.from_dict(_no_pretrained(meta["config"]))
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{Path(model_dir) / 'config.yaml'}: {e}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config).eval()


def _no_pretrained(config):
    # A random-init baseline must not start from downloaded wav2vec2/HuBERT weights either.
    if isinstance(config, dict):
        return {k: (None if k == "pretrained" else _no_pretrained(v)) for k, v in config.items()}
    return config


class FeatureModel:
    """A model plus the layers it has; :meth:`extract` gives (T, D) float32 arrays per layer."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.inventory = LayerInventory.of(model)
        self.min_samples = model.input_spec.min_audio_samples
        self.model_name = getattr(model, "model_name", type(model).__name__)

    @classmethod
    def from_dir(cls, model_dir, device: str = "cpu", random_init: Optional[int] = None) -> "FeatureModel":
        from ..checkpoint import load_model

        model = build_random_init(model_dir, random_init) if random_init is not None else load_model(model_dir)
        return cls(model, device)

    @torch.inference_mode()
    def extract(self, wav_path: Path, layers: Sequence[Layer]) -> Dict[Layer, np.ndarray]:
        wav = load_audio(wav_path, resample=False)
        if wav.numel() < self.min_samples:
            raise FeatureError(wav_path, f"{wav.numel()} samples is shorter than one frame ({self.min_samples} samples)")
        out = self.model.encode_audio(wav[None].to(self.device), torch.tensor([wav.numel()], device=self.device))
        sets = out.hidden_state_sets()
        result = {}
        for layer in layers:
            states = sets.get(layer.stream, ())
            if len(states) != self.inventory.streams[layer.stream][0]:
                raise LayerError(f"{self.model_name}: stream {layer.stream} returned {len(states)} hidden states, "
                                 f"expected {self.inventory.streams[layer.stream][0]}")
            x = states[layer.index][0].float().cpu().numpy()
            if x.shape[0] == 0:
                raise FeatureError(wav_path, f"no {layer.short_name} frame ({wav.numel()} samples)")
            result[layer] = x
        return result


def frames_to_text(x: np.ndarray) -> str:
    """(T, D) -> ZR2021 text: one frame per line, D floats each.

    ``np.loadtxt`` (what the ZR2021 validator and the ABX loader use) reads
    a one-line file as 1-D and rejects it, so a single frame is written twice;
    max/mean/min pooling and a DTW distance averaged along the path are the
    same for the repeated frame.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"features must be (T, D) with D >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    if x.shape[0] == 1:
        x = np.repeat(x, 2, axis=0)
    buf = io.StringIO()
    np.savetxt(buf, x, fmt=TEXT_FORMAT)
    return buf.getvalue()


__all__ = ["FeatureModel", "FeatureError", "build_random_init", "frames_to_text", "TEXT_FORMAT"]
