"""``vgs-pretrain-conv``: a self-supervised warm start of the wav2vec2 conv feature encoder.

The papers freeze a *pretrained* wav2vec2/HuBERT conv. Pretrained weights cannot
be fetched here, and a frozen *random* conv throws the signal away, while a
conv trained from scratch through the grounding loss learns words slowly and
costs a backward pass per step (issue 15: held-out R@10 flat near 9%). This
script gives the demo's small conv what pretraining gives the real one: it
trains the conv, with a linear read-out, to regress the log-mel spectrum of
its own input frame by frame (PASE's "workers" idea: targets computed from the
signal, no labels). The read-out is dropped; what is kept is a conv whose
frames linearly carry a 40-band log-mel spectrum, which the grounding models
then use frozen, as the papers use theirs.

The frames line up exactly: the conv's receptive field is 400 samples with a
hop of 320 (25 ms / 20 ms at 16 kHz), so the target is an STFT with a 400-
sample window and hop 320, uncentred. The waveform is normalised per
utterance as the trunk does for wav2vec2 backbones; GroupNorm in the first
layer makes the conv scale-invariant, so the same weights serve HuBERT-style
trunks (raw waveform) too.

The package ships ``assets/synth_conv32.safetensors`` made by::

    vgs-synth --out /tmp/conv_corpus --n-train 400 --n-val 0 --n-test 0 --seed 7 \
        --voices <DEMO_TRAIN_VOICES>          # train voices only: the demo's test voices stay unheard
    vgs-pretrain-conv --corpus /tmp/conv_corpus --out s3prl_vgs/assets/synth_conv32.safetensors

Load it with ``SpeechTrunkConfig(conv_init="synth_conv32", freeze_conv=True)``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .cli import console_script
from .errors import FileProblem
from .io import atomic_write_bytes, load_json

ASSETS = Path(__file__).resolve().parent / "assets"
KEY_PREFIX = "feature_extractor."
N_MELS = 40
WINDOW, HOP = 400, 320  # the wav2vec2 conv's receptive field and stride, in samples


@dataclass
class ConvPretrainConfig:
    conv_dim: Tuple[int, ...] = (32,) * 7
    conv_kernel: Tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: Tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    n_mels: int = N_MELS
    batch_size: int = 16
    crop_sec: float = 3.0
    lr: float = 2e-3
    steps: int = 1500
    seed: int = 0


# ----------------------------------------------------------------------------- resolving and loading


def resolve(name_or_path: str, what: str = "conv warm start", prefix: str = "synth_conv") -> Path:
    """A packaged asset by name (``synth_conv32``) or a path to a ``.safetensors`` file.

    ``what`` names the asset in errors; ``prefix`` picks the packaged names to list.
    """
    p = Path(name_or_path)
    if p.suffix != ".safetensors" and len(p.parts) == 1:
        p = ASSETS / f"{name_or_path}.safetensors"
        if not p.is_file():
            known = sorted(q.stem for q in ASSETS.glob(f"{prefix}*.safetensors"))
            raise FileProblem(p, f"no packaged {what} {name_or_path!r} (packaged: {', '.join(known) or 'none'})")
    if not p.is_file():
        raise FileProblem(p, f"{what} not found")
    return p


def load_conv_state(name_or_path: str, feature_extractor: nn.Module) -> Dict[str, str]:
    """Load a warm start into ``feature_extractor`` (strict, shapes checked); returns its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = resolve(name_or_path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except Exception as e:  # a truncated or foreign file: one line naming it
        raise FileProblem(path, f"not a readable safetensors file ({type(e).__name__}: {e})") from None
    state = {k[len(KEY_PREFIX):]: v for k, v in tensors.items() if k.startswith(KEY_PREFIX)}
    own = feature_extractor.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise FileProblem(path, f"does not fit this conv: missing {missing[:3]}, unexpected {unexpected[:3]}")
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        raise FileProblem(path, f"{KEY_PREFIX}{k} has shape {got}, this trunk's conv needs {want} (conv_dim differs?)")
    feature_extractor.load_state_dict(state)
    return meta


# ----------------------------------------------------------------------------- the pretext task


class LogMel(nn.Module):
    """Log-mel frames aligned with the conv's: window 400, hop 320, no centring."""

    def __init__(self, n_mels: int = N_MELS, sample_rate: int = 16000):
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=512, win_length=WINDOW, hop_length=HOP, n_mels=n_mels, center=False, power=2.0)

    def forward(self, wavs: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, T, n_mels)
        return (self.mel(wavs) + 1e-6).log().transpose(1, 2)


def _normalise(wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    from .data.audio import normalize_waveform

    return normalize_waveform(wavs, lengths)


def read_corpus_wavs(corpus: Path, split: str = "train") -> List[np.ndarray]:
    """Every caption wav of a ``vgs-synth`` (SpokenCOCO-layout) split, float32."""
    import soundfile as sf

    index = corpus / "SpokenCOCO" / f"SpokenCOCO_{split}_karpathy.json"
    data = load_json(index)
    try:
        entries = data["data"]
    except (TypeError, KeyError):
        raise FileProblem(index, "has no 'data' list (not a vgs-synth / SpokenCOCO index)") from None
    wavs = []
    for e in entries:
        for c in e["captions"]:
            path = corpus / "SpokenCOCO" / c["wav"]
            try:
                x, rate = sf.read(str(path), dtype="float32")
            except Exception as err:
                raise FileProblem(path, f"unreadable wav ({err})") from None
            if rate != 16000 or x.ndim != 1:
                raise FileProblem(path, f"must be 16 kHz mono, got {rate} Hz, {x.ndim} channel(s)")
            wavs.append(x)
    if not wavs:
        raise FileProblem(index, "lists no captions")
    return wavs


def _batch(wavs: Sequence[np.ndarray], crop: int, rng: random.Random) -> Tuple[torch.Tensor, torch.Tensor]:
    picks = []
    for x in wavs:
        if len(x) > crop:
            s = rng.randint(0, len(x) - crop)
            x = x[s:s + crop]
        picks.append(x)
    lengths = torch.tensor([len(x) for x in picks])
    out = torch.zeros(len(picks), int(lengths.max()))
    for i, x in enumerate(picks):
        out[i, :len(x)] = torch.from_numpy(x)
    return out, lengths


def pretrain(wavs: Sequence[np.ndarray], cfg: ConvPretrainConfig, log=print) -> Tuple[nn.Module, Dict[str, float]]:
    """Train a conv + linear read-out on log-mel regression; returns the conv and the loss curve ends."""
    from .modules.speech_trunk import SpeechTrunk, SpeechTrunkConfig, conv_output_lengths, lengths_to_padding_mask

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    trunk_cfg = SpeechTrunkConfig(hidden_size=64, num_heads=4, intermediate_size=64, num_layers=1,
                                  conv_dim=cfg.conv_dim, conv_kernel=cfg.conv_kernel, conv_stride=cfg.conv_stride,
                                  freeze_conv=False)
    trunk = SpeechTrunk(trunk_cfg)
    conv = trunk.feature_extractor
    readout = nn.Linear(cfg.conv_dim[-1], cfg.n_mels)
    logmel = LogMel(cfg.n_mels)
    # Global per-band statistics of the targets (from a sample), so every band weighs the same.
    sample = [_normalise(*_batch([w], len(w), rng)) for w in rng.sample(list(wavs), min(200, len(wavs)))]
    frames = torch.cat([logmel(x)[0] for x in sample])
    mean, std = frames.mean(0), frames.std(0).clamp_min(1e-3)
    params = list(conv.parameters()) + list(readout.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    crop = int(cfg.crop_sec * 16000)
    order: List[int] = []
    curve: Dict[str, float] = {}
    t0, running = time.time(), None
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order = list(range(len(wavs)))
            rng.shuffle(order)
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        x, lengths = _batch([wavs[i] for i in idx], crop, rng)
        x = _normalise(x, lengths)
        n = conv_output_lengths(lengths, cfg.conv_kernel, cfg.conv_stride)
        feats = trunk._conv_features(x, lengths)  # (B, T, C): the trunk's own padding-exact conv path
        target = (logmel(x)[:, :feats.size(1)] - mean) / std
        T = min(feats.size(1), target.size(1))
        valid = ~lengths_to_padding_mask(n.clamp(max=T), T)
        err = (readout(feats[:, :T]) - target[:, :T]).pow(2).mean(-1)
        loss = err[valid].mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step == 0:
            curve["first_loss"] = loss.item()
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            log(f"step {step + 1}/{cfg.steps}  loss {running:.4f}  ({time.time() - t0:.0f} s)")
    curve["final_loss"] = running
    curve["seconds"] = time.time() - t0
    return conv, curve


def save(conv: nn.Module, path: Path, meta: Dict[str, str]) -> None:
    from safetensors.torch import save

    tensors = {KEY_PREFIX + k: v.detach().contiguous() for k, v in conv.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata={k: str(v) for k, v in meta.items()}))


@console_script("vgs-pretrain-conv")
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="vgs-pretrain-conv", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True, help="a vgs-synth output dir (its train split is read)")
    p.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    p.add_argument("--conv-dim", type=int, nargs="+", default=list(ConvPretrainConfig.conv_dim))
    p.add_argument("--steps", type=int, default=ConvPretrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=ConvPretrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=ConvPretrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.out.suffix != ".safetensors":
        raise FileProblem(a.out, "the output must end in .safetensors")
    cfg = ConvPretrainConfig(conv_dim=tuple(a.conv_dim), steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    if len(cfg.conv_dim) != len(cfg.conv_kernel):
        raise SystemExit(f"vgs-pretrain-conv: error: --conv-dim needs {len(cfg.conv_kernel)} widths")
    wavs = read_corpus_wavs(a.corpus)
    print(f"vgs-pretrain-conv: {len(wavs)} utterances from {a.corpus}", file=sys.stderr)
    conv, curve = pretrain(wavs, cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    info = {}
    info_file = a.corpus / "synth_info.json"
    if info_file.is_file():
        info = load_json(info_file)
    meta = {"task": "log-mel regression (window 400, hop 320, 40 bands, linear read-out dropped)",
            "config": json.dumps(asdict(cfg)),
            "corpus": json.dumps({k: info.get(k) for k in ("seed", "n_train", "voices") if k in info}),
            "utterances": str(len(wavs)), **{k: f"{v:.4f}" for k, v in curve.items()}}
    save(conv, a.out, meta)
    print(json.dumps({"out": str(a.out), **curve}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
