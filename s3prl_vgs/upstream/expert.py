"""S3PRL upstream expert for any s3prl-vgs model directory (full or speech-only).

``hidden_states`` holds every 20 ms layer of the speech trunk (projected conv
features, then each transformer layer, CLS removed), so SUPERB-style probing
can weight all of them. FaST-VGS adds its 320 ms stream (Conv2 output and
Trm2 layer) under ``trm2_hidden_states``. Waveforms are normalised inside the
model exactly as in training.

Only the speech branch is kept in the module (a full directory is pruned on
load), so ESPnet's ``S3prlFrontend`` copies and checkpoints stay small.
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pad_sequence

from ..checkpoint import load_model
from .export import prune_to, speech_branch


def _downsample_rates(model: nn.Module) -> Dict[str, int]:
    spec = getattr(model, "input_spec", None)
    if spec is not None:
        return dict(spec.downsample_rates)
    # Before the InputSpec contract: the trunk's rate, FaST-VGS's Conv2 stride on top of it.
    from ..modules.speech_trunk import SpeechTrunk

    rate = next(m for m in model.modules() if isinstance(m, SpeechTrunk)).downsample_rate
    rates = {"hidden_states": rate}
    if hasattr(model.config, "conv2_downsample"):
        rates["trm2_hidden_states"] = rate * model.config.conv2_downsample
    return rates


def _hidden_state_sets(out) -> Dict[str, tuple]:
    if hasattr(out, "hidden_state_sets"):
        return dict(out.hidden_state_sets())
    sets = {"hidden_states": tuple(out.hidden_states)}
    if getattr(out, "trm2_hidden_states", ()):
        sets["trm2_hidden_states"] = tuple(out.trm2_hidden_states)
    return sets


class UpstreamExpert(nn.Module):
    def __init__(self, ckpt: str, model_config: str | None = None, **kwargs):
        super().__init__()
        if not ckpt:
            raise ValueError("s3prl-vgs upstreams need ckpt=MODEL_DIR (a directory with config.yaml and model.safetensors)")
        model = load_model(ckpt).eval()
        if not hasattr(model, "speech_only_parts"):  # a full model directory
            prune_to(model, speech_branch(model))
        self.model = model
        self.rates = _downsample_rates(model)

    def get_downsample_rates(self, key: str) -> int:
        return self.rates.get(key, self.rates["hidden_states"])

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        padded = pad_sequence(wavs, batch_first=True)
        out = self.model.encode_audio(padded, lengths)
        return {k: list(v) for k, v in _hidden_state_sets(out).items() if v}
