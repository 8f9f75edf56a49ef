"""``vgs-evaluate``: speech-image retrieval of a model directory on a data dir (recipe stage 6).

Every caption (``wav.scp``) and every distinct image (``utt2img``) is encoded
once; then, from the cached encoder outputs:

* ``coarse`` (every model): ``model.coarse_scores`` of the coarse vectors;
* ``fine`` (models whose ``input_spec.has_fine_scores``, e.g. FaST-VGS):
  ``model.fine_scores`` on every (caption, image) pair. It is quadratic, so it
  runs only when N_audio * N_image <= ``--max-fine-pairs`` (2M) or with
  ``--fine-all``;
* ``coarse_to_fine`` (the same models): top ``--k-coarse`` by coarse score
  re-ranked by fine score, both directions (:func:`s3prl_vgs.retrieval.coarse_to_fine`).

The model is reached only through the contract of :mod:`s3prl_vgs.models.base`:
``input_spec`` says what the image side reads (RoI rows from ``--roi`` or the
image files of ``img.scp`` through ``model.image_transform``) and the shortest
audio; ``encode_audio`` / ``encode_image`` / ``coarse_scores`` /
``fine_scores`` do the rest. Scoring lives in :mod:`s3prl_vgs.retrieval`, the
corpus side in :mod:`s3prl_vgs.data.evalset`; this module keeps the
orchestration, the report and the CLI. :func:`split_recall` is the short form
for a training loop's validation (an in-memory model, a data dir, one method).

Recall@1/5/10 in percent both ways, named as in ``DESIGN.md``: ``A2I`` = an
image retrieved for each caption (the official logs' ``I_r@k``), ``I2A`` =
captions retrieved for each image, a hit when any caption of the image is in
the top k (``A_r@k``); ``mean_R@1`` = (A2I R@1 + I2A R@1) / 2, the official
model-selection number. Protocol (``reference/official-code.md`` 4.1):
one-to-many (SpokenCOCO, Flickr8k) when an image has several captions,
one-to-one (Places) when every image has exactly one; with one caption per
image both compute the same numbers, so ``--protocol`` mainly states (and
checks) what the data should be.

``ms_per_query`` = wall time of scoring and ranking in both directions divided
by N_audio + N_image queries, encoders excluded (their time is under
``encode``), as :func:`s3prl_vgs.retrieval.coarse_to_fine` counts it.

Memory: waveforms are read a batch at a time (sorted by length, longest first,
so padding stays small); only encoder outputs are kept: coarse vectors, and for
models with a fine scorer the ``tokens`` (+ ``tokens_padding_mask``) it reads.

Audio must be 16 kHz (recipe stage 2 formats it) unless ``--resample`` is
given, which resamples other rates on the fly with torchaudio.

Outputs: ``--out RESULTS.json`` (written atomically) and ``RESULTS.md`` beside
it, a table with one row per method.

Sharding (``--nj N --job J``, 1-based as ESPnet's ``JOB``): the encoders, the
part that grows with the test set and needs the GPU time, are split.
Encoding runs in batches fixed up front (captions sorted by length, images in
order), and job J encodes batches J-1, J-1+N, ... of each side, so every
caption and image is encoded in the very batch it would be in one job and
the cached outputs are bitwise those of one job. Each job writes
``RESULTS.json.parts/encoded.J.safetensors`` (atomically; a rerun with the
same model, data and batch size skips a finished job). ``--merge`` (with the
same ``--nj``) checks that every job is there and from the same model, data
and settings, scores everything (coarse, fine, coarse-to-fine) in one process
and writes the results, whose recalls and per-query ranks are then those of
one job; ``encode`` times are summed over the jobs. The parts are removed
after the merge.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .cli import console_script
from .data.audio import SAMPLE_RATE, AudioError, audio_info, load_audio
from .data.datadir import DataDirError
from .data.evalset import PROTOCOLS, EvalSet, EvaluateError
from .data.image import ImageError, load_image
from .io import atomic_write_bytes, atomic_write_text
from .models.base import AudioOutput, ImageOutput
from .retrieval import (coarse_retrieval, coarse_to_fine, fine_fn_for, fine_matrix, rankings_from_scores, recall_at_k,
                        retrieval_ranks, sync)

KS = (1, 5, 10)
INDEXES = ("exact", "faiss", "flat", "ivf", "hnsw")  # "faiss" = "flat" (exact inner product in FAISS)
METHODS = ("coarse", "fine", "coarse_to_fine")
METHOD_TITLES = {"coarse": "coarse", "fine": "fine (all pairs)", "coarse_to_fine": "coarse-to-fine"}
DEFAULT_MAX_FINE_PAIRS = 2_000_000


@dataclass
class EvalSettings:
    """How to evaluate; every field is a ``vgs-evaluate`` option.

    Attributes:
        roi: RoI feature store (path or ``RoIFeatureStore``) of the data dir's
            images; required by models whose ``input_spec.image_input`` is
            ``"roi"``, refused for the others.
        k_coarse: candidates per query of coarse-to-fine (official ``--topk`` 100).
        protocol: ``auto``, ``one-to-many`` or ``one-to-one`` (module docstring).
        batch_size: captions / images per encoder call.
        device: ``cpu``, ``cuda``, ``cuda:1``, ...
        index: coarse search, ``exact`` (torch) or a FAISS index (``faiss`` = ``flat``, ``ivf``, ``hnsw``).
        fine_all: score every pair with the fine scorer whatever the size.
        max_fine_pairs: otherwise all-pairs fine scoring runs only up to this many pairs.
        fine_chunk_size: pairs per fine-scorer call.
        resample: resample audio that is not 16 kHz instead of refusing it.
        workers: threads reading audio / image files ahead of the encoder.
        progress: tqdm bars on stderr.
        per_query: add ``per_query``: for coarse (exact index) and fine, the
            0-based rank of the right image per caption id and of the best
            caption per image id (ties count against the query).
        methods: which of ``coarse``, ``fine``, ``coarse_to_fine`` to run
            (None: every one the model supports).
        max_audio_sec: keep only the first this many seconds of each caption
            (the official evaluation crops to ``audio_feat_len``: 10 s on
            SpokenCOCO / Flickr8k, 25 s on Places); None = whole captions.
    """

    roi: Any = None
    k_coarse: int = 100
    protocol: str = "auto"
    batch_size: int = 16
    device: Any = "cpu"
    index: str = "exact"
    fine_all: bool = False
    max_fine_pairs: int = DEFAULT_MAX_FINE_PAIRS
    fine_chunk_size: int = 256
    resample: bool = False
    workers: int = 2
    progress: bool = True
    per_query: bool = False
    methods: Optional[Tuple[str, ...]] = None
    max_audio_sec: Optional[float] = None

    def __post_init__(self):
        if self.batch_size < 1 or self.k_coarse < 1 or self.fine_chunk_size < 1:
            raise EvaluateError("batch_size, k_coarse and fine_chunk_size must be >= 1")
        if self.max_audio_sec is not None and not self.max_audio_sec > 0:
            raise EvaluateError(f"max_audio_sec must be > 0, got {self.max_audio_sec}")
        if self.index not in INDEXES:
            raise EvaluateError(f"unknown index {self.index!r}; choose from {INDEXES}")
        if self.protocol not in PROTOCOLS:
            raise EvaluateError(f"unknown protocol {self.protocol!r}; choose from {PROTOCOLS}")
        if self.methods is not None:
            self.methods = tuple(self.methods)
            unknown = [m for m in self.methods if m not in METHODS]
            if unknown or not self.methods:
                raise EvaluateError(f"methods {list(self.methods)}: choose from {list(METHODS)}")

    @property
    def index_kind(self) -> str:
        return "flat" if self.index == "faiss" else self.index


# ----------------------------------------------------------------------------- helpers


def _progress(iterable=None, total=None, desc: str = "", enabled: bool = True, unit: str = "it"):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, leave=False, file=sys.stderr,
                dynamic_ncols=True)


def _prefetch(batches: Sequence[Sequence[Any]], load: Callable[[Any], Any], workers: int) -> Iterator[List[Any]]:
    """Yield ``[load(x) for x in batch]`` per batch; with workers, the next batch loads while this one is used.

    At most two batches are in memory at once. Exceptions of ``load`` reach the
    caller unchanged.
    """
    if workers <= 0:
        for batch in batches:
            yield [load(x) for x in batch]
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(load, x) for x in batches[0]] if batches else []
        for b in range(len(batches)):
            current = pending
            pending = [pool.submit(load, x) for x in batches[b + 1]] if b + 1 < len(batches) else []
            try:
                yield [f.result() for f in current]
            except BaseException:
                for f in pending:
                    f.cancel()
                raise


def _input_spec(model: torch.nn.Module):
    spec = getattr(model, "input_spec", None)
    if spec is None or not hasattr(model, "encode_audio") or not hasattr(model, "encode_image"):
        raise EvaluateError(f"cannot evaluate a {type(model).__name__}: it does not implement the model contract "
                            "(input_spec, encode_audio, encode_image; see s3prl_vgs.models.base)")
    return spec


# ----------------------------------------------------------------------------- encoding


class _RowBank:
    """Encoder outputs gathered into preallocated rows, in any order.

    Keeps ``coarse`` and, for a fine scorer, ``tokens`` padded to the widest
    batch with ``tokens_padding_mask`` True at pad (rows wider than the
    current width grow the bank: rare, as batches come longest first).
    """

    def __init__(self, n: int, keep_tokens: bool):
        self.n, self.keep_tokens = n, keep_tokens
        self.coarse = self.tokens = self.mask = None
        self.output_type = None
        self.filled: List[torch.Tensor] = []  # row indices put so far (a --job's share)

    def put(self, rows: torch.Tensor, out) -> None:
        if self.coarse is None:
            self.output_type = type(out)
            self.coarse = out.coarse.new_zeros((self.n, out.coarse.size(1)))
            if self.keep_tokens:
                self.tokens = out.tokens.new_zeros((self.n,) + tuple(out.tokens.shape[1:]))
                self.mask = torch.ones((self.n, out.tokens.size(1)), dtype=torch.bool, device=out.tokens.device)
        self.coarse[rows] = out.coarse
        self.filled.append(rows)
        if not self.keep_tokens:
            return
        tokens, mask = out.tokens, out.tokens_padding_mask
        W = tokens.size(1)
        if W > self.tokens.size(1):  # widen everything stored so far
            extra = W - self.tokens.size(1)
            self.tokens = torch.cat([self.tokens, self.tokens.new_zeros((self.n, extra) + tuple(self.tokens.shape[2:]))], 1)
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.n, extra))], 1)
        self.tokens[rows, :W] = tokens
        self.mask[rows, :W] = mask
        self.mask[rows, W:] = True
        self.tokens[rows, W:] = 0

    def output(self):
        """One output of the model's own type holding every row (coarse, and tokens when kept)."""
        return self.output_type(coarse=self.coarse, tokens=self.tokens, tokens_padding_mask=self.mask)

    def share_tensors(self, side: str) -> Dict[str, torch.Tensor]:
        """The rows put so far, as ``{side.rows, side.coarse[, side.tokens, side.mask]}`` CPU tensors."""
        if not self.filled:
            return {}
        rows = torch.cat(self.filled)
        out = {f"{side}.rows": rows, f"{side}.coarse": self.coarse[rows]}
        if self.keep_tokens:
            out[f"{side}.tokens"], out[f"{side}.mask"] = self.tokens[rows], self.mask[rows]
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _job_batches(batches: List[List[int]], share: Tuple[int, int]) -> List[List[int]]:
    """Job J of N (1-based) takes batches J-1, J-1+N, ...: round robin spreads long and short captions."""
    job, nj = share
    return batches[job - 1::nj]


@torch.inference_mode()
def encode_captions(model, evalset: EvalSet, settings: EvalSettings, device: torch.device,
                    share: Tuple[int, int] = (1, 1), bank_out: Optional[list] = None) -> Tuple[Any, float]:
    """Encode every caption once, longest first; returns (one AudioOutput in ``evalset.utts`` order, seconds).

    ``share`` = (job, nj): encode only that job's batches (module docstring);
    ``bank_out``: a list that receives the row bank (what a job saves).
    """
    spec = _input_spec(model)
    paths = evalset.wav_paths()
    min_samples = spec.min_audio_samples
    resample = settings.resample
    crop = None if settings.max_audio_sec is None else int(round(settings.max_audio_sec * SAMPLE_RATE))
    lengths = []
    for p in _progress(paths, desc="audio headers", enabled=settings.progress and len(paths) > 2000, unit="file"):
        sr, _, frames = audio_info(p)
        if sr != SAMPLE_RATE and not resample:
            raise AudioError(p, f"sample rate {sr} Hz, expected {SAMPLE_RATE} Hz (format the audio to 16 kHz, "
                                f"recipe stage 2, or pass --resample)")
        n = int(math.ceil(frames * SAMPLE_RATE / sr))
        if crop is not None:
            n = min(n, crop)
        if n < min_samples:
            raise AudioError(p, f"too short: {n} samples at 16 kHz, the model needs at least {min_samples}")
        lengths.append(n)
    order = sorted(range(len(paths)), key=lambda i: (-lengths[i], i))
    bs = settings.batch_size
    batches = _job_batches([order[s:s + bs] for s in range(0, len(order), bs)], share)

    def load(i: int) -> torch.Tensor:
        wav = load_audio(paths[i], resample=resample)
        if crop is not None:
            wav = wav[:crop]
        if wav.numel() < min_samples:
            raise AudioError(paths[i], f"too short: {wav.numel()} samples, the model needs at least {min_samples}")
        return wav

    bank = _RowBank(len(paths), keep_tokens=spec.has_fine_scores)
    if bank_out is not None:
        bank_out.append(bank)
    seconds = 0.0
    bar = _progress(total=sum(map(len, batches)), desc="encode captions", enabled=settings.progress, unit="utt")
    for idx, wavs in zip(batches, _prefetch(batches, load, settings.workers)):
        lens = torch.tensor([w.numel() for w in wavs], dtype=torch.long)
        x = torch.zeros(len(wavs), int(lens.max()))
        for r, w in enumerate(wavs):
            x[r, :w.numel()] = w
        del wavs
        sync(device)
        t0 = time.perf_counter()
        out = model.encode_audio(x.to(device), lens.to(device))
        bank.put(torch.tensor(idx, device=device), out)
        del out
        sync(device)
        seconds += time.perf_counter() - t0
        bar.update(len(idx))
    bar.close()
    return (bank.output() if bank.coarse is not None else None), seconds


def _roi_loader(spec, evalset: EvalSet, roi) -> Callable[[int], Dict[str, torch.Tensor]]:
    from .features.store import RoIFeatureStore

    store = roi if isinstance(roi, RoIFeatureStore) else RoIFeatureStore(roi)
    if store.feat_dim != spec.roi_feat_dim:
        raise EvaluateError(f"{store.path}: RoI features are {store.feat_dim}-d, the model reads "
                            f"{spec.roi_feat_dim}-d (visual_feat_dim); features and model do not match")
    if spec.roi_pos_dim != 4:
        raise EvaluateError(f"the model reads {spec.roi_pos_dim}-d box positions; the RoI store holds x1y1x2y2 boxes (4-d)")
    missing = store.missing(evalset.images)
    if missing:
        raise EvaluateError(
            f"{store.path}: image id {missing[0]!r} (used in {evalset.path / 'utt2img'}) is not in this store "
            f"({len(missing)} of {len(evalset.images)} images missing; extract features for this data dir with vgs-extract-roi)"
        )
    # Rows are stored by descending detector confidence; the model keeps the first max_rois, as officially.
    keep = spec.max_rois

    def load(j: int) -> Dict[str, torch.Tensor]:
        item = store[evalset.images[j]]
        return {"feats": torch.from_numpy(item["features"][:keep]), "boxes": torch.from_numpy(item["boxes"][:keep])}

    return load


def _pixel_loader(model, evalset: EvalSet) -> Callable[[int], Dict[str, torch.Tensor]]:
    paths = evalset.image_paths()
    transform = model.image_transform(train=False)

    def load(j: int) -> Dict[str, torch.Tensor]:
        return {"images": transform(load_image(paths[j]))}

    return load


@torch.inference_mode()
def encode_images(model, evalset: EvalSet, settings: EvalSettings, device: torch.device,
                  share: Tuple[int, int] = (1, 1), bank_out: Optional[list] = None) -> Tuple[Any, float]:
    """Encode every distinct image once; returns (one ImageOutput in ``evalset.images`` order, seconds).

    ``share`` and ``bank_out``: as for :func:`encode_captions`.

    ``"roi"`` models read features and boxes from ``settings.roi``; ``"pixels"``
    models read the image files of ``img.scp`` through ``model.image_transform``.
    """
    spec = _input_spec(model)
    n = len(evalset.images)
    bs = settings.batch_size
    batches = _job_batches([list(range(s, min(s + bs, n))) for s in range(0, n, bs)], share)
    if spec.image_input == "roi":
        load, workers = _roi_loader(spec, evalset, settings.roi), 0  # h5py reads serialise anyway
    else:
        load, workers = _pixel_loader(model, evalset), settings.workers
    bank = _RowBank(n, keep_tokens=spec.has_fine_scores)
    if bank_out is not None:
        bank_out.append(bank)
    seconds = 0.0
    bar = _progress(total=sum(map(len, batches)), desc="encode images", enabled=settings.progress, unit="img")
    for idx, items in zip(batches, _prefetch(batches, load, workers)):
        sync(device)
        t0 = time.perf_counter()
        inputs = {k: torch.stack([it[k] for it in items]).to(device) for k in spec.image_args}
        out = model.encode_image(**inputs)
        bank.put(torch.tensor(idx, device=device), out)
        del out, items, inputs
        sync(device)
        seconds += time.perf_counter() - t0
        bar.update(len(idx))
    bar.close()
    return (bank.output() if bank.coarse is not None else None), seconds


# ----------------------------------------------------------------------------- results


def _method_result(recalls, seconds: float, n_queries: int, **extra) -> Dict[str, Any]:
    out = {
        "A2I": {str(k): float(v) for k, v in recalls["A2I"].items()},
        "I2A": {str(k): float(v) for k, v in recalls["I2A"].items()},
    }
    out["mean_R@1"] = (out["A2I"]["1"] + out["I2A"]["1"]) / 2 if "1" in out["A2I"] else None
    out["ms_per_query"] = 1000.0 * seconds / max(n_queries, 1)
    out["seconds"] = seconds
    out.update(extra)
    return out


def _ranks_by_id(S: torch.Tensor, audio_to_image: torch.Tensor, evalset: EvalSet) -> Dict[str, Dict[str, int]]:
    """0-based rank of the right answer per query, by id: ``{"A2I": {utt: rank}, "I2A": {image: rank}}``."""
    a2i_rank, i2a_rank, _ = retrieval_ranks(S, audio_to_image)
    return {"A2I": dict(zip(evalset.utts, a2i_rank.tolist())), "I2A": dict(zip(evalset.images, i2a_rank.tolist()))}


# ----------------------------------------------------------------------------- evaluate


def _settings(settings: Optional[EvalSettings], overrides: Dict[str, Any]) -> EvalSettings:
    if settings is None:
        names = {f.name for f in fields(EvalSettings)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"evaluate() got unknown settings {unknown}; EvalSettings has {sorted(names)}")
        return EvalSettings(**overrides)
    return replace(settings, **overrides) if overrides else settings


def evaluate(model, data_dir: str | os.PathLike, settings: Optional[EvalSettings] = None, **overrides) -> Dict[str, Any]:
    """Retrieval recall of ``model`` on ``data_dir``; returns the results dict (what ``--out`` holds).

    Args:
        model: a model directory (``config.yaml`` + ``model.safetensors``) or a
            loaded model (any device; it is moved to ``settings.device`` and
            gets its train/eval mode back afterwards).
        data_dir: a data dir with ``wav.scp``, ``utt2img`` and ``img.scp``.
        settings: :class:`EvalSettings`; or give its fields as keywords
            (``roi=``, ``k_coarse=``, ...), which also override ``settings``.

    Example:
        >>> r = evaluate("exp/model", "data/test", roi="dump/roi/test.h5")
        >>> r["methods"]["coarse_to_fine"]["A2I"]["10"]
    """
    model, model_path, evalset, protocol, settings, wanted, device = _prepare(model, data_dir, settings, overrides)
    was_training = model.training
    model.eval()  # no dropout anywhere below (the fine scorer too); a passed model gets its mode back
    try:
        return _evaluate(model, model_path, evalset, protocol, settings, wanted, device)
    finally:
        model.train(was_training)


def _prepare(model, data_dir, settings: Optional[EvalSettings], overrides: Dict[str, Any]):
    """Load and check model, data and settings: what evaluation and its --nj jobs share."""
    from .checkpoint import load_model

    settings = _settings(settings, overrides)
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvaluateError(f"device {device} asked for, but CUDA is not available here")
    model_path = None
    if isinstance(model, (str, os.PathLike)):
        model_path = str(model)
        model = load_model(model, map_location=device)
    else:
        model = model.to(device)
    spec = _input_spec(model)
    evalset = EvalSet(data_dir)
    protocol = evalset.resolve_protocol(settings.protocol)
    who = model_path or "the model"
    if spec.image_input == "roi" and settings.roi is None:
        raise EvaluateError(f"{who}: this model reads RoI features of the images: pass --roi FEATS.h5 for "
                            f"{evalset.path} (vgs-extract-roi, recipe stage 3)")
    if spec.image_input != "roi" and settings.roi is not None:
        raise EvaluateError(f"{who}: a {model.model_name} model encodes the image files of img.scp; --roi "
                            f"{settings.roi} is for RoI-feature models (FaST-VGS models only)")
    wanted = settings.methods or METHODS
    if not spec.has_fine_scores and any(m != "coarse" for m in wanted):
        if settings.methods is not None:
            raise EvaluateError(f"{who}: a {model.model_name} model has no fine scorer; methods {list(wanted)} "
                                "need one (use coarse)")
        wanted = ("coarse",)
    return model, model_path, evalset, protocol, settings, wanted, device


def _evaluate(model, model_path, evalset: EvalSet, protocol: str, settings: EvalSettings, wanted, device,
              encoded=None) -> Dict[str, Any]:
    index_kind = settings.index_kind
    progress = settings.progress
    if encoded is None:
        # Images first: a missing RoI row or image file fails before the (slower) audio pass.
        image, image_s = encode_images(model, evalset, settings, device)
        audio, audio_s = encode_captions(model, evalset, settings, device)
    else:  # the merged outputs of --nj jobs
        audio, image, audio_s, image_s, n_jobs = encoded
    Na, Ni = len(evalset.utts), len(evalset.images)
    n_queries = Na + Ni
    a2i = evalset.audio_to_image.to(device)
    methods: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, str] = {}
    per_query_ranks: Dict[str, Dict[str, Dict[str, int]]] = {}

    if "coarse" in wanted:
        recalls, sec, S = coarse_retrieval(model, audio.coarse, image.coarse, evalset.audio_to_image, index_kind, KS)
        methods["coarse"] = _method_result(recalls, sec, n_queries, index=index_kind)
        if settings.per_query and S is not None:
            per_query_ranks["coarse"] = _ranks_by_id(S, a2i, evalset)
        del S

    chunk = settings.fine_chunk_size
    if "fine" in wanted or "coarse_to_fine" in wanted:
        with torch.inference_mode():
            model.fine_scores(audio[:1], image[:1])  # warm-up (lazy kernels, allocator) outside the timings
    if "fine" in wanted:
        n_pairs = Na * Ni
        if settings.fine_all or n_pairs <= settings.max_fine_pairs:
            bar = _progress(total=n_pairs, desc="fine (all pairs)", enabled=progress, unit="pair")
            sync(device)
            t0 = time.perf_counter()
            S = fine_matrix(model, audio, image, chunk, bar)
            rankings_from_scores(S, max(KS))
            sync(device)
            sec = time.perf_counter() - t0
            bar.close()
            methods["fine"] = _method_result(recall_at_k(S, a2i, KS), sec, n_queries, n_pairs=n_pairs)
            if settings.per_query:
                per_query_ranks["fine"] = _ranks_by_id(S, a2i, evalset)
            del S
        else:
            skipped["fine"] = (f"{Na} x {Ni} = {n_pairs} pairs > --max-fine-pairs {settings.max_fine_pairs}; "
                               f"pass --fine-all to score them all")
    if "coarse_to_fine" in wanted:
        k = settings.k_coarse
        bound = Na * min(k, Ni) + Ni * min(k, Na)
        bar = _progress(total=bound, desc=f"coarse-to-fine (k={k})", enabled=progress, unit="pair")
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            ctf = coarse_to_fine(audio.coarse, image.coarse, fine_fn_for(model, audio, image, chunk, bar), k_coarse=k,
                                 keep=max(KS), index=index_kind, query_block=max(1, (64 * chunk) // max(min(k, max(Na, Ni)), 1)))
        sync(device)  # its own timing does not wait for queued GPU work
        sec = time.perf_counter() - t0
        bar.close()
        methods["coarse_to_fine"] = _method_result(
            ctf.recall(a2i, KS), sec, n_queries, k_coarse=k, n_pairs=ctf.n_pairs, index=index_kind,
            coarse_seconds=ctf.timing["coarse"], fine_seconds=ctf.timing["fine"],
        )

    from . import __version__

    roi = settings.roi
    return {
        **({"jobs": n_jobs} if encoded is not None else {}),
        "model": model_path,
        "model_name": model.model_name,
        "data": str(evalset.path),
        "roi": None if roi is None else str(getattr(roi, "path", roi)),
        "protocol": protocol,
        "n_audio": Na,
        "n_image": Ni,
        "captions_per_image": {"min": int(evalset.captions_per_image.min()),
                               "max": int(evalset.captions_per_image.max())},
        "ks": list(KS),
        "device": str(device),
        "encode": {"audio_seconds": audio_s, "image_seconds": image_s, "total_seconds": audio_s + image_s,
                   "ms_per_caption": 1000.0 * audio_s / Na, "ms_per_image": 1000.0 * image_s / Ni},
        "methods": methods,
        "skipped": skipped,
        "settings": {"k_coarse": settings.k_coarse, "index": index_kind, "batch_size": settings.batch_size,
                     "fine_chunk_size": chunk, "max_fine_pairs": settings.max_fine_pairs,
                     "fine_all": settings.fine_all, "resample": settings.resample,
                     "max_audio_sec": settings.max_audio_sec,
                     "torch_threads": torch.get_num_threads()},
        "versions": {"s3prl_vgs": __version__, "torch": torch.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"per_query": per_query_ranks} if settings.per_query else {}),
    }


# ----------------------------------------------------------------------------- --nj/--job shards


def parts_dir(out: str | os.PathLike) -> Path:
    """Where the --nj jobs of ``--out RESULTS.json`` put their encoder outputs: ``RESULTS.json.parts/``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _sha256_files(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _job_identity(model_path: str, evalset: EvalSet, settings: EvalSettings, nj: int) -> Dict[str, Any]:
    """What a job's outputs depend on; every job of a merge must agree on all of it."""
    from .checkpoint import WEIGHTS_NAME

    m = Path(model_path)
    ids = hashlib.sha256("\n".join(evalset.utts + ["|"] + evalset.images).encode()).hexdigest()
    return {"nj": nj, "model_sha256": _sha256_files(m / "config.yaml", m / WEIGHTS_NAME), "ids_sha256": ids,
            "n_audio": len(evalset.utts), "n_image": len(evalset.images), "batch_size": settings.batch_size,
            "max_audio_sec": settings.max_audio_sec,
            "roi": None if settings.roi is None else str(Path(str(getattr(settings.roi, "path", settings.roi))).resolve())}


def _read_job(path: Path) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("vgs_evaluate_job", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise EvaluateError(f"{path}: unreadable job file ({' '.join(str(e).split())}); rerun that job") from None
    if not isinstance(meta, dict):
        raise EvaluateError(f"{path}: not written by vgs-evaluate --job; remove it and rerun that job")
    return meta, tensors


def evaluate_job(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out: str | os.PathLike, nj: int, job: int,
                 settings: Optional[EvalSettings] = None, log=print, **overrides) -> Path:
    """Job ``job`` of ``nj`` (1-based): encode this job's share into ``parts_dir(out)/encoded.<job>.safetensors``.

    A finished job file of the same model, data and batch size is kept
    (nothing is encoded again). Returns the job file.
    """
    if not 1 <= job <= nj:
        raise EvaluateError(f"--job must be in 1..{nj}, got {job}")
    if not isinstance(model_dir, (str, os.PathLike)):
        raise EvaluateError("--nj jobs need a model directory (they are checked against its files on merge)")
    model, model_path, evalset, _, settings, _, device = _prepare(model_dir, data_dir, settings, overrides)
    identity = _job_identity(model_path, evalset, settings, nj)
    path = parts_dir(out) / f"encoded.{job}.safetensors"
    if path.exists():
        meta, _ = _read_job(path)
        if {k: meta.get(k) for k in identity} == identity and meta.get("job") == job:
            log(f"{path}: job {job}/{nj} already encoded, nothing to do")
            return path
        log(f"{path}: from another model, data or settings; encoding again")
    model.eval()
    banks: list = []
    _, image_s = encode_images(model, evalset, settings, device, share=(job, nj), bank_out=banks)
    _, audio_s = encode_captions(model, evalset, settings, device, share=(job, nj), bank_out=banks)
    tensors = {**banks[0].share_tensors("image"), **banks[1].share_tensors("audio")}
    meta = {**identity, "job": job, "audio_seconds": audio_s, "image_seconds": image_s, "device": str(device)}
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata={"vgs_evaluate_job": json.dumps(meta)}))
    n_a = len(tensors.get("audio.rows", ())); n_i = len(tensors.get("image.rows", ()))  # noqa: E702
    log(f"{path}: job {job}/{nj} encoded {n_a} of {len(evalset.utts)} captions and {n_i} of "
        f"{len(evalset.images)} images; run with --merge once all {nj} jobs are done")
    return path


def _merge_side(shards: List[Dict[str, torch.Tensor]], side: str, n: int, cls, where: Path, device):
    """One output holding all ``n`` rows of ``side`` from the jobs' shares, padded as one job pads."""
    parts = [s for s in shards if f"{side}.rows" in s]
    rows = torch.cat([s[f"{side}.rows"] for s in parts])
    if rows.numel() != n or not torch.equal(torch.sort(rows).values, torch.arange(n)):
        raise EvaluateError(f"{where}: the jobs' {side} rows do not cover the {n} {side} items exactly once; "
                            f"remove {where} and rerun every job")
    first = parts[0]
    coarse = first[f"{side}.coarse"].new_zeros((n,) + tuple(first[f"{side}.coarse"].shape[1:]))
    tokens = mask = None
    if f"{side}.tokens" in first:
        width = max(s[f"{side}.tokens"].size(1) for s in parts)  # one job widens its bank to the widest batch too
        tokens = first[f"{side}.tokens"].new_zeros((n, width) + tuple(first[f"{side}.tokens"].shape[2:]))
        mask = torch.ones((n, width), dtype=torch.bool)
    for s in parts:
        r = s[f"{side}.rows"]
        coarse[r] = s[f"{side}.coarse"]
        if tokens is not None:
            w = s[f"{side}.tokens"].size(1)
            tokens[r, :w] = s[f"{side}.tokens"]
            mask[r, :w] = s[f"{side}.mask"]
    to = lambda x: None if x is None else x.to(device)  # noqa: E731
    return cls(coarse=to(coarse), tokens=to(tokens), tokens_padding_mask=to(mask))


def merge_jobs(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out: str | os.PathLike, nj: int,
               settings: Optional[EvalSettings] = None, log=print, **overrides) -> Dict[str, Any]:
    """Score the encoder outputs of ``nj`` finished jobs; returns the results (then written to ``out``)."""
    if not isinstance(model_dir, (str, os.PathLike)):
        raise EvaluateError("--merge needs a model directory")
    model, model_path, evalset, protocol, settings, wanted, device = _prepare(model_dir, data_dir, settings, overrides)
    identity = _job_identity(model_path, evalset, settings, nj)
    where = parts_dir(out)
    missing = [j for j in range(1, nj + 1) if not (where / f"encoded.{j}.safetensors").exists()]
    if missing:
        raise EvaluateError(f"{where}: {len(missing)} of {nj} job(s) not finished (job {', '.join(map(str, missing))}); "
                            "run them (--nj/--job) before --merge")
    shards, audio_s, image_s = [], 0.0, 0.0
    for j in range(1, nj + 1):
        path = where / f"encoded.{j}.safetensors"
        meta, tensors = _read_job(path)
        diff = sorted(k for k in identity if meta.get(k) != identity[k])
        if diff or meta.get("job") != j:
            raise EvaluateError(f"{path}: written for another {', '.join(diff) or 'job number'} than this merge "
                                f"(--model, --data, --roi, --batch-size and --nj must be the jobs'); rerun that job")
        shards.append(tensors)
        audio_s += meta["audio_seconds"]
        image_s += meta["image_seconds"]
    audio = _merge_side(shards, "audio", len(evalset.utts), AudioOutput, where, device)
    image = _merge_side(shards, "image", len(evalset.images), ImageOutput, where, device)
    model.eval()
    results = _evaluate(model, model_path, evalset, protocol, settings, wanted, device,
                        encoded=(audio, image, audio_s, image_s, nj))
    log(f"merged {nj} jobs of {where}")
    return results


def split_recall(model, data_dir: str | os.PathLike, roi=None, method: str = "coarse",
                 **settings: Any) -> Dict[str, float]:
    """Recall of one method on a split, flat: what a training loop logs and selects checkpoints by.

    Works on an in-memory model (any mode and device; its mode is restored)
    and a data dir; no files are written and no progress bars are shown
    unless ``progress=True`` is passed.

    Args:
        model: a model implementing the contract, or a model directory.
        data_dir: data dir of the split (``wav.scp``, ``utt2img``, ``img.scp``).
        roi: RoI feature store of the split's images (``"roi"`` models).
        method: ``coarse``, ``fine`` or ``coarse_to_fine``.
        **settings: other :class:`EvalSettings` fields (``device``, ``batch_size``, ``k_coarse``, ...).

    Returns:
        ``{"A2I_R@1", "A2I_R@5", "A2I_R@10", "I2A_R@1", ..., "mean_R@1"}`` in percent.

    Example:
        >>> split_recall(espnet_model.model, "data/val", method="coarse")["mean_R@1"]
    """
    settings.setdefault("progress", False)
    if method == "fine":
        settings.setdefault("fine_all", True)
    r = evaluate(model, data_dir, roi=roi, methods=(method,), **settings)
    if method not in r["methods"]:
        raise EvaluateError(f"{data_dir}: method {method} did not run ({r['skipped'].get(method, 'unsupported')})")
    m = r["methods"][method]
    out = {f"{d}_R@{k}": m[d][str(k)] for d in ("A2I", "I2A") for k in KS}
    out["mean_R@1"] = m["mean_R@1"]
    return out


# ----------------------------------------------------------------------------- output


def markdown_table(results: Dict[str, Any]) -> str:
    """The results as a person reads them: one row per method."""
    ks = results["ks"]
    head = ["method"] + [f"A2I R@{k}" for k in ks] + [f"I2A R@{k}" for k in ks] + ["mean R@1", "ms/query"]
    lines = [
        f"# Retrieval: {results['model_name']} on {results['data']}",
        "",
        f"Model `{results['model']}`, {results['n_audio']} captions, {results['n_image']} images, "
        f"protocol {results['protocol']}, device {results['device']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name, m in results["methods"].items():
        title = METHOD_TITLES.get(name, name)
        if name == "coarse_to_fine":
            title += f" (k={m['k_coarse']})"
        cells = [title] + [f"{m['A2I'][str(k)]:.2f}" for k in ks] + [f"{m['I2A'][str(k)]:.2f}" for k in ks]
        cells += ["" if m["mean_R@1"] is None else f"{m['mean_R@1']:.2f}", f"{m['ms_per_query']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    enc = results["encode"]
    lines += [
        "",
        f"Encoding: {enc['total_seconds']:.2f} s ({enc['ms_per_caption']:.1f} ms/caption, "
        f"{enc['ms_per_image']:.1f} ms/image). Recall in percent. A2I: images retrieved for each caption "
        "(official `I_r@k`); I2A: captions retrieved for each image, a hit when any of its captions is in the "
        "top k (official `A_r@k`). ms/query: scoring and ranking both directions over "
        "N_audio + N_image queries, encoders excluded.",
    ]
    for name, why in results.get("skipped", {}).items():
        lines.append(f"Skipped {METHOD_TITLES.get(name, name)}: {why}.")
    return "\n".join(lines) + "\n"


def markdown_path(out: str | os.PathLike) -> Path:
    return Path(out).with_suffix(".md")


def write_results(results: Dict[str, Any], out: str | os.PathLike) -> Tuple[Path, Path]:
    """``out`` (JSON) and the markdown table beside it (same stem, ``.md``), each written atomically."""
    out = Path(out)
    if out.suffix == ".md":
        raise EvaluateError(f"{out}: the results file is JSON; the markdown table goes beside it (.md), choose a .json name")
    out.parent.mkdir(parents=True, exist_ok=True)
    md = markdown_path(out)
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    atomic_write_text(md, markdown_table(results))
    return out, md


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vgs-evaluate",
        description="Speech-image retrieval of a model dir on a data dir: coarse (all models), fine and "
        "coarse-to-fine (FaST-VGS) recall@1/5/10 in both directions plus time per query. Writes RESULTS.json "
        "and a markdown table RESULTS.md beside it.",
    )
    p.add_argument("--model", required=True, help="model dir (config.yaml + model.safetensors)")
    p.add_argument("--data", required=True, help="data dir (wav.scp, utt2img, img.scp)")
    p.add_argument("--roi", default=None, help="RoI feature store (HDF5) of the data dir's images; FaST-VGS only")
    p.add_argument("--out", required=True, help="results JSON; the markdown table is written beside it (.md)")
    p.add_argument("--k-coarse", type=int, default=100, help="coarse candidates per query re-ranked by fine score (default 100)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="auto",
                   help="auto: one-to-one when every image has one caption (Places), else one-to-many (default auto)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=16, help="captions / images per encoder call (default 16)")
    p.add_argument("--index", choices=INDEXES, default="exact",
                   help="coarse search: exact (torch) or FAISS (faiss = flat, ivf, hnsw; approximate for ivf/hnsw)")
    p.add_argument("--fine-all", action="store_true", help="score all caption-image pairs with the cross encoder, however many")
    p.add_argument("--max-fine-pairs", type=int, default=DEFAULT_MAX_FINE_PAIRS,
                   help=f"without --fine-all, all-pairs fine scoring runs up to this many pairs (default {DEFAULT_MAX_FINE_PAIRS})")
    p.add_argument("--fine-chunk-size", type=int, default=256, help="pairs per cross-encoder call (default 256; larger on GPU)")
    p.add_argument("--resample", action="store_true", help="resample audio that is not 16 kHz (default: refuse it)")
    p.add_argument("--max-audio-sec", type=float, default=None,
                   help="keep the first S seconds of each caption, as the official evaluation crops to audio_feat_len "
                        "(10 s SpokenCOCO/Flickr8k, 25 s Places; default: whole captions)")
    p.add_argument("--num-workers", type=int, default=2, help="threads reading files ahead of the encoder (default 2)")
    p.add_argument("--per-query", action="store_true",
                   help="also save the rank of the right answer per caption / image id (coarse with the exact index, fine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--nj", type=int, default=1, help="number of jobs sharing the encoding (default 1)")
    p.add_argument("--job", type=int, default=1,
                   help="with --nj > 1: this job's number, 1..nj; it writes its share to OUT.parts/ (default 1)")
    p.add_argument("--merge", action="store_true",
                   help="score the shares of the --nj finished jobs and write --out (then OUT.parts/ is removed)")
    return p


@console_script("vgs-evaluate")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(None if argv is None else list(argv))
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .features.store import MissingImageError, StoreError

    errors = (EvaluateError, AudioError, ImageError, DataDirError, StoreError, MissingImageError, CheckpointError,
              ConfigError)
    try:
        if Path(args.out).suffix == ".md":
            raise EvaluateError(f"{args.out}: the results file is JSON; the markdown table goes beside it (.md)")
        if args.nj < 1 or not 1 <= args.job <= args.nj:
            raise EvaluateError(f"--nj must be >= 1 and --job in 1..nj, got --nj {args.nj} --job {args.job}")
        settings = EvalSettings(
            roi=args.roi, k_coarse=args.k_coarse, protocol=args.protocol, batch_size=args.batch_size,
            device=args.device, index=args.index, fine_all=args.fine_all, max_fine_pairs=args.max_fine_pairs,
            fine_chunk_size=args.fine_chunk_size, resample=args.resample, workers=args.num_workers,
            progress=not args.quiet, per_query=args.per_query, max_audio_sec=args.max_audio_sec,
        )
        log = lambda m: print(m, file=sys.stderr)  # noqa: E731
        if args.merge:
            results = merge_jobs(args.model, args.data, args.out, args.nj, settings, log=log)
        elif args.nj > 1:
            evaluate_job(args.model, args.data, args.out, args.nj, args.job, settings, log=log)
            return 0
        else:
            results = evaluate(args.model, args.data, settings)
        out, md = write_results(results, args.out)
        if args.merge:
            shutil.rmtree(parts_dir(args.out), ignore_errors=True)
    except errors as e:
        print(f"vgs-evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(markdown_table(results).split("\n\n")[2], file=sys.stderr)  # the table itself
    print(f"wrote {out} and {md}", file=sys.stderr)
    return 0


__all__ = ["EvalSet", "EvalSettings", "EvaluateError", "evaluate", "evaluate_job", "merge_jobs", "parts_dir",
           "split_recall", "encode_captions", "encode_images",
           "coarse_retrieval", "fine_matrix", "markdown_table", "write_results", "main"]

if __name__ == "__main__":
    sys.exit(main())
