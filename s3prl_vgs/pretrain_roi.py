"""``vgs-pretrain-roi``: the demo's stand-in for bottom-up-attention's object detector.

FaST-VGS reads RoI features of a Faster R-CNN that was trained on Visual Genome's
object *and attribute* labels (Anderson et al.'s bottom-up attention), so each
region's feature already names what is there ("red", "circle"). No detector
weights can be fetched here, and a random ResNet-50 pooled at the boxes keeps
colour but little shape (issue 15: a linear probe decodes shape 58%): the
tiny FaST-VGS then learns its image side slowly from badly scaled features.
This script trains what bottom-up attention trained, at demo size: a small CNN
whose RoIAlign-pooled feature at an object's box predicts the object's shape,
colour and size (three linear heads, dropped afterwards), on scenes drawn on
the fly by the synthetic corpus's own renderer from a seed the demo never
uses. Stage 3 then pools it at the corpus's ground-truth boxes exactly as it
pools the ResNet-50 C5 map (``vgs-extract-roi --weights synth_roi128``).

The package ships ``assets/synth_roi128.safetensors`` made by::

    vgs-pretrain-roi --out s3prl_vgs/assets/synth_roi128.safetensors

The network: 5 conv-BN-ReLU blocks (3x3; strides 2, 2, 2, 2, 1; widths 32, 64,
96, 128, 128), so the map has stride 16 (14 x 14 at 224 px); inputs are
normalised with ImageNet's mean and std, as torchvision's detector transform
does.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align

from .cli import console_script
from .errors import FileProblem
from .io import atomic_write_bytes

KEY_PREFIX = "body."
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass
class RoIPretrainConfig:
    widths: Tuple[int, ...] = (32, 64, 96, 128, 128)
    strides: Tuple[int, ...] = (2, 2, 2, 2, 1)
    batch_size: int = 16
    lr: float = 2e-3
    steps: int = 600
    seed: int = 0
    scene_seed: int = 7  # the demo's corpus uses seed 1


class SynthRoIBody(nn.Module):
    """(B, 3, H, W) normalised images -> ``{"3": (B, C, H/16, W/16)}`` (the key the extractor pools)."""

    def __init__(self, widths: Sequence[int] = RoIPretrainConfig.widths, strides: Sequence[int] = RoIPretrainConfig.strides):
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"widths {list(widths)} and strides {list(strides)} differ in length")
        layers, c_in = [], 3
        for c, s in zip(widths, strides):
            layers += [nn.Conv2d(c_in, c, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.layers = nn.Sequential(*layers)
        self.out_channels = int(widths[-1])
        self.stride = int(np.prod(strides))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"3": self.layers(x)}


def pool_boxes(fmap: torch.Tensor, boxes: Sequence[torch.Tensor], stride: int) -> torch.Tensor:
    """(sum n_i, C): RoIAlign 7x7 at the boxes (pixels), averaged; the extractor's pooling."""
    pooled = roi_align(fmap, [b.to(fmap.dtype) for b in boxes], output_size=7, spatial_scale=1.0 / stride,
                       sampling_ratio=2, aligned=True)
    return pooled.mean(dim=(2, 3))


# ----------------------------------------------------------------------------- loading


def load_body(name_or_path: str) -> Tuple[SynthRoIBody, Dict[str, str]]:
    """A packaged backbone by name (``synth_roi128``) or a ``.safetensors`` path -> (eval body, metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .pretrain_conv import resolve

    path = resolve(name_or_path, what="RoI backbone", prefix="synth_roi")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
        cfg = json.loads(meta["config"])
        body = SynthRoIBody(cfg["widths"], cfg["strides"])
    except Exception as e:  # a truncated or foreign file: one line naming it
        raise FileProblem(path, f"not a vgs-pretrain-roi safetensors file ({type(e).__name__}: {e})") from None
    state = {k[len(KEY_PREFIX):]: v for k, v in tensors.items() if k.startswith(KEY_PREFIX)}
    try:
        body.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise FileProblem(path, f"does not fit its own config ({' '.join(str(e).split())[:200]})") from None
    return body.eval(), meta


def save(body: SynthRoIBody, path: Path, meta: Dict[str, str]) -> None:
    from safetensors.torch import save as st_save

    tensors = {KEY_PREFIX + k: v.detach().contiguous() for k, v in body.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, st_save(tensors, metadata={k: str(v) for k, v in meta.items()}))


# ----------------------------------------------------------------------------- the pretext task


def _scenes(rng: random.Random, n: int):
    """n drawn scenes: (3, 224, 224) normalised images, per-image boxes, (shape, colour, size) labels."""
    from .data.synthetic import COLORS, SHAPES, SIZES, render_scene, sample_scene

    colors, sizes = list(COLORS), list(SIZES)
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    images, boxes, labels = [], [], []
    for _ in range(n):
        gray, objects = sample_scene(rng)
        pix = torch.from_numpy(np.asarray(render_scene(gray, objects), dtype=np.float32) / 255.0).permute(2, 0, 1)
        images.append((pix - mean) / std)
        boxes.append(torch.tensor([o.box for o in objects], dtype=torch.float32))
        labels += [(SHAPES.index(o.shape), colors.index(o.color), sizes.index(o.size)) for o in objects]
    return torch.stack(images), boxes, torch.tensor(labels)


def pretrain(cfg: RoIPretrainConfig, log=print) -> Tuple[SynthRoIBody, Dict[str, float]]:
    """Train the body with shape/colour/size heads; returns it and the held-out accuracies."""
    from .data.synthetic import COLORS, SHAPES, SIZES

    torch.manual_seed(cfg.seed)
    body = SynthRoIBody(cfg.widths, cfg.strides)
    heads = nn.ModuleList([nn.Linear(body.out_channels, n) for n in (len(SHAPES), len(COLORS), len(SIZES))])
    params = list(body.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    rng = random.Random(f"{cfg.scene_seed}-roi-train")
    held_out = _scenes(random.Random(f"{cfg.scene_seed}-roi-held-out"), 64)

    def accuracy():
        body.eval()
        with torch.no_grad():
            x, b, y = held_out
            f = pool_boxes(body(x)["3"], b, body.stride)
            acc = [float((h(f).argmax(-1) == y[:, i]).float().mean()) for i, h in enumerate(heads)]
        body.train()
        return dict(zip(("shape_acc", "color_acc", "size_acc"), acc))

    start = time.time()
    curve: Dict[str, float] = {f"start_{k}": v for k, v in accuracy().items()}
    body.train()
    for step in range(1, cfg.steps + 1):
        x, b, y = _scenes(rng, cfg.batch_size)
        f = pool_boxes(body(x)["3"], b, body.stride)
        loss = sum(nn.functional.cross_entropy(h(f), y[:, i]) for i, h in enumerate(heads))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps:
            log(f"vgs-pretrain-roi: step {step}/{cfg.steps} loss {loss.item():.3f} "
                + " ".join(f"{k} {v:.3f}" for k, v in accuracy().items()) + f" ({time.time() - start:.0f} s)")
    curve.update(accuracy())
    return body.eval(), curve


@console_script("vgs-pretrain-roi")
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="vgs-pretrain-roi", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    p.add_argument("--widths", type=int, nargs="+", default=list(RoIPretrainConfig.widths))
    p.add_argument("--strides", type=int, nargs="+", default=list(RoIPretrainConfig.strides))
    p.add_argument("--steps", type=int, default=RoIPretrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=RoIPretrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=RoIPretrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scene-seed", type=int, default=RoIPretrainConfig.scene_seed,
                   help="seed of the drawn training scenes (default 7; the demo's corpus uses 1)")
    a = p.parse_args(argv)
    if a.out.suffix != ".safetensors":
        raise FileProblem(a.out, "the output must end in .safetensors")
    if len(a.widths) != len(a.strides):
        raise SystemExit("vgs-pretrain-roi: error: --widths and --strides need the same length")
    cfg = RoIPretrainConfig(widths=tuple(a.widths), strides=tuple(a.strides), steps=a.steps,
                            batch_size=a.batch_size, lr=a.lr, seed=a.seed, scene_seed=a.scene_seed)
    body, curve = pretrain(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    meta = {"task": "shape / colour / size classification of RoIAlign-pooled boxes (heads dropped)",
            "config": json.dumps(asdict(cfg)), **{k: f"{v:.4f}" for k, v in curve.items()}}
    save(body, a.out, meta)
    print(json.dumps({"out": str(a.out), **curve}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
