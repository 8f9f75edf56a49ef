"""Pictures of a trained model (recipe stage 6 writes them under ``exp/<tag>/plots``).

* :func:`plot_training_curves`: the per-epoch statistics of ESPnet's
  ``train.log`` ("Nepoch results" lines): losses (train and valid) and the
  validation retrieval statistics, against epochs with the elapsed training
  minutes on the top axis. ESPnet's own per-statistic plots
  (``use_matplotlib: true``: ``exp/<tag>/images/*.png``) and TensorBoard logs
  (``use_tensorboard: true``: ``exp/<tag>/tensorboard``) are written by the
  trainer itself; this is the one-figure summary.
* :func:`plot_retrieval_grid`: for a few test captions, the transcript and the
  top-k images that :func:`s3prl_vgs.search.search_images` returns (the model's
  own ranking, coarse-to-fine for FaST-VGS), the right image framed in green;
  when it is not among them it is shown at the end, framed in red.
* :func:`plot_mim`: for speech-guided MIM, per test pair: the image, the masked
  image the encoder sees, the momentum encoder's target features and the
  decoder's prediction (both per patch, projected to RGB with one PCA fitted on
  the two together, so equal colours mean similar features), and the per-patch
  cosine similarity of prediction and target, on the masked patches (those the
  loss scores).

``vgs-plots --exp EXP --data DATA [--roi STORE]`` writes all that apply.
PNG files are written atomically (a temporary sibling, then a rename).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .cli import console_script
from .errors import VGSError

_EPOCH_RE = re.compile(r"(\d+)epoch results: (.*)$")
_KV_RE = re.compile(r"([A-Za-z_][\w@.]*)=([-+0-9.eE]+|nan|inf)(?=,|$)")
_TIME_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0, "millisecond": 1e-3}


class PlotError(VGSError, ValueError):
    """Input a picture cannot be drawn from; the message names the file."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | os.PathLike, dpi: int = 110) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, out)
    finally:
        _pyplot().close(fig)
        if tmp.exists():
            tmp.unlink()
    return out


# ----------------------------------------------------------------------------- training curves


def _seconds(text: str) -> float:
    """humanfriendly's ``format_timespan`` ("1 minute and 2.5 seconds") back to seconds."""
    total = 0.0
    for num, unit in re.findall(r"([0-9.]+)\s*(millisecond|second|minute|hour|day)s?", text):
        total += float(num) * _TIME_UNITS[unit]
    return total


def parse_train_log(path: str | os.PathLike) -> Dict[str, Dict[int, Dict[str, float]]]:
    """``{"train": {epoch: {stat: value}}, "valid": {...}}`` from ESPnet's "Nepoch results" lines.

    ``time`` (the phase's wall time, in seconds) is parsed from ESPnet's
    human-readable form. A resumed run's log starts at its first new epoch.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise PlotError(f"{path}: unreadable ({e.strerror or type(e).__name__})") from None
    stats: Dict[str, Dict[int, Dict[str, float]]] = {"train": {}, "valid": {}}
    for line in lines:
        m = _EPOCH_RE.search(line)
        if not m:
            continue
        epoch = int(m.group(1))
        for phase, body in re.findall(r"\[(train|valid)\] (.*?)(?=, \[(?:train|valid|att_plot)\]|$)", m.group(2)):
            values = {k: float(v) for k, v in _KV_RE.findall(body.replace(", ", ","))}
            t = re.search(r"(?:^|,\s*)time=([^,]*)", body)
            if t:
                values["time"] = _seconds(t.group(1))
            stats[phase][epoch] = values
    if not stats["train"]:
        raise PlotError(f"{path}: no 'Nepoch results' lines (did training finish an epoch?)")
    return stats


def _is_loss(key: str) -> bool:
    return key == "loss" or key.endswith("_loss")


def _is_retrieval(key: str) -> bool:
    k = key.lower()
    return any(s in k for s in ("r1", "r5", "r10", "r@", "recall"))


def plot_training_curves(train_log: str | os.PathLike, out: str | os.PathLike, title: Optional[str] = None) -> Path:
    """Losses and validation retrieval statistics per epoch (see the module docstring)."""
    stats = parse_train_log(train_log)
    plt = _pyplot()
    train, valid = stats["train"], stats["valid"]
    epochs = sorted(train)
    loss_keys = sorted({k for e in epochs for k in train[e] if _is_loss(k)}, key=lambda k: (k != "loss", k))
    ret_keys = sorted({k for e in valid for k in valid[e] if _is_retrieval(k)})
    if any("batch_" not in k for k in ret_keys):  # whole-split recall (percent) beats in-batch fractions
        ret_keys = [k for k in ret_keys if "batch_" not in k]  # batch_r1_*, fine_batch_r1_*
    panels = 2 if ret_keys else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 4.0), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax = axes[0, 0]
    for i, key in enumerate(loss_keys):
        c = colors[i % len(colors)]
        ax.plot(epochs, [train[e].get(key, np.nan) for e in epochs], "-o", color=c, ms=3, label=f"train {key}")
        ve = [e for e in sorted(valid) if key in valid[e]]
        if ve:
            ax.plot(ve, [valid[e][key] for e in ve], "--s", color=c, ms=3, label=f"valid {key}")
    ax.set(xlabel="epoch", ylabel="loss", title="losses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if ret_keys:
        ax = axes[0, 1]
        for i, key in enumerate(ret_keys):
            ve = [e for e in sorted(valid) if key in valid[e]]
            ax.plot(ve, [valid[e][key] for e in ve], "-o", ms=3, color=colors[i % len(colors)], label=key)
        ax.set(xlabel="epoch", ylabel="value", title="validation retrieval")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    # Elapsed training minutes (train + valid wall time of each epoch) on a top axis.
    minutes = np.cumsum([train[e].get("time", 0.0) + valid.get(e, {}).get("time", 0.0) for e in epochs]) / 60.0
    if minutes[-1] > 0:
        for a in axes[0]:
            top = a.secondary_xaxis("top", functions=(lambda x: np.interp(x, epochs, minutes),
                                                      lambda m: np.interp(m, minutes, epochs)))
            top.set_xlabel("training minutes (wall)", fontsize=8)
            top.tick_params(labelsize=7)
    fig.suptitle(title or f"training curves: {Path(train_log).parent.name}", y=1.1)
    return _save(fig, out)


# ----------------------------------------------------------------------------- retrieval grid


def _pick_captions(data, n: int) -> List[str]:
    """The first caption of each of the first ``n`` images (sorted ids): ``n`` captions of distinct images."""
    first: Dict[str, str] = {}
    for utt in data.utts:
        first.setdefault(data.utt2img[utt], utt)
    return [first[img] for img in sorted(first)[:n]]


def plot_retrieval_grid(model, data_dir: str | os.PathLike, out: str | os.PathLike, *, roi=None, roi_options=None,
                        n_queries: int = 4, k: int = 5, device: str = "cpu", utts: Optional[Sequence[str]] = None):
    """Top-k images for a few captions of ``data_dir`` (see the module docstring).

    The gallery is every image that a caption of ``data_dir`` describes (as in
    ``vgs-evaluate``). Returns ``(png path, SearchResult)``.
    """
    from .data.datadir import DataDir
    from .data.image import load_image
    from .search import Searcher

    data = DataDir.read(data_dir)
    lacking = [u for u in data.utts if u not in data.utt2img]
    if lacking:
        raise PlotError(f"{Path(data_dir) / 'utt2img'}: no image for utterance {lacking[0]!r}")
    utts = list(utts) if utts is not None else _pick_captions(data, n_queries)
    gallery_ids = sorted({data.utt2img[u] for u in data.utts})
    missing = [i for i in gallery_ids if i not in data.img]
    if missing:
        raise PlotError(f"{Path(data_dir) / 'img.scp'}: image id {missing[0]!r} (used in utt2img) is not listed")
    searcher = Searcher(model, device=device, roi=roi, roi_options=roi_options)
    result = searcher.images_for({u: data.wav[u] for u in utts}, {i: data.img[i] for i in gallery_ids}, k)

    plt = _pyplot()
    k = min(k, result.gallery_size)
    cols = k + 1  # the top k, then the right image when it is not among them
    fig, axes = plt.subplots(len(utts), cols, figsize=(1.9 * cols, 2.35 * len(utts)), squeeze=False)
    for row, q in enumerate(result.queries):
        right = data.utt2img[q.id]
        found = any(h.id == right for h in q.hits)
        for col in range(cols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if col < len(q.hits):
                h = q.hits[col]
                ok = h.id == right
                ax.imshow(load_image(h.path))
                ax.set_title(f"#{h.rank}  {h.score:.3g}" + ("  right" if ok else ""), fontsize=8,
                             color="green" if ok else "black", fontweight="bold" if ok else "normal")
                _frame(ax, "green" if ok else "0.75", 5 if ok else 1)
            elif col == k and not found:
                ax.imshow(load_image(data.img[right]))
                ax.set_title(f"right image: not in top {k}", fontsize=8, color="red")
                _frame(ax, "red", 4)
            else:
                ax.axis("off")
        text = data.text.get(q.id, q.id)
        axes[row, 0].set_ylabel("\n".join(textwrap.wrap(f'"{text}"', 26)), fontsize=8, rotation=0, ha="right",
                                va="center", labelpad=8)
    fig.suptitle(f"{result.model_name}: top {k} of {result.gallery_size} images per spoken caption "
                 f"({result.method.replace('_', '-')})", fontsize=10)
    fig.tight_layout()
    return _save(fig, out), result


def _frame(ax, color, width) -> None:
    for s in ax.spines.values():
        s.set_visible(True)
        s.set_color(color)
        s.set_linewidth(width)


# ----------------------------------------------------------------------------- MIM


def _pca_rgb(pred: np.ndarray, target: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(B, N, D) x 2 -> (B, N, 3) x 2 in [0, 1]: one 3-component PCA fitted on both, so colours are comparable."""
    both = np.concatenate([target.reshape(-1, target.shape[-1]), pred.reshape(-1, pred.shape[-1])])
    mean = both.mean(0)
    _, _, vt = np.linalg.svd(both - mean, full_matrices=False)
    proj = (both - mean) @ vt[:3].T
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-8), 0, 1)
    n = target.shape[0] * target.shape[1]
    return rgb[n:].reshape(pred.shape[:2] + (3,)), rgb[:n].reshape(target.shape[:2] + (3,))


def _unnormalize(x: torch.Tensor) -> np.ndarray:
    from .modules.image_transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


@torch.inference_mode()
def mim_outputs(model, data_dir: str | os.PathLike, n: int = 4, seed: int = 0, device: str = "cpu"):
    """The training forward's MIM outputs for ``n`` captions of distinct images of ``data_dir``.

    Runs the model's own training forward in eval mode (no dropout; forward
    changes no state) with the MIM term on (weight 1) and seeded masking noise.
    Returns ``(utts, images (B, 3, H, W) normalised, output)``; ``output`` has
    ``patch_mask`` (B, N), ``pred`` and ``target`` (B, N, D).
    """
    from .checkpoint import load_model
    from .data.audio import load_audio
    from .data.datadir import DataDir
    from .data.image import load_image

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, map_location=device)
    model = model.to(device).eval()
    if getattr(model.config, "mim", "none") == "none":
        raise PlotError(f"{model.model_name} model with mim 'none' (VG-HuBERT): it has no masked-image branch to show")
    data = DataDir.read(data_dir)
    utts = _pick_captions(data, n)
    wavs = [load_audio(data.wav[u], resample=False) for u in utts]
    lens = torch.tensor([w.numel() for w in wavs])
    x = torch.zeros(len(wavs), int(lens.max()))
    for i, w in enumerate(wavs):
        x[i, :w.numel()] = w
    transform = model.image_transform(train=False)
    images = torch.stack([transform(load_image(data.img[data.utt2img[u]])) for u in utts])
    n_patches = model.image_encoder.embed_patches(images[:1].to(device)).size(1)
    noise = torch.rand(len(utts), n_patches, generator=torch.Generator().manual_seed(seed)).to(device)
    out = model(x.to(device), lens.to(device), images.to(device), mim_weight=1.0, noise=noise)
    return utts, images, out


def plot_mim(model, data_dir: str | os.PathLike, out: str | os.PathLike, *, n: int = 4, seed: int = 0,
             device: str = "cpu") -> Path:
    """Masked image, target and prediction of speech-guided MIM (see the module docstring)."""
    from .data.datadir import DataDir

    utts, images, o = mim_outputs(model, data_dir, n, seed, device)
    mask = o.patch_mask.float().cpu().numpy()  # (B, N) 1 = masked
    pred, target = o.pred.float().cpu().numpy(), o.target.float().cpu().numpy()
    B, N = mask.shape
    g = int(round(N ** 0.5))
    if g * g != N:
        raise PlotError(f"{N} patches are not a square grid; cannot draw them")
    pred_rgb, target_rgb = _pca_rgb(pred, target)
    cos = (pred * target).sum(-1) / np.maximum(np.linalg.norm(pred, axis=-1) * np.linalg.norm(target, axis=-1), 1e-8)
    text = DataDir.read(data_dir).text

    plt = _pyplot()
    titles = ["image", "masked input", "target (PCA)", "prediction (PCA)", "cosine(pred, target)"]
    fig, axes = plt.subplots(B, 5, figsize=(10.5, 2.3 * B + 0.6), squeeze=False)
    for b in range(B):
        img = _unnormalize(images[b])
        H = img.shape[0]
        p = H // g
        patch_mask = np.kron(mask[b].reshape(g, g), np.ones((p, p)))[..., None]
        masked = img * (1 - patch_mask) + 0.5 * patch_mask  # masked patches grey
        cmap = np.where(mask[b] > 0, cos[b], np.nan).reshape(g, g)
        panels = [img, masked, target_rgb[b].reshape(g, g, 3), pred_rgb[b].reshape(g, g, 3), cmap]
        for c, (ax, im) in enumerate(zip(axes[b], panels)):
            if c == 4:
                shown = ax.imshow(im, cmap="RdYlGn", vmin=-1, vmax=1, interpolation="nearest")
            else:
                ax.imshow(im, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if b == 0:
                ax.set_title(titles[c], fontsize=9)
        m = float(np.nanmean(cmap)) if np.isfinite(cmap).any() else float("nan")
        axes[b, 4].set_xlabel(f"mean over masked {m:.2f}", fontsize=7)
        axes[b, 0].set_ylabel("\n".join(textwrap.wrap(f'"{text.get(utts[b], utts[b])}"', 22)), fontsize=7,
                              rotation=0, ha="right", va="center", labelpad=8)
    fig.colorbar(shown, ax=axes[:, 4].tolist(), fraction=0.05, shrink=0.8)
    loss = o.losses.get("mim") if hasattr(o, "losses") else None
    fig.suptitle(f"speech-guided MIM: {int(mask[0].sum())} of {N} patches masked"
                 + (f", MIM loss {float(loss):.3f}" if loss is not None else ""), fontsize=10)
    return _save(fig, out)


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vgs-plots", description="Pictures of a trained model: training curves "
                                "(from EXP/train.log), a retrieval example grid and, for speech-guided MIM, the "
                                "masked image, its target and the prediction.")
    p.add_argument("--exp", required=True, help="experiment dir (train.log; the model in EXP/upstream)")
    p.add_argument("--model", help="model dir (default EXP/upstream)")
    p.add_argument("--data", help="data dir whose captions and images the example pictures use (e.g. data/test)")
    p.add_argument("--roi", help="RoI feature store of --data's images (FaST-VGS)")
    p.add_argument("--out", help="output folder (default EXP/plots)")
    p.add_argument("--n", type=int, default=4, help="example captions per picture (default 4)")
    p.add_argument("--k", type=int, default=5, help="images per caption in the grid (default 5)")
    p.add_argument("--device", default="cpu")
    return p


@console_script("vgs-plots")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(None if argv is None else list(argv))
    from .checkpoint import load_model

    exp = Path(args.exp)
    out = Path(args.out) if args.out else exp / "plots"
    name = Path(args.data).name if args.data else None
    written = []
    log = exp / "train.log"
    if log.is_file():
        written.append(plot_training_curves(log, out / "training_curves.png", title=f"training curves: {exp.name}"))
    if args.data:
        model = load_model(args.model or exp / "upstream", map_location=args.device)
        png, _ = plot_retrieval_grid(model, args.data, out / f"retrieval_{name}.png", roi=args.roi, n_queries=args.n,
                                     k=args.k, device=args.device)
        written.append(png)
        if model.model_name == "vg_mim" and model.config.mim != "none":
            written.append(plot_mim(model, args.data, out / f"mim_{name}.png", n=args.n, device=args.device))
    if not written:
        raise PlotError(f"{exp}: nothing to draw (no train.log, and no --data)")
    for p in written:
        print(f"wrote {p}", file=sys.stderr)
    return 0


__all__ = ["PlotError", "parse_train_log", "plot_training_curves", "plot_retrieval_grid", "mim_outputs", "plot_mim",
           "main"]

if __name__ == "__main__":
    sys.exit(main())
