"""``vgs-search``: the images a spoken query describes, or the spoken captions of an image, with a trained model.

For a user's own files, not a data dir with ground truth (that is ``vgs-evaluate``):

* images for speech (A2I): ``vgs-search --model DIR --images DIR_OR_SCP --query A.wav [B.wav ...]``;
* speech for an image (I2A): ``vgs-search --model DIR --captions DIR_OR_SCP --query-image X.jpg [...]``.

A gallery or query list is a directory (its ``img.scp`` / ``wav.scp`` when it is
a data dir, else every image / audio file below it, ids = relative paths
without the extension), an ``id path`` list (an scp), a plain list of paths one
a line, or the files themselves.

The image side is read as the model's ``input_spec`` says:

* ``"pixels"`` (speech-guided MIM, VG-HuBERT): image files through the model's
  evaluation transform;
* ``"roi"`` (FaST-VGS): RoI features from an HDF5 store (``--roi``, e.g. the
  recipe's ``dump/roi/<set>.h5``), or extracted on the fly with the project's
  own extractor (:func:`s3prl_vgs.features.extract.extract_roi_features`) and
  the options the model's features were made with (``--roi-weights``,
  ``--boxes``, ``--min-size``, ``--max-size``): features of another extractor
  setting are another input distribution.

Ranking: coarse dot products for every model; models with a fine scorer
(FaST-VGS) re-rank the top ``--k-coarse`` coarse candidates by fine score
through :func:`s3prl_vgs.retrieval.coarse_to_fine`, the one coarse-to-fine
entry that ``vgs-evaluate`` uses too. Scores are the model's own: fine scores
after re-ranking, else coarse inner products.

Output: a table per query on stdout; ``--out FILE.json`` (written atomically)
or ``--json`` (to stdout) for programs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .cli import console_script
from .io import atomic_write_text, read_text
from .data.audio import SAMPLE_RATE, AudioError, audio_info, load_audio
from .data.image import load_image
from .errors import VGSError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_EXTS = (".wav", ".flac", ".ogg")  # what soundfile reads
A2I, I2A = "audio_to_image", "image_to_audio"

PathLike = Union[str, os.PathLike]
Items = Union[PathLike, Sequence[PathLike], Mapping[str, PathLike]]


class SearchError(VGSError, ValueError):
    """Bad input to a search (empty or unreadable lists, model/feature mismatch); the message names the file."""


@dataclass
class RoIOptions:
    """How RoI features are extracted when no store is given (``"roi"`` models; see ``vgs-extract-roi``).

    Use the settings the model's training features were made with; the
    synthetic recipe's are ``RoIOptions(weights="random", boxes="corpus/boxes.json",
    min_size=224, max_size=224)``.
    """

    weights: Optional[str] = None  # None: torchvision's COCO weights; "random" (seeded); or a local checkpoint
    boxes: Optional[str] = None  # JSON {image_id: [[x1, y1, x2, y2], ...]}: pool at these boxes, no detector heads
    min_size: int = 800
    max_size: int = 1333
    seed: int = 0
    batch_size: int = 4


# ----------------------------------------------------------------------------- item lists


def _id_of(path: Path, root: Optional[Path]) -> str:
    rel = path.relative_to(root) if root is not None else Path(path.name)
    return rel.with_suffix("").as_posix()


def read_items(spec: Items, exts: Sequence[str], what: str, scp_name: str) -> Dict[str, str]:
    """``{id: path}`` (insertion-ordered) from a directory, a list file, file paths or a mapping.

    Args:
        spec: a mapping id -> path (taken as is); a directory (its ``scp_name``
            if present, else every file with an extension in ``exts`` below it,
            sorted); a file whose extension is in ``exts`` (one item); any other
            file: lines ``id path`` or ``path`` (blank lines and ``#`` comments
            skipped; relative paths are relative to the list's folder); or a
            sequence of any of these.
        what: "image" / "audio", for messages.
    """
    if isinstance(spec, Mapping):
        items = {str(k): str(v) for k, v in spec.items()}
        if not items:
            raise SearchError(f"no {what} files given (empty mapping)")
        return items
    if isinstance(spec, (str, os.PathLike)):
        specs = [spec]
    else:
        specs = list(spec)
        if not specs:
            raise SearchError(f"no {what} files given (empty list)")
    items: Dict[str, str] = {}
    for s in specs:
        for key, path in _read_one(Path(s), exts, what, scp_name).items():
            if key in items and items[key] != path:
                key = path  # two files of the same name in different folders: the path is unique
            items[key] = path
    return items


def _read_one(p: Path, exts: Sequence[str], what: str, scp_name: str) -> Dict[str, str]:
    if p.is_dir():
        if (p / scp_name).is_file():
            return _read_list(p / scp_name, what)
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts)
        if not files:
            raise SearchError(f"{p}: no {what} files in this folder (looked for {', '.join(exts)} and {scp_name})")
        return {_id_of(f, p): str(f) for f in files}
    if not p.exists():
        raise SearchError(f"{p}: no such file or folder")
    if p.suffix.lower() in exts:
        return {_id_of(p, None): str(p)}
    return _read_list(p, what)


def _read_list(p: Path, what: str) -> Dict[str, str]:
    from .io import TextFileError

    try:
        text = read_text(p)
    except TextFileError as e:
        if "UTF-8" not in str(e):
            raise
        raise SearchError(f"{p}: not a text list of {what} files (id path, or path, per line), nor a known "
                          f"{what} file type") from None
    items: Dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        key, path = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
        if path.endswith("|"):
            raise SearchError(f"{p}:{n}: a piped command, not a file; lists must name files")
        if not os.path.isabs(path) and not os.path.exists(path):
            path = str(p.parent / path)  # relative to the list, unless it resolves from here (Kaldi style)
        key = key if key is not None else _id_of(Path(path), None)
        if key in items:
            raise SearchError(f"{p}:{n}: duplicate id {key!r}")
        items[key] = path
    if not items:
        raise SearchError(f"{p}: an empty list (no {what} files)")
    return items


# ----------------------------------------------------------------------------- encoding


def _cat_rows(outs: List[Any], order: List[int], tokens: bool) -> Any:
    """Encoder outputs of batches -> one output in item order; token fields padded to the widest batch.

    Only the coarse vectors are kept unless ``tokens`` (what the fine scorer reads).
    """
    names = type(outs[0]).RETRIEVAL_FIELDS
    fields = [f for f in names if getattr(outs[0], f) is not None and (tokens or f == "coarse")]
    merged = {}
    for f in fields:
        parts = [getattr(o, f) for o in outs]
        if parts[0].dim() >= 2 and f != "coarse":
            width = max(x.size(1) for x in parts)
            pad_value = True if parts[0].dtype == torch.bool else 0  # masks: True at pad
            parts = [torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, width - x.size(1)), value=pad_value)
                     for x in parts]
        merged[f] = torch.cat(parts)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return type(outs[0])(**{f: merged[f][inverse.to(merged[f].device)] if f in merged else None for f in names})


class Searcher:
    """A model and its encoders for files on disk.

    Args:
        model: a model directory or a loaded model.
        device: ``cpu``, ``cuda``, ...
        roi: ``"roi"`` models: an RoI feature store (path or ``RoIFeatureStore``)
            holding every gallery image id; None extracts features with ``roi_options``.
        roi_options: :class:`RoIOptions` for on-the-fly extraction.
        k_coarse: coarse candidates per query that the fine scorer re-ranks.
        coarse_only: rank by coarse scores even when the model has a fine scorer.
        batch_size: files per encoder call.
        resample: resample audio that is not 16 kHz (default: refuse it, naming the file).
        progress: tqdm bars on stderr.
    """

    def __init__(self, model, device: str | torch.device = "cpu", roi=None, roi_options: Optional[RoIOptions] = None,
                 k_coarse: int = 100, coarse_only: bool = False, batch_size: int = 8, resample: bool = False,
                 progress: bool = False):
        from .checkpoint import load_model

        if k_coarse < 1 or batch_size < 1:
            raise SearchError("k_coarse and batch_size must be >= 1")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SearchError(f"device {self.device} asked for, but CUDA is not available here")
        self.model_path = str(model) if isinstance(model, (str, os.PathLike)) else None
        self.model = (load_model(model, map_location=self.device) if self.model_path else model.to(self.device)).eval()
        self.spec = self.model.input_spec
        self.roi, self.roi_options = roi, roi_options or RoIOptions()
        if roi is not None and self.spec.image_input != "roi":
            raise SearchError(f"{self.model_path or 'the model'}: a {self.model.model_name} model reads image files; "
                              f"--roi {roi} is for RoI-feature models (FaST-VGS) only")
        self.k_coarse, self.batch_size, self.resample, self.progress = k_coarse, batch_size, resample, progress
        self.fine = self.spec.has_fine_scores and not coarse_only

    @property
    def method(self) -> str:
        return f"coarse_to_fine(k_coarse={self.k_coarse})" if self.fine else "coarse"

    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="file", leave=False, file=sys.stderr, disable=not self.progress)

    # -- audio

    def _check_audio(self, path: str) -> int:
        sr, _, frames = audio_info(path)
        if sr != SAMPLE_RATE and not self.resample:
            raise AudioError(path, f"sample rate {sr} Hz, expected {SAMPLE_RATE} Hz (convert it, e.g. "
                                   f"`sox IN -r 16000 -c 1 OUT.wav`, or pass --resample)")
        n = int(math.ceil(frames * SAMPLE_RATE / sr))
        if n < self.spec.min_audio_samples:
            raise AudioError(path, f"too short: {n} samples at 16 kHz, the model needs at least "
                                   f"{self.spec.min_audio_samples}")
        return n

    @torch.inference_mode()
    def encode_audio(self, paths: Sequence[str]):
        """Every file once (longest first, batched): one output, rows in ``paths`` order."""
        lengths = [self._check_audio(p) for p in paths]  # every file's header before any encoding
        order = sorted(range(len(paths)), key=lambda i: (-lengths[i], i))
        outs, bar = [], self._bar(len(paths), "encode audio")
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            wavs = [load_audio(paths[i], resample=self.resample) for i in idx]
            lens = torch.tensor([w.numel() for w in wavs])
            x = torch.zeros(len(wavs), int(lens.max()))
            for r, w in enumerate(wavs):
                x[r, :w.numel()] = w
            outs.append(self.model.encode_audio(x.to(self.device), lens.to(self.device))[:])
            bar.update(len(idx))
        bar.close()
        return _cat_rows(outs, order, self.fine)

    # -- images

    def _roi_rows(self, images: Dict[str, str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, R, F) features and (N, R, 4) boxes of every gallery image, from the store or extracted now."""
        from .features.store import RoIFeatureStore

        ids = list(images)
        if self.roi is not None:
            return self._read_store(self.roi if isinstance(self.roi, RoIFeatureStore) else RoIFeatureStore(self.roi), ids)
        for i, p in images.items():
            load_image(p)  # one-line error naming the file before the detector is built
        from .features.extract import extract_roi_features

        o = self.roi_options
        with tempfile.TemporaryDirectory(prefix="vgs-search-roi.") as tmp:
            out = Path(tmp) / "roi.h5"
            extract_roi_features(images, out, weights=o.weights, boxes=o.boxes, device=str(self.device),
                                 batch_size=o.batch_size, min_size=o.min_size, max_size=o.max_size, seed=o.seed,
                                 num_workers=1, progress=self.progress, log=lambda *a, **k: None)
            with RoIFeatureStore(out) as store:
                return self._read_store(store, ids)

    def _read_store(self, store, ids: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        spec = self.spec
        if store.feat_dim != spec.roi_feat_dim:
            raise SearchError(f"{store.path}: RoI features are {store.feat_dim}-d, the model reads "
                              f"{spec.roi_feat_dim}-d; features and model do not match")
        missing = store.missing(ids)
        if missing:
            raise SearchError(f"{store.path}: image id {missing[0]!r} is not in this store ({len(missing)} of "
                              f"{len(ids)} gallery images missing; ids are the keys of the image list)")
        keep = spec.max_rois  # rows are by descending detector confidence; the model keeps the first ones
        feats = torch.stack([torch.from_numpy(store[i]["features"][:keep]) for i in ids])
        boxes = torch.stack([torch.from_numpy(store[i]["boxes"][:keep]) for i in ids])
        return feats, boxes

    @torch.inference_mode()
    def encode_images(self, images: Dict[str, str]):
        """Every image of ``{id: path}`` once: one output, rows in the mapping's order."""
        outs, n = [], len(images)
        if self.spec.image_input == "roi":
            feats, boxes = self._roi_rows(images)
            for s in range(0, n, self.batch_size):
                outs.append(self.model.encode_image(feats=feats[s:s + self.batch_size].to(self.device),
                                                    boxes=boxes[s:s + self.batch_size].to(self.device))[:])
        else:
            transform = self.model.image_transform(train=False)
            paths = list(images.values())
            for p in paths:
                load_image(p)  # every file checked before the first batch
            bar = self._bar(n, "encode images")
            for s in range(0, n, self.batch_size):
                x = torch.stack([transform(load_image(p)) for p in paths[s:s + self.batch_size]])
                outs.append(self.model.encode_image(images=x.to(self.device))[:])
                bar.update(x.size(0))
            bar.close()
        return _cat_rows(outs, list(range(n)), self.fine)

    # -- ranking

    @torch.inference_mode()
    def rank(self, audio, image, direction: str, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-k ``(indices (Q, k), scores (Q, k))`` of the gallery for each query, best first.

        ``direction`` A2I: queries are the audio rows; I2A: the image rows.
        """
        from .retrieval import CoarseIndex, coarse_to_fine

        if direction not in (A2I, I2A):
            raise ValueError(f"direction must be {A2I!r} or {I2A!r}")
        queries, gallery = (audio, image) if direction == A2I else (image, audio)
        k = min(k, len(gallery))
        if not self.fine:
            scores, idx = CoarseIndex(gallery.coarse).search(queries.coarse, k)
            return idx, scores
        # coarse_to_fine ranks both directions; only the pairs of the asked one are sent to the fine
        # scorer (the rest score -inf and are dropped), so a search costs Q x k_coarse pairs, not Q x N.
        _, cand = CoarseIndex(gallery.coarse).search(queries.coarse, self.k_coarse)  # what coarse_to_fine finds
        q = torch.arange(cand.size(0), device=cand.device)[:, None].expand_as(cand)
        Ni = len(image)
        wanted = (q * Ni + cand if direction == A2I else cand * Ni + q).reshape(-1).sort().values

        def fine_fn(pairs: torch.Tensor) -> torch.Tensor:
            key = pairs[:, 0] * Ni + pairs[:, 1]
            pos = torch.searchsorted(wanted, key).clamp(max=wanted.numel() - 1)
            ask = wanted[pos] == key
            out = torch.full((pairs.size(0),), float("-inf"), device=pairs.device)
            if ask.any():
                out[ask] = self.model.fine_scores(audio, image, pairs[ask]).float()
            return out

        res = coarse_to_fine(audio.coarse, image.coarse, fine_fn, k_coarse=self.k_coarse, keep=k)
        return (res.a2i, res.a2i_scores) if direction == A2I else (res.i2a, res.i2a_scores)

    # -- searches

    def images_for(self, queries: Items, images: Items, k: int = 5) -> "SearchResult":
        """The top-k gallery images for each spoken query."""
        qs = read_items(queries, AUDIO_EXTS, "audio", "wav.scp")
        gallery = read_items(images, IMAGE_EXTS, "image", "img.scp")
        image = self.encode_images(gallery)  # images first: their errors come before the slower audio pass
        audio = self.encode_audio(list(qs.values()))
        idx, scores = self.rank(audio, image, A2I, k)
        return self._result(A2I, qs, gallery, idx, scores, k)

    def captions_for(self, queries: Items, captions: Items, k: int = 5) -> "SearchResult":
        """The top-k spoken captions for each query image."""
        qs = read_items(queries, IMAGE_EXTS, "image", "img.scp")
        gallery = read_items(captions, AUDIO_EXTS, "audio", "wav.scp")
        image = self.encode_images(qs)
        audio = self.encode_audio(list(gallery.values()))
        idx, scores = self.rank(audio, image, I2A, k)
        return self._result(I2A, qs, gallery, idx, scores, k)

    def _result(self, direction, qs, gallery, idx, scores, k) -> "SearchResult":
        g_ids, g_paths = list(gallery), list(gallery.values())
        results = []
        for (qid, qpath), row, vals in zip(qs.items(), idx.tolist(), scores.tolist()):
            hits = [Hit(rank=r + 1, id=g_ids[j], path=g_paths[j], score=float(v))
                    for r, (j, v) in enumerate((j, v) for j, v in zip(row, vals) if j >= 0)]
            results.append(QueryResult(id=qid, path=qpath, hits=hits))
        return SearchResult(direction=direction, model=self.model_path, model_name=self.model.model_name,
                            method=self.method, k=k, gallery_size=len(gallery), queries=results)


# ----------------------------------------------------------------------------- results


@dataclass
class Hit:
    rank: int  # 1-based
    id: str
    path: str
    score: float


@dataclass
class QueryResult:
    id: str
    path: str
    hits: List[Hit] = field(default_factory=list)


@dataclass
class SearchResult:
    direction: str  # audio_to_image | image_to_audio
    model: Optional[str]
    model_name: str
    method: str  # coarse | coarse_to_fine(k_coarse=K)
    k: int
    gallery_size: int
    queries: List[QueryResult]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def top1(self) -> Dict[str, Optional[str]]:
        """``{query id: best gallery id}``."""
        return {q.id: (q.hits[0].id if q.hits else None) for q in self.queries}

    def table(self) -> str:
        """One small table per query, as a person reads it."""
        gallery = "image" if self.direction == A2I else "caption"
        head = (f"{self.model_name} ({self.model or 'in memory'}), {self.method}, "
                f"top {self.k} of {self.gallery_size} {gallery}s")
        lines = [head]
        for q in self.queries:
            lines += ["", f"query {q.id} ({q.path})"]
            width = max([len(gallery)] + [len(h.id) for h in q.hits])
            lines.append(f"  {'rank':>4}  {'score':>10}  {gallery:<{width}}  path")
            lines += [f"  {h.rank:>4}  {h.score:>10.4f}  {h.id:<{width}}  {h.path}" for h in q.hits]
        return "\n".join(lines) + "\n"


def search_images(model, queries: Items, images: Items, k: int = 5, **options) -> SearchResult:
    """The top-k images of ``images`` for each spoken query (wav paths, a folder or a list).

    ``options`` are :class:`Searcher`'s (``roi``, ``roi_options``, ``k_coarse``, ``device``, ...).

    Example:
        >>> r = search_images("exp/fast_vgs_tiny/upstream", ["dog.wav"], "data/test", roi="dump/roi/test.h5")
        >>> r.queries[0].hits[0].id
    """
    return Searcher(model, **options).images_for(queries, images, k)


def search_captions(model, queries: Items, captions: Items, k: int = 5, **options) -> SearchResult:
    """The top-k spoken captions of ``captions`` for each query image."""
    return Searcher(model, **options).captions_for(queries, captions, k)


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vgs-search",
        description="Search your own files with a trained model: the images a spoken query describes "
                    "(--images + --query), or the spoken captions of an image (--captions + --query-image).",
    )
    p.add_argument("--model", required=True, help="model dir (config.yaml + model.safetensors), e.g. exp/<tag>/upstream")
    p.add_argument("--images", help="gallery: a folder of images, a data dir (img.scp), or a list (id path / path per line)")
    p.add_argument("--query", nargs="+", metavar="WAV", help="spoken queries (16 kHz audio files, folders or lists)")
    p.add_argument("--captions", help="gallery of spoken captions: a folder of audio files, a data dir (wav.scp), or a list")
    p.add_argument("--query-image", nargs="+", metavar="IMG", help="query images (files, folders or lists)")
    p.add_argument("--k", type=int, default=5, help="results per query (default 5)")
    p.add_argument("--k-coarse", type=int, default=100,
                   help="models with a fine scorer (FaST-VGS): coarse candidates re-ranked by fine score (default 100)")
    p.add_argument("--coarse-only", action="store_true", help="rank by coarse scores only (no re-ranking)")
    g = p.add_argument_group("RoI features (FaST-VGS)")
    g.add_argument("--roi", help="RoI feature store (HDF5) holding every image id; default: extract now")
    g.add_argument("--roi-weights", default=None,
                   help="extractor weights: a local torchvision Faster R-CNN checkpoint, or 'random' (seeded); "
                        "default torchvision's COCO weights")
    g.add_argument("--boxes", default=None, help="JSON {image_id: [[x1, y1, x2, y2], ...]}: pool at these boxes")
    g.add_argument("--min-size", type=int, default=800, help="detector resize bound (default 800)")
    g.add_argument("--max-size", type=int, default=1333, help="detector resize bound (default 1333)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=8, help="files per encoder call (default 8)")
    p.add_argument("--resample", action="store_true", help="resample audio that is not 16 kHz (default: refuse it)")
    p.add_argument("--out", help="also write the results as JSON here (atomically)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> SearchResult:
    a2i = args.images is not None or args.query is not None
    i2a = args.captions is not None or args.query_image is not None
    if a2i == i2a:
        raise SearchError("give either --images with --query (images for speech) or --captions with "
                          "--query-image (speech for images)")
    if a2i and (args.images is None or not args.query):
        raise SearchError("--images and --query go together")
    if i2a and (args.captions is None or not args.query_image):
        raise SearchError("--captions and --query-image go together")
    if args.k < 1:
        raise SearchError(f"--k must be >= 1, got {args.k}")
    if args.out and Path(args.out).suffix != ".json":
        raise SearchError(f"{args.out}: the results file is JSON; give a .json name")
    searcher = Searcher(
        args.model, device=args.device, roi=args.roi,
        roi_options=RoIOptions(weights=args.roi_weights, boxes=args.boxes, min_size=args.min_size, max_size=args.max_size),
        k_coarse=args.k_coarse, coarse_only=args.coarse_only, batch_size=args.batch_size, resample=args.resample,
        progress=not args.quiet,
    )
    if a2i:
        return searcher.images_for(args.query, args.images, args.k)
    return searcher.captions_for(args.query_image, args.captions, args.k)


@console_script("vgs-search")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(None if argv is None else list(argv))
    result = run(args)
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text)
    sys.stdout.write(text if args.json else result.table())
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


__all__ = ["RoIOptions", "Searcher", "SearchError", "SearchResult", "QueryResult", "Hit", "read_items",
           "search_images", "search_captions", "main"]

if __name__ == "__main__":
    sys.exit(main())
