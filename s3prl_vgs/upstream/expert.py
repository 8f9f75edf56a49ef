"""S3PRL upstream expert for any s3prl-vgs model directory.

``hidden_states`` holds every 20 ms layer of the speech trunk (projected conv
features, then each transformer layer, CLS removed), so SUPERB-style probing
can weight all of them. FaST-VGS adds its 320 ms stream (Conv2 output and
Trm2 layer) under ``trm2_hidden_states``. Waveforms are normalised inside the
model exactly as in training.
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pad_sequence

from ..checkpoint import load_model
from ..modules.speech_trunk import SpeechTrunk


class UpstreamExpert(nn.Module):
    def __init__(self, ckpt: str, model_config: str | None = None, **kwargs):
        super().__init__()
        if not ckpt:
            raise ValueError("s3prl-vgs upstreams need ckpt=MODEL_DIR (a directory with config.yaml and model.safetensors)")
        self.model = load_model(ckpt).eval()
        trunks = [m for m in self.model.modules() if isinstance(m, SpeechTrunk)]
        if len(trunks) != 1:
            raise ValueError(f"{ckpt}: expected one speech trunk in the model, found {len(trunks)}")
        self.rate = trunks[0].downsample_rate

    def get_downsample_rates(self, key: str) -> int:
        if key == "trm2_hidden_states":
            return self.rate * self.model.config.conv2_downsample
        return self.rate

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        padded = pad_sequence(wavs, batch_first=True)
        out = self.model.encode_audio(padded, lengths)
        result = {"hidden_states": list(out.hidden_states)}
        if getattr(out, "trm2_hidden_states", ()):
            result["trm2_hidden_states"] = list(out.trm2_hidden_states)
        return result
