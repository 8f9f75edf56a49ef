"""``vgs-extract-roi``: 36 RoI features per image with torchvision's Faster R-CNN.

Replaces the bottom-up-attention Caffe pipeline that FaST-VGS was trained on
(official-code.md 3.4) with ``fasterrcnn_resnet50_fpn`` in PyTorch.

Detections (default mode) follow the original selection rule: per-class NMS
(IoU 0.3) over the RPN proposals, a proposal's confidence is its best class
score among the classes where it survived NMS, proposals at or above 0.2 are
kept, and the list is cut or padded with the best remaining proposals to
``min_boxes``..``max_boxes``. With min = max = 36, as in FaST-VGS, this is the
36 most confident proposals. Boxes are the proposals themselves (as the
original took ``rois``), rows are in descending confidence.

Features (2048-d, as the base preset reads): RoIAlign on the ResNet-50 C5 map
(``backbone.body`` ``layer4``, stride 32, before the FPN), 7x7 samples per box,
sampling ratio 2, ``aligned=True``, averaged over the 7x7 grid. Why: C5 is the
only 2048-d map of this detector, it is computed once per image so no per-box
res5 pass is needed, and the average of a RoI on the last ResNet stage is what
the bottom-up ``pool5_flat`` features are too. The FPN box head's features are
1024-d and would not fit the base preset.

Given boxes (``--boxes FILE``, JSON ``{image_id: [[x1, y1, x2, y2], ...]}`` in
pixels): features are pooled at those boxes the same way; the detector heads
are not run. Rows are the given boxes in file order (``objects_conf`` 1.0),
then one whole-image box (``objects_conf`` 0.0), then zero rows with
``valid`` False, so an image with fewer boxes still has 36 rows and a model
can tell padding apart. The same fill is used when a detector finds fewer
than 36 proposals (tiny images). Extra given boxes beyond 36 are dropped.

Images of one chunk are batched only with images of the same size: the
detector pads a batch to its largest image, and the zero padding would
otherwise change the features of the smaller images.

Resuming (see ``store``): finished chunks are kept, so a killed run loses at
most one chunk. For tests, ``S3PRL_VGS_KILL_AFTER_IMAGES=N`` makes the process
SIGKILL itself after N images.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d, batched_nms, roi_align
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from ..cli import console_script
from ..data.datadir import read_scp
from ..data.image import ImageError, load_image
from ..errors import VGSError
from ..io import TextFileError, load_json
from .store import NUM_BOXES, ChunkedStoreWriter, StoreError, empty_record

CONF_THRESH = 0.2  # NOTE(original): bottom-up-attention conf_thresh
NMS_THRESH = 0.3  # NOTE(original): per-class NMS IoU of the bottom-up extraction
POOL_SIZE = 7
SAMPLING_RATIO = 2
C5_STRIDE = 32
FEAT_DIM = 2048
KILL_ENV = "S3PRL_VGS_KILL_AFTER_IMAGES"  # test hook: SIGKILL after N images, to test resuming


class WeightsError(VGSError, ValueError):
    """Detector weights that cannot be found or loaded."""


class BoxesError(VGSError, ValueError):
    """A malformed ``--boxes`` file or box; the message names the file and image."""


# --------------------------------------------------------------------------- model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _state_dict(path: Path) -> Dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-tensor payloads
        # torch's own message advises weights_only=False, which we never do.
        raise WeightsError(f"{path}: not a checkpoint that torch.load(weights_only=True) can read ({type(e).__name__})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return obj


def _default_weights_file(w: FasterRCNN_ResNet50_FPN_Weights) -> Path:
    """torchvision's weights file in the torch hub cache, downloaded if absent; its sha256 prefix checked.

    Not ``w.get_state_dict()``: that unpickles the cached file fully. We read
    it with :func:`_state_dict` (weights only) and check the hash that
    torchvision puts in the file name on every use, not only on download,
    since users are told they may place the file by hand.
    """
    from urllib.parse import urlparse

    from torch.hub import HASH_REGEX, download_url_to_file

    name = os.path.basename(urlparse(w.url).path)
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    m = HASH_REGEX.search(name)
    prefix = m.group(1) if m else None
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            download_url_to_file(w.url, str(path), hash_prefix=prefix, progress=False)
        except Exception as e:  # no network, hash mismatch (the partial download is removed)
            raise WeightsError(
                f"torchvision's default Faster R-CNN weights ({w.url}) are not available "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"put that file in {path.parent}, or pass --weights PATH with a "
                "local copy (or another torchvision fasterrcnn_resnet50_fpn checkpoint), or --weights random "
                "for a smoke test"
            ) from None
    if prefix and not _sha256(path).startswith(prefix):
        raise WeightsError(f"{path}: sha256 does not start with {prefix} as its name says; "
                           f"not the file from {w.url} (remove it to download again)")
    return path


def _load(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise WeightsError(f"{where}: does not fit fasterrcnn_resnet50_fpn ({msg[:300]})") from None


def build_detector(
    weights: Optional[str] = None,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    seed: int = 0,
    need_heads: bool = True,
) -> Tuple[FasterRCNN, str]:
    """``fasterrcnn_resnet50_fpn`` in eval mode, and a description of its weights.

    Args:
        weights: ``None`` for torchvision's default COCO weights (downloaded or
            from the torch hub cache), ``"random"`` for a seeded random model
            (tests, smoke runs), or a path to a local checkpoint: a torchvision
            Faster R-CNN state dict (any number of classes), or, when only the
            backbone is needed (``need_heads=False``), a torchvision ResNet-50
            classifier state dict.
        min_size, max_size: the detector's resize bounds (torchvision: 800, 1333).
        seed: seed of the random parts (all of them for ``"random"``).
        need_heads: False in given-boxes mode, where only ``backbone.body`` runs.

    Returns:
        ``(model, description)``; the description identifies the weights exactly
        (a sha256 for files) so that a resumed run can check it uses the same.
    """
    if weights is not None and weights != "random" and (
            weights.endswith(".safetensors") or (os.sep not in weights and weights.startswith("synth_roi"))):
        return _synth_model(weights, min_size=min_size, max_size=max_size, need_heads=need_heads)
    num_classes = 91
    state = None
    eps0 = False
    if weights is None:
        w = FasterRCNN_ResNet50_FPN_Weights.DEFAULT
        state = _state_dict(_default_weights_file(w))
        desc, kind, eps0 = f"torchvision:{w}", "detector", True
    elif weights == "random":
        desc, kind = f"random(seed={seed})", "random"
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file (give a local torchvision checkpoint, or 'random')")
        state = _state_dict(path)
        digest = _sha256(path)
        desc = f"file:sha256={digest}"
        if any(k.startswith("backbone.body.") for k in state):
            kind = "detector"
            cls = state.get("roi_heads.box_predictor.cls_score.weight")
            if cls is not None:
                num_classes = int(cls.shape[0])
            # torchvision sets FrozenBatchNorm eps to 0 for its COCO_V1 release; the
            # file name carries the first 8 hex digits of its sha256.
            tag = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.url.rsplit("-", 1)[-1].split(".")[0]
            eps0 = digest.startswith(tag)
        elif "conv1.weight" in state and "layer4.0.conv1.weight" in state:
            if need_heads:
                raise WeightsError(
                    f"{path}: a ResNet-50 classifier checkpoint has no detector heads; "
                    "use it with --boxes, or give a Faster R-CNN checkpoint"
                )
            kind = "resnet"
        else:
            raise WeightsError(f"{path}: neither a fasterrcnn_resnet50_fpn nor a resnet50 state dict")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=0
        )
        model = FasterRCNN(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size)
    if kind == "detector":
        _load(model, state, desc if weights is None else str(weights))
    elif kind == "resnet":
        _load(model.backbone.body, {k: v for k, v in state.items() if not k.startswith("fc.")}, str(weights))
    if eps0:
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.eps = 0.0
    return model.eval(), desc


class _BoxesOnlyModel(torch.nn.Module):
    """The two parts of a FasterRCNN that the given-boxes path runs (``transform`` and
    ``backbone.body``), around another backbone body; ``c5_stride`` is its map's stride."""

    def __init__(self, body: torch.nn.Module, stride: int, min_size: int, max_size: int):
        super().__init__()
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        from ..pretrain_roi import IMAGE_MEAN, IMAGE_STD

        self.transform = GeneralizedRCNNTransform(min_size, max_size, list(IMAGE_MEAN), list(IMAGE_STD))
        self.backbone = torch.nn.Module()
        self.backbone.body = body
        self.c5_stride = stride


def _synth_model(weights: str, *, min_size: int, max_size: int, need_heads: bool) -> Tuple[torch.nn.Module, str]:
    """A ``vgs-pretrain-roi`` backbone (the demo's detector stand-in); given boxes only."""
    from ..pretrain_roi import load_body
    from ..pretrain_conv import resolve

    path = resolve(weights, what="RoI backbone", prefix="synth_roi")
    if need_heads:
        raise WeightsError(f"{path}: a vgs-pretrain-roi backbone has no detector heads; use it with --boxes")
    body, _ = load_body(str(path))
    desc = f"vgs-pretrain-roi:{path.stem}:sha256={_sha256(path)}"
    return _BoxesOnlyModel(body, body.stride, min_size, max_size).eval(), desc


# --------------------------------------------------------------------------- selection and pooling


def select_detections(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    *,
    conf_thresh: float = CONF_THRESH,
    nms_thresh: float = NMS_THRESH,
    min_boxes: int = NUM_BOXES,
    max_boxes: int = NUM_BOXES,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick proposals the way the bottom-up-attention extraction did.

    Args:
        scores: (N, C) class probabilities, column 0 = background.
        boxes: (N, 4) proposal boxes x1y1x2y2.

    Returns:
        ``(index, conf, class_id)``: chosen proposals in descending confidence
        (ties keep proposal order), their post-NMS confidence and best class.
    """
    n, c = scores.shape
    fg = scores[:, 1:].float()
    conf = torch.zeros(n, dtype=torch.float32, device=scores.device)
    if n and c > 1:
        # (C-1) * N candidate (box, class) pairs, class-major; NMS within each class.
        flat_scores = fg.t().reshape(-1)
        flat_boxes = boxes.float().repeat(c - 1, 1)
        classes = torch.arange(c - 1, device=scores.device).repeat_interleave(n)
        keep = batched_nms(flat_boxes, flat_scores, classes, nms_thresh)
        conf.scatter_reduce_(0, keep % n, flat_scores[keep], reduce="amax")
    order = torch.sort(conf, descending=True, stable=True).indices
    kept = int((conf >= conf_thresh).sum())
    take = min(max(kept, min_boxes), max_boxes, n)
    index = order[:take]
    class_id = fg.argmax(dim=1)[index] + 1 if c > 1 else torch.zeros_like(index)
    return index, conf[index], class_id


def pool_c5(c5: torch.Tensor, boxes: Sequence[torch.Tensor], stride: int = C5_STRIDE) -> List[torch.Tensor]:
    """Average RoIAlign of each image's boxes on its C5 map.

    Args:
        c5: (B, 2048, H/32, W/32) ``layer4`` output (or another backbone's (B, C, H/stride, W/stride) map).
        boxes: B tensors (n_i, 4) in the coordinates of the detector's input.
        stride: input pixels per map cell.

    Returns:
        B tensors (n_i, 2048).
    """
    pooled = roi_align(
        c5,
        [b.to(c5.dtype) for b in boxes],
        output_size=POOL_SIZE,
        spatial_scale=1.0 / stride,
        sampling_ratio=SAMPLING_RATIO,
        aligned=True,
    )
    return list(pooled.mean(dim=(2, 3)).split([len(b) for b in boxes]))


def _record(
    img_id: str, h: int, w: int, feats: np.ndarray, boxes_px: np.ndarray, conf: np.ndarray, cls: np.ndarray,
    whole: Optional[np.ndarray], num_boxes: int,
) -> Dict[str, Any]:
    """Fill a fixed-size record: regions, then the whole-image row, then zero rows."""
    rec = empty_record(img_id, h, w, num_boxes, feats.shape[1])
    n = min(len(feats), num_boxes)
    scale = np.array([w, h, w, h], np.float32)
    rec["features"][:n] = feats[:n]
    rec["boxes"][:n] = np.clip(boxes_px[:n] / scale, 0.0, 1.0)
    rec["objects_conf"][:n] = conf[:n]
    rec["objects_id"][:n] = cls[:n]
    rec["valid"][:n] = True
    if n < num_boxes and whole is not None:
        rec["features"][n] = whole
        rec["boxes"][n] = (0.0, 0.0, 1.0, 1.0)
        rec["valid"][n] = True
    return rec


class RoIExtractor:
    """Images -> fixed-size RoI feature records (see the module docstring).

    Args:
        model: a torchvision Faster R-CNN (``build_detector``).
        num_boxes: rows per image (36).
        device: where the model runs.
    """

    def __init__(self, model: torch.nn.Module, *, num_boxes: int = NUM_BOXES, nms_thresh: float = NMS_THRESH,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.num_boxes = num_boxes
        self.nms_thresh = nms_thresh

    def _prepare(self, images: Sequence[torch.Tensor]):
        x = [im.to(self.device, non_blocking=True).float().div_(255.0) for im in images]
        batch, _ = self.model.transform(x)
        c5_input = self.model.backbone.body(batch.tensors)
        return batch, c5_input

    @torch.inference_mode()
    def __call__(
        self, ids: Sequence[str], images: Sequence[torch.Tensor], boxes: Optional[Sequence[np.ndarray]] = None
    ) -> List[Dict[str, Any]]:
        """One batch.

        Args:
            ids: image ids.
            images: (3, H, W) uint8 RGB tensors.
            boxes: given-boxes mode: per image (n, 4) x1y1x2y2 in pixels.
        """
        batch, body = self._prepare(images)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        # Detector coordinates = original pixels times the resize ratio per axis.
        ratios = [
            torch.tensor([rw / w, rh / h, rw / w, rh / h], device=self.device)
            for (h, w), (rh, rw) in zip(sizes, batch.image_sizes)
        ]
        whole = [torch.tensor([[0.0, 0.0, rw, rh]], device=self.device) for rh, rw in batch.image_sizes]
        if boxes is not None:
            rois_px = [torch.as_tensor(b, dtype=torch.float32, device=self.device).reshape(-1, 4)[: self.num_boxes]
                       for b in boxes]
            rois = [b * r for b, r in zip(rois_px, ratios)]
            conf = [torch.ones(len(r)) for r in rois]
            cls = [torch.full((len(r),), -1, dtype=torch.long) for r in rois]
        else:
            fpn = self.model.backbone.fpn(body)
            proposals, _ = self.model.rpn(batch, fpn)
            heads = self.model.roi_heads
            logits, _ = heads.box_predictor(heads.box_head(heads.box_roi_pool(fpn, proposals, batch.image_sizes)))
            probs = logits.softmax(-1).split([len(p) for p in proposals])
            rois, conf, cls = [], [], []
            for p, s in zip(proposals, probs):
                index, c, k = select_detections(
                    s, p, nms_thresh=self.nms_thresh, min_boxes=self.num_boxes, max_boxes=self.num_boxes
                )
                rois.append(p[index])
                conf.append(c)
                cls.append(k)
            rois_px = [r / s for r, s in zip(rois, ratios)]
        pooled = pool_c5(body["3"], [torch.cat([r, wb]) for r, wb in zip(rois, whole)],
                         getattr(self.model, "c5_stride", C5_STRIDE))
        out = []
        for i, (img_id, (h, w)) in enumerate(zip(ids, sizes)):
            feats = pooled[i].float().cpu().numpy()
            out.append(_record(
                img_id, h, w, feats[:-1], rois_px[i].cpu().numpy(), conf[i].cpu().numpy(),
                cls[i].cpu().numpy(), feats[-1], self.num_boxes,
            ))
        return out

    def run(self, ids: Sequence[str], images: Sequence[torch.Tensor], boxes: Optional[Sequence[np.ndarray]],
            batch_size: int, on_batch=None) -> List[Dict[str, Any]]:
        """Many images, batched by equal size, records returned in input order."""
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape), []).append(i)
        out: List[Optional[Dict[str, Any]]] = [None] * len(ids)
        for members in groups.values():
            for lo in range(0, len(members), batch_size):
                idx = members[lo : lo + batch_size]
                recs = self([ids[i] for i in idx], [images[i] for i in idx],
                            None if boxes is None else [boxes[i] for i in idx])
                for i, r in zip(idx, recs):
                    out[i] = r
                if on_batch is not None:
                    on_batch(len(idx))
        return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- inputs


def read_boxes(path: str | os.PathLike, ids: Sequence[str]) -> Dict[str, np.ndarray]:
    """Read a ``--boxes`` JSON file; every id of ``ids`` must have an entry."""
    path = Path(path)
    try:
        data = load_json(path)
    except TextFileError as e:
        raise BoxesError(str(e)) from None
    if not isinstance(data, dict):
        raise BoxesError(f"{path}: expected a JSON object {{image_id: [[x1, y1, x2, y2], ...]}}")
    missing = [i for i in ids if i not in data]
    if missing:
        raise BoxesError(f"{path}: no boxes for {len(missing)} image(s), e.g. {missing[:3]}")
    out = {}
    for i in ids:
        entry = data[i]
        if not isinstance(entry, list) or not all(
            isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
            for b in entry
        ):
            raise BoxesError(f"{path}: image {i!r}: expected a list of [x1, y1, x2, y2], got {str(entry)[:80]}")
        b = np.array(entry, dtype=np.float32).reshape(-1, 4)
        bad = ~np.isfinite(b).all(1) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
        if bad.any():
            raise BoxesError(f"{path}: image {i!r}: box {int(np.argmax(bad))} {b[np.argmax(bad)].tolist()} "
                             "is not x1 < x2, y1 < y2")
        out[i] = b
    return out


def _check_inside(path: Path, img_id: str, b: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boxes may touch the border (1 px slack for rounding); further out is an error."""
    out = (b[:, 0] < -1) | (b[:, 1] < -1) | (b[:, 2] > w + 1) | (b[:, 3] > h + 1)
    if out.any():
        j = int(np.argmax(out))
        raise BoxesError(f"{path}: image {img_id!r}: box {j} {b[j].tolist()} lies outside the {w}x{h} image")
    return np.clip(b, 0, [w, h, w, h]).astype(np.float32)


def _load_tensor(path: str) -> torch.Tensor:
    return pil_to_tensor(load_image(path))  # (3, H, W) uint8


def settings_for(mode: str, weights_desc: str, *, num_boxes: int, min_size: int, max_size: int, nms_thresh: float,
                 boxes_sha256: Optional[str] = None, stride: int = C5_STRIDE) -> Dict[str, Any]:
    """What the features depend on; stored in the file and checked on resume."""
    synth = weights_desc.startswith("vgs-pretrain-roi:")
    s = {
        "extractor": "vgs-pretrain-roi backbone" if synth else "torchvision fasterrcnn_resnet50_fpn",
        "mode": mode,
        "weights": weights_desc,
        "num_boxes": num_boxes,
        "min_size": min_size,
        "max_size": max_size,
        "features": f"roi_align({'body' if synth else 'layer4'}, {POOL_SIZE}x{POOL_SIZE}, scale 1/{stride}, "
                    f"sampling_ratio {SAMPLING_RATIO}, aligned) averaged",
        "fill": "regions, whole-image box, zero rows (valid=False)",
    }
    if mode == "detector":
        s.update(conf_thresh=CONF_THRESH, nms_thresh=nms_thresh)
    else:
        s["boxes_sha256"] = boxes_sha256
    return s


# --------------------------------------------------------------------------- driver


def extract_roi_features(
    images: Mapping[str, str],
    out: str | os.PathLike,
    *,
    weights: Optional[str] = None,
    boxes: Optional[str | os.PathLike] = None,
    device: Optional[str] = None,
    batch_size: int = 4,
    chunk_size: int = 64,
    num_boxes: int = NUM_BOXES,
    nms_thresh: float = NMS_THRESH,
    min_size: int = 800,
    max_size: int = 1333,
    seed: int = 0,
    num_workers: int = 4,
    nj: int = 1,
    job: int = 1,
    merge_only: bool = False,
    progress: bool = True,
    log=print,
) -> Optional[Path]:
    """Extract (or resume) this job's chunks; merge when ``nj == 1`` or ``merge_only``.

    Args:
        images: image id -> image path (an ``img.scp``).
        out: the store to write; its chunks live in ``out.parts/`` until merged.

    Returns:
        ``out`` once merged, else None (other jobs' chunks still to come).
    """
    if not images:
        raise StoreError(f"{out}: no images to extract")
    if not 1 <= job <= nj:
        raise ValueError(f"--job must be in 1..{nj}, got {job}")
    ids = sorted(images)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if merge_only:
        plan_path = out.with_name(out.name + ".parts") / "plan.json"
        if out.exists() and not plan_path.exists():
            log(f"{out}: already complete, nothing to merge")
            return out
        if not plan_path.exists():
            raise StoreError(f"{plan_path}: missing; run the extraction jobs before --merge")
        plan = load_json(plan_path)
        if not isinstance(plan, dict) or not {"chunk_size", "settings", "ids"} <= set(plan):
            raise StoreError(f"{plan_path}: not a plan written by vgs-extract-roi; remove {plan_path.parent} to start over")
        writer = ChunkedStoreWriter(out, ids, plan["chunk_size"], plan["settings"])
        if plan["ids"] != ids:
            raise StoreError(f"{plan_path}: the jobs extracted other images than {len(ids)} in this data dir")
        writer.merge(nj)
        log(f"wrote {out} ({len(ids)} images)")
        return out

    given = read_boxes(boxes, ids) if boxes is not None else None
    missing = [f"{i} ({images[i]})" for i in ids if not os.path.isfile(images[i])]
    if missing:
        raise ImageError(f"{len(missing)} missing image file(s): {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, desc = build_detector(weights, min_size=min_size, max_size=max_size, seed=seed, need_heads=given is None)
    settings = settings_for(
        "detector" if given is None else "boxes", desc, num_boxes=num_boxes, min_size=min_size, max_size=max_size,
        nms_thresh=nms_thresh, boxes_sha256=None if boxes is None else _sha256(Path(boxes)),
        stride=getattr(model, "c5_stride", C5_STRIDE),
    )
    writer = ChunkedStoreWriter(out, ids, chunk_size, settings)
    if writer.finished():
        log(f"{out}: already complete ({len(ids)} images), nothing to do")
        return out
    writer.start()
    mine = [k for k in range(writer.num_chunks) if k % nj == job - 1]
    todo = [k for k in mine if not writer.is_done(k)]
    n_todo = sum(len(writer.chunk_ids(k)) for k in todo)
    n_mine = sum(len(writer.chunk_ids(k)) for k in mine)
    log(f"{out}: job {job}/{nj}: {n_todo} of {n_mine} images to extract "
        f"({len(mine) - len(todo)} of {len(mine)} chunks already done), mode {settings['mode']}, device {device}")

    extractor = RoIExtractor(model, num_boxes=num_boxes, nms_thresh=nms_thresh, device=device)
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        bar.update(n)
        if kill_after and done >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    with ThreadPoolExecutor(max(1, num_workers)) as pool, tqdm(
        total=n_todo, unit="img", desc=f"RoI {out.name}", disable=not progress
    ) as bar:
        def submit(k):  # decode the next chunk while the model runs this one
            return [pool.submit(_load_tensor, images[i]) for i in writer.chunk_ids(k)]

        pending = submit(todo[0]) if todo else []
        for n, k in enumerate(todo):
            chunk = writer.chunk_ids(k)
            tensors = [f.result() for f in pending]
            pending = submit(todo[n + 1]) if n + 1 < len(todo) else []
            chunk_boxes = None
            if given is not None:
                chunk_boxes = [_check_inside(Path(boxes), i, given[i], int(t.shape[1]), int(t.shape[2]))
                               for i, t in zip(chunk, tensors)]
            records = extractor.run(chunk, tensors, chunk_boxes, batch_size, on_batch)
            writer.write_chunk(k, records)
    if nj == 1:
        writer.merge()
        log(f"wrote {out} ({len(ids)} images)")
        return out
    log(f"{writer.parts}: job {job}/{nj} finished; run with --merge once all jobs are done")
    return None


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vgs-extract-roi",
        description="36 Faster R-CNN RoI features (2048-d, C5 RoIAlign) per image of a data dir into an HDF5 "
                    "store, resumable; or features pooled at given boxes (--boxes).",
    )
    p.add_argument("--data", required=True, help="data dir with img.scp (image id -> image path)")
    p.add_argument("--out", required=True, help="output HDF5 store, e.g. dump/roi/train.h5")
    p.add_argument("--weights", default=None,
                   help="local torchvision fasterrcnn_resnet50_fpn checkpoint (with --boxes also a resnet50 one, "
                        "or a vgs-pretrain-roi backbone: the packaged synth_roi128 or a .safetensors path), "
                        "or 'random' for tests; default: torchvision's COCO weights (download or hub cache)")
    p.add_argument("--boxes", default=None, help="JSON {image_id: [[x1, y1, x2, y2], ...]} in pixels: pool at these "
                                                 "boxes instead of detecting")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--chunk-size", type=int, default=64, help="images per resumable chunk file (default 64)")
    p.add_argument("--num-boxes", type=int, default=NUM_BOXES, help="rows per image (default 36)")
    p.add_argument("--nms-thresh", type=float, default=NMS_THRESH, help="per-class NMS IoU (default 0.3)")
    p.add_argument("--min-size", type=int, default=800, help="detector resize: shorter side (default 800)")
    p.add_argument("--max-size", type=int, default=1333, help="detector resize: longest side cap (default 1333)")
    p.add_argument("--seed", type=int, default=0, help="seed of randomly initialised weights (default 0)")
    p.add_argument("--num-workers", type=int, default=4, help="image decoding threads (default 4)")
    p.add_argument("--nj", type=int, default=1, help="number of parallel jobs sharing the work (default 1)")
    p.add_argument("--job", type=int, default=1, help="this job's number, 1..nj (default 1)")
    p.add_argument("--merge", action="store_true", help="only merge the chunks of finished --nj jobs into --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@console_script("vgs-extract-roi")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    for name in ("batch_size", "chunk_size", "num_boxes", "min_size", "max_size", "nj"):
        if getattr(args, name) < 1:
            get_parser().error(f"--{name.replace('_', '-')} must be >= 1")
    if not 1 <= args.job <= args.nj:
        get_parser().error(f"--job must be in 1..{args.nj}")
    images = read_scp(Path(args.data) / "img.scp")
    extract_roi_features(
        images, args.out, weights=args.weights, boxes=args.boxes, device=args.device,
        batch_size=args.batch_size, chunk_size=args.chunk_size, num_boxes=args.num_boxes,
        nms_thresh=args.nms_thresh, min_size=args.min_size, max_size=args.max_size, seed=args.seed,
        num_workers=args.num_workers, nj=args.nj, job=args.job, merge_only=args.merge,
        progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr),
    )
    return 0


__all__ = [
    "BoxesError",
    "RoIExtractor",
    "WeightsError",
    "build_detector",
    "extract_roi_features",
    "main",
    "pool_c5",
    "read_boxes",
    "select_detections",
]

if __name__ == "__main__":
    sys.exit(main())
