"""Audio loading: soundfile, mono only, resampling to 16 kHz, errors that name the file.

One rule for every reader (``vgs-validate``, ``vgs-evaluate``, the recipes):
multi-channel audio is an error, not silently mixed down, because which
channel (or mix) a model hears is a formatting decision made once, in stage 2.
"""

from __future__ import annotations

import os
from typing import Tuple

import numpy as np
import torch

from .errors import FileProblem

SAMPLE_RATE = 16000
FORMAT_HINT = "stage 2 of the recipe formats audio to 16 kHz mono"


class AudioError(FileProblem):
    """An audio file that cannot be used; the message names the file and the problem."""


def audio_info(path: str | os.PathLike) -> Tuple[int, int, int]:
    """``(sample_rate, channels, frames)`` without decoding; AudioError if unreadable."""
    import soundfile as sf

    if not os.path.isfile(path):
        raise AudioError(path, "missing audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError subclasses
        reason = str(e).strip().replace(f"Error opening {str(path)!r}: ", "")
        raise AudioError(path, f"unreadable audio ({reason})") from None
    return info.samplerate, info.channels, info.frames


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, resample: bool = True) -> torch.Tensor:
    """Load ``path`` as a mono float32 tensor (L,) at ``sample_rate``.

    Multi-channel audio is an error (as in ``vgs-validate``). Other rates are
    resampled with torchaudio when ``resample`` is True and are an error
    otherwise (the recipes format audio once in stage 2 rather than on every read).
    """
    import soundfile as sf

    sr, channels, frames = audio_info(path)
    if frames == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if channels != 1:
        raise AudioError(path, f"{channels} channels, expected mono ({FORMAT_HINT})")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(path, f"unreadable audio ({str(e).strip()})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio holds NaN or infinite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
    if sr != sample_rate:
        if not resample:
            raise AudioError(path, f"sample rate {sr} Hz, expected {sample_rate} Hz ({FORMAT_HINT})")
        import torchaudio.functional as AF

        wav = AF.resample(wav, sr, sample_rate)
    return wav


def normalize_waveform(wav: torch.Tensor, lengths: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """Per-utterance zero-mean unit-variance over the valid samples of (B, L) or (L,).

    Padding stays zero. FaST-VGS is trained on normalised waveforms; like the
    official loader this divides by the population std (no epsilon inside the
    square root), and ``eps`` only guards digital silence.
    """
    squeeze = wav.dim() == 1
    if squeeze:
        wav = wav[None]
    B, L = wav.shape
    if lengths is None:
        lengths = torch.full((B,), L, device=wav.device)
    valid = torch.arange(L, device=wav.device)[None] < lengths.to(wav.device)[:, None]
    n = valid.sum(1, keepdim=True).clamp(min=1)
    mean = (wav * valid).sum(1, keepdim=True) / n
    var = (((wav - mean) * valid) ** 2).sum(1, keepdim=True) / n
    out = (wav - mean) / torch.sqrt(var).clamp(min=eps) * valid
    return out[0] if squeeze else out


__all__ = ["SAMPLE_RATE", "AudioError", "audio_info", "load_audio", "normalize_waveform"]
