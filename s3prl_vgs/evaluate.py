"""``vgs-evaluate``: speech-image retrieval of a model directory on a data dir (recipe stage 6).

Every caption (``wav.scp``) and every distinct image (``utt2img``) is encoded
once; then, from the cached encoder outputs:

* ``coarse`` (every model): dot products of the coarse vectors;
* ``fine`` (FaST-VGS): the cross encoder on every (caption, image) pair. It is
  quadratic, so it runs only when N_audio * N_image <= ``--max-fine-pairs``
  (2M) or with ``--fine-all``;
* ``coarse_to_fine`` (FaST-VGS): top ``--k-coarse`` by coarse score re-ranked
  by fine score, both directions (:func:`s3prl_vgs.retrieval.coarse_to_fine`).

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
FaST-VGS the Trm2 / image Trm tokens the cross encoder reads.

Audio must be 16 kHz (recipe stage 2 formats it) unless ``--resample`` is
given, which resamples other rates on the fly with torchaudio.

Outputs: ``--out RESULTS.json`` (written atomically) and ``RESULTS.md`` beside
it, a table with one row per method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .config import atomic_write_text
from .data.audio import SAMPLE_RATE, AudioError, audio_info, load_audio
from .data.datadir import DataDir, DataDirError
from .data.image import ImageError, load_image

KS = (1, 5, 10)
PROTOCOLS = ("auto", "one-to-many", "one-to-one")
INDEXES = ("exact", "faiss", "flat", "ivf", "hnsw")  # "faiss" = "flat" (exact inner product in FAISS)
METHOD_TITLES = {"coarse": "coarse", "fine": "fine (all pairs)", "coarse_to_fine": "coarse-to-fine"}
DEFAULT_MAX_FINE_PAIRS = 2_000_000


class EvaluateError(ValueError):
    """Bad input to the evaluation (files, model/data mismatch); the message names the file."""


# ----------------------------------------------------------------------------- data


class EvalSet:
    """Captions and distinct images of a data dir, with the caption -> image index.

    ``utts`` are sorted (``DataDir.utts``), ``images`` are the sorted distinct
    image ids the captions use, ``audio_to_image[i]`` is the index in
    ``images`` of caption ``utts[i]``'s image.
    """

    def __init__(self, data_dir: str | os.PathLike):
        self.path = Path(data_dir)
        data = DataDir.read(self.path)
        self.data = data
        self.utts: List[str] = data.utts
        if not self.utts:
            raise EvaluateError(f"{self.path / 'wav.scp'}: no utterances")
        lacking = [u for u in self.utts if u not in data.utt2img]
        if lacking:
            raise EvaluateError(f"{self.path / 'utt2img'}: no image for utterance {lacking[0]!r}"
                                f" ({len(lacking)} of {len(self.utts)} utterances lack one)")
        self.images: List[str] = sorted({data.utt2img[u] for u in self.utts})
        index = {img: j for j, img in enumerate(self.images)}
        self.audio_to_image = torch.tensor([index[data.utt2img[u]] for u in self.utts], dtype=torch.long)
        self.captions_per_image = torch.bincount(self.audio_to_image, minlength=len(self.images))

    def __repr__(self) -> str:
        return f"EvalSet({str(self.path)!r}, {len(self.utts)} captions, {len(self.images)} images)"

    def image_paths(self) -> List[str]:
        """Image file of every image (img.scp); EvaluateError for ids that img.scp lacks."""
        missing = [i for i in self.images if i not in self.data.img]
        if missing:
            raise EvaluateError(f"{self.path / 'img.scp'}: image id {missing[0]!r} (used in utt2img) is not listed"
                                f" ({len(missing)} of {len(self.images)} images missing)")
        return [self.data.img[i] for i in self.images]

    def resolve_protocol(self, protocol: str) -> str:
        if protocol not in PROTOCOLS:
            raise EvaluateError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
        single = bool((self.captions_per_image == 1).all())
        if protocol == "auto":
            return "one-to-one" if single else "one-to-many"
        if protocol == "one-to-one" and not single:
            j = int(torch.argmax(self.captions_per_image))
            n = int((self.captions_per_image > 1).sum())
            raise EvaluateError(
                f"{self.path / 'utt2img'}: protocol one-to-one needs one caption per image, but {n} image(s) have "
                f"several (e.g. {self.images[j]!r}: {int(self.captions_per_image[j])}); use --protocol one-to-many"
            )
        return protocol


# ----------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _model_kind(model: torch.nn.Module) -> str:
    name = getattr(model, "model_name", None)
    if name == "fast_vgs":
        return "fast_vgs"
    if name == "vg_mim":
        return "vg_mim"
    raise EvaluateError(f"cannot evaluate a {type(model).__name__} (model_name {name!r}); expected fast_vgs or vg_mim")


def _speech_trunk(model: torch.nn.Module):
    return getattr(model, "trunk", None) or getattr(model, "audio_encoder", None)


# ----------------------------------------------------------------------------- encoding


class _RowBank:
    """Encoder outputs gathered into preallocated rows, in any order; tokens padded to the widest batch.

    ``mask`` is True at pad; rows wider than the current width grow the bank
    (rare: batches come longest first).
    """

    def __init__(self, n: int):
        self.n = n
        self.coarse = self.tokens = self.mask = None

    def put(self, rows: torch.Tensor, coarse: torch.Tensor, tokens: Optional[torch.Tensor] = None,
            mask: Optional[torch.Tensor] = None) -> None:
        if self.coarse is None:
            self.coarse = coarse.new_zeros((self.n, coarse.size(1)))
            if tokens is not None:
                self.tokens = tokens.new_zeros((self.n,) + tuple(tokens.shape[1:]))
                self.mask = torch.ones((self.n, tokens.size(1)), dtype=torch.bool, device=tokens.device)
        self.coarse[rows] = coarse
        if tokens is None:
            return
        W = tokens.size(1)
        if W > self.tokens.size(1):  # widen everything stored so far
            extra = W - self.tokens.size(1)
            self.tokens = torch.cat([self.tokens, self.tokens.new_zeros((self.n, extra) + tuple(self.tokens.shape[2:]))], 1)
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.n, extra))], 1)
        self.tokens[rows, :W] = tokens
        self.mask[rows, :W] = mask
        self.mask[rows, W:] = True
        self.tokens[rows, W:] = 0


@torch.inference_mode()
def encode_captions(model, kind: str, evalset: EvalSet, device: torch.device, batch_size: int = 16,
                    resample: bool = False, workers: int = 2, progress: bool = True) -> Tuple[Any, float]:
    """Encode every caption once, longest first; returns (outputs in ``evalset.utts`` order, seconds).

    FaST-VGS: a :class:`~s3prl_vgs.models.fast_vgs.FaSTVGSAudioOutput` with
    coarse, tokens and mask (what the cross encoder needs); MIM family: the
    (N_audio, E) coarse vectors.
    """
    paths = [evalset.data.wav[u] for u in evalset.utts]
    trunk = _speech_trunk(model)
    min_samples = trunk.minimum_samples() if trunk is not None and hasattr(trunk, "minimum_samples") else 1
    lengths = []
    for p in _progress(paths, desc="audio headers", enabled=progress and len(paths) > 2000, unit="file"):
        sr, _, frames = audio_info(p)
        if sr != SAMPLE_RATE and not resample:
            raise AudioError(p, f"sample rate {sr} Hz, expected {SAMPLE_RATE} Hz (format the audio to 16 kHz, "
                                f"recipe stage 2, or pass --resample)")
        n = int(math.ceil(frames * SAMPLE_RATE / sr))
        if n < min_samples:
            raise AudioError(p, f"too short: {n} samples at 16 kHz, the model needs at least {min_samples}")
        lengths.append(n)
    order = sorted(range(len(paths)), key=lambda i: (-lengths[i], i))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]

    def load(i: int) -> torch.Tensor:
        wav = load_audio(paths[i], resample=resample)
        if wav.numel() < min_samples:
            raise AudioError(paths[i], f"too short: {wav.numel()} samples, the model needs at least {min_samples}")
        return wav

    bank = _RowBank(len(paths))
    seconds = 0.0
    bar = _progress(total=len(paths), desc="encode captions", enabled=progress, unit="utt")
    for idx, wavs in zip(batches, _prefetch(batches, load, workers)):
        lens = torch.tensor([w.numel() for w in wavs], dtype=torch.long)
        x = torch.zeros(len(wavs), int(lens.max()))
        for r, w in enumerate(wavs):
            x[r, :w.numel()] = w
        del wavs
        _sync(device)
        t0 = time.perf_counter()
        out = model.encode_audio(x.to(device), lens.to(device))
        rows = torch.tensor(idx, device=device)
        if kind == "fast_vgs":
            bank.put(rows, out.coarse, out.tokens, out.mask)
        else:
            bank.put(rows, out.coarse)
        del out
        _sync(device)
        seconds += time.perf_counter() - t0
        bar.update(len(idx))
    bar.close()
    if kind == "fast_vgs":
        from .models.fast_vgs import FaSTVGSAudioOutput

        return FaSTVGSAudioOutput(coarse=bank.coarse, tokens=bank.tokens, mask=bank.mask), seconds
    return bank.coarse, seconds


def _roi_loader(model, evalset: EvalSet, roi) -> Callable[[str], Tuple[torch.Tensor, torch.Tensor]]:
    from .features.store import RoIFeatureStore

    store = roi if isinstance(roi, RoIFeatureStore) else RoIFeatureStore(roi)
    c = model.config
    if store.feat_dim != c.visual_feat_dim:
        raise EvaluateError(f"{store.path}: RoI features are {store.feat_dim}-d, the model reads "
                            f"{c.visual_feat_dim}-d (visual_feat_dim); features and model do not match")
    if c.visual_pos_dim != 4:
        raise EvaluateError(f"the model reads {c.visual_pos_dim}-d box positions; the RoI store holds x1y1x2y2 boxes (4-d)")
    missing = store.missing(evalset.images)
    if missing:
        raise EvaluateError(
            f"{store.path}: image id {missing[0]!r} (used in {evalset.path / 'utt2img'}) is not in this store "
            f"({len(missing)} of {len(evalset.images)} images missing; extract features for this data dir with vgs-extract-roi)"
        )
    # Rows are stored by descending detector confidence; the model keeps the first img_feat_len, as officially.
    keep = c.img_feat_len

    def load(image_id: str):
        item = store[image_id]
        return torch.from_numpy(item["features"][:keep]), torch.from_numpy(item["boxes"][:keep])

    return load


@torch.inference_mode()
def encode_images(model, kind: str, evalset: EvalSet, device: torch.device, roi=None, batch_size: int = 16,
                  workers: int = 2, progress: bool = True) -> Tuple[Any, float]:
    """Encode every distinct image once; returns (outputs in ``evalset.images`` order, seconds).

    FaST-VGS reads RoI features and boxes from the ``roi`` store; the MIM family
    reads the image files of ``img.scp`` through the model's evaluation transform.
    """
    n = len(evalset.images)
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    if kind == "fast_vgs":
        get = _roi_loader(model, evalset, roi)
        load, workers = (lambda j: get(evalset.images[j])), 0  # h5py reads serialise anyway
    else:
        paths = evalset.image_paths()
        transform = model.image_transform(train=False)

        def load(j: int) -> torch.Tensor:
            return transform(load_image(paths[j]))

    bank = _RowBank(n)
    seconds = 0.0
    bar = _progress(total=n, desc="encode images", enabled=progress, unit="img")
    for idx, items in zip(batches, _prefetch(batches, load, workers)):
        _sync(device)
        t0 = time.perf_counter()
        rows = torch.tensor(idx, device=device)
        if kind == "fast_vgs":
            feats = torch.stack([f for f, _ in items]).to(device)
            boxes = torch.stack([b for _, b in items]).to(device)
            out = model.encode_image(feats, boxes)
            bank.put(rows, out.coarse, out.tokens, out.mask)
        else:
            out = model.encode_image(torch.stack(items).to(device))
            bank.put(rows, out.coarse)
        del out, items
        _sync(device)
        seconds += time.perf_counter() - t0
        bar.update(len(idx))
    bar.close()
    if kind == "fast_vgs":
        from .models.fast_vgs import FaSTVGSImageOutput

        return FaSTVGSImageOutput(coarse=bank.coarse, tokens=bank.tokens, mask=bank.mask), seconds
    return bank.coarse, seconds


# ----------------------------------------------------------------------------- scoring


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


@torch.inference_mode()
def coarse_retrieval(model, audio_coarse: torch.Tensor, image_coarse: torch.Tensor, audio_to_image: torch.Tensor,
                     index: str = "exact", ks: Sequence[int] = KS) -> Tuple[Any, float, Optional[torch.Tensor]]:
    """Recall of the coarse vectors: the full score matrix (``exact``) or a FAISS search of the top max(ks).

    Returns ``(recalls, seconds, S)``; ``S`` is the (N_audio, N_image) matrix (None with a FAISS index).
    """
    from .retrieval import CoarseIndex, rankings_from_scores, recall_at_k, recall_from_rankings

    device = audio_coarse.device
    a2i = audio_to_image.to(device)
    model.coarse_scores(audio_coarse[:1], image_coarse[:1])  # warm-up outside the timing
    _sync(device)
    t0 = time.perf_counter()
    if index == "exact":
        S = model.coarse_scores(audio_coarse, image_coarse)  # (N_audio, N_image)
        rankings_from_scores(S, max(ks))  # what a retrieval system returns; recall reads exact ranks below
        _sync(device)
        seconds = time.perf_counter() - t0
        return recall_at_k(S, a2i, ks), seconds, S
    k = max(ks)
    _, a2i_list = CoarseIndex(image_coarse, index).search(audio_coarse, k)
    _, i2a_list = CoarseIndex(audio_coarse, index).search(image_coarse, k)
    _sync(device)
    seconds = time.perf_counter() - t0
    return recall_from_rankings(a2i_list, i2a_list, a2i, ks), seconds, None


@torch.inference_mode()
def fine_matrix(model, audio, image, chunk_size: int = 256, progress: bool = True) -> torch.Tensor:
    """(N_audio, N_image) fine scores of every pair, scored in blocks of caption rows (progress bar)."""
    Na, Ni = len(audio), len(image)
    rows = max(1, (64 * chunk_size) // max(Ni, 1))
    S = torch.empty(Na, Ni, device=audio.tokens.device)
    bar = _progress(total=Na * Ni, desc="fine (all pairs)", enabled=progress, unit="pair")
    for s in range(0, Na, rows):
        e = min(s + rows, Na)
        S[s:e] = model.fine_scores(audio[s:e], image, None, chunk_size=chunk_size).float()
        bar.update((e - s) * Ni)
    bar.close()
    return S


def _ranks_by_id(S: torch.Tensor, audio_to_image: torch.Tensor, evalset: EvalSet) -> Dict[str, Dict[str, int]]:
    """0-based rank of the right answer per query, by id: ``{"A2I": {utt: rank}, "I2A": {image: rank}}``."""
    from .retrieval import retrieval_ranks

    a2i_rank, i2a_rank, _ = retrieval_ranks(S, audio_to_image)
    return {"A2I": dict(zip(evalset.utts, a2i_rank.tolist())), "I2A": dict(zip(evalset.images, i2a_rank.tolist()))}


def _index_kind(index: str) -> str:
    if index not in INDEXES:
        raise EvaluateError(f"unknown index {index!r}; choose from {INDEXES}")
    return "flat" if index == "faiss" else index


# ----------------------------------------------------------------------------- evaluate


def evaluate(
    model,
    data_dir: str | os.PathLike,
    roi=None,
    k_coarse: int = 100,
    protocol: str = "auto",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    index: str = "exact",
    fine_all: bool = False,
    max_fine_pairs: int = DEFAULT_MAX_FINE_PAIRS,
    fine_chunk_size: int = 256,
    resample: bool = False,
    workers: int = 2,
    progress: bool = True,
    per_query: bool = False,
) -> Dict[str, Any]:
    """Retrieval recall of ``model`` on ``data_dir``; returns the results dict (what ``--out`` holds).

    Args:
        model: a model directory (``config.yaml`` + ``model.safetensors``) or a loaded model.
        data_dir: a data dir with ``wav.scp``, ``utt2img`` and ``img.scp``.
        roi: RoI feature store (path or ``RoIFeatureStore``) of the data dir's
            images; required for FaST-VGS, refused for the MIM family.
        k_coarse: candidates per query of coarse-to-fine (official ``--topk`` 100).
        protocol: ``auto``, ``one-to-many`` or ``one-to-one`` (see the module docstring).
        batch_size: captions / images per encoder call.
        device: ``cpu``, ``cuda``, ``cuda:1``, ...
        index: coarse search, ``exact`` (torch) or a FAISS index (``faiss`` = ``flat``, ``ivf``, ``hnsw``).
        fine_all: score every pair with the cross encoder whatever the size.
        max_fine_pairs: otherwise all-pairs fine scoring runs only up to this many pairs.
        fine_chunk_size: pairs per cross-encoder call.
        resample: resample audio that is not 16 kHz instead of refusing it.
        workers: threads reading audio / image files ahead of the encoder.
        progress: tqdm bars on stderr.
        per_query: add ``per_query``: for coarse (exact index) and fine, the
            0-based rank of the right image per caption id and of the best
            caption per image id (ties count against the query).

    Example:
        >>> r = evaluate("exp/fast_vgs", "data/test", roi="dump/roi/test.h5")
        >>> r["methods"]["coarse_to_fine"]["A2I"]["10"]
    """
    from .checkpoint import load_model

    if batch_size < 1 or k_coarse < 1 or fine_chunk_size < 1:
        raise EvaluateError("batch_size, k_coarse and fine_chunk_size must be >= 1")
    index_kind = _index_kind(index)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvaluateError(f"device {device} asked for, but CUDA is not available here")
    model_path = None
    if isinstance(model, (str, os.PathLike)):
        model_path = str(model)
        model = load_model(model, map_location=device)
    else:
        model = model.to(device)
    kind = _model_kind(model)
    evalset = EvalSet(data_dir)
    proto = evalset.resolve_protocol(protocol)
    if kind == "fast_vgs" and roi is None:
        raise EvaluateError(f"{model_path or 'the model'}: FaST-VGS reads RoI features of the images: pass --roi "
                            f"FEATS.h5 for {evalset.path} (vgs-extract-roi, recipe stage 3)")
    if kind != "fast_vgs" and roi is not None:
        raise EvaluateError(f"{model_path or 'the model'}: a {kind} model encodes the image files of img.scp; "
                            f"--roi {roi} is for FaST-VGS models only")

    was_training = model.training
    model.eval()  # no dropout anywhere below (the cross encoder too); a passed model gets its mode back
    try:
        return _evaluate(model, model_path, kind, evalset, proto, roi, k_coarse, batch_size, device, index_kind,
                         fine_all, max_fine_pairs, fine_chunk_size, resample, workers, progress, per_query)
    finally:
        model.train(was_training)


def _evaluate(model, model_path, kind, evalset, proto, roi, k_coarse, batch_size, device, index_kind, fine_all,
              max_fine_pairs, fine_chunk_size, resample, workers, progress, per_query) -> Dict[str, Any]:
    from .retrieval import coarse_to_fine, rankings_from_scores, recall_at_k

    # Images first: a missing RoI row or image file fails before the (slower) audio pass.
    image, image_s = encode_images(model, kind, evalset, device, roi, batch_size, workers, progress)
    audio, audio_s = encode_captions(model, kind, evalset, device, batch_size, resample, workers, progress)
    Na, Ni = len(evalset.utts), len(evalset.images)
    n_queries = Na + Ni
    a2i = evalset.audio_to_image.to(device)
    a_coarse = audio.coarse if kind == "fast_vgs" else audio
    v_coarse = image.coarse if kind == "fast_vgs" else image
    methods: Dict[str, Dict[str, Any]] = {}
    skipped: Dict[str, str] = {}

    per_query_ranks: Dict[str, Dict[str, Dict[str, int]]] = {}
    recalls, sec, S = coarse_retrieval(model, a_coarse, v_coarse, evalset.audio_to_image, index_kind)
    methods["coarse"] = _method_result(recalls, sec, n_queries, index=index_kind)
    if per_query and S is not None:
        per_query_ranks["coarse"] = _ranks_by_id(S, a2i, evalset)
    del S

    if kind == "fast_vgs":
        n_pairs = Na * Ni
        with torch.inference_mode():
            model.fine_scores(audio[:1], image[:1])  # warm-up (lazy kernels, allocator) outside the timings
            if fine_all or n_pairs <= max_fine_pairs:
                _sync(device)
                t0 = time.perf_counter()
                S = fine_matrix(model, audio, image, fine_chunk_size, progress)
                rankings_from_scores(S, max(KS))
                _sync(device)
                sec = time.perf_counter() - t0
                methods["fine"] = _method_result(recall_at_k(S, a2i, KS), sec, n_queries, n_pairs=n_pairs)
                if per_query:
                    per_query_ranks["fine"] = _ranks_by_id(S, a2i, evalset)
                del S
            else:
                skipped["fine"] = (f"{Na} x {Ni} = {n_pairs} pairs > --max-fine-pairs {max_fine_pairs}; "
                                   f"pass --fine-all to score them all")

            bound = Na * min(k_coarse, Ni) + Ni * min(k_coarse, Na)
            bar = _progress(total=bound, desc=f"coarse-to-fine (k={k_coarse})", enabled=progress, unit="pair")

            def fine_fn(pairs: torch.Tensor) -> torch.Tensor:
                scores = model.fine_scores(audio, image, pairs, chunk_size=fine_chunk_size)
                bar.update(pairs.size(0))
                return scores

            _sync(device)
            t0 = time.perf_counter()
            ctf = coarse_to_fine(a_coarse, v_coarse, fine_fn, k_coarse=k_coarse, keep=max(KS), index=index_kind,
                                 query_block=max(1, (64 * fine_chunk_size) // max(min(k_coarse, max(Na, Ni)), 1)))
            _sync(device)  # its own timing does not wait for queued GPU work
            sec = time.perf_counter() - t0
            bar.close()
            methods["coarse_to_fine"] = _method_result(
                ctf.recall(a2i, KS), sec, n_queries, k_coarse=k_coarse, n_pairs=ctf.n_pairs, index=index_kind,
                coarse_seconds=ctf.timing["coarse"], fine_seconds=ctf.timing["fine"],
            )

    from . import __version__

    return {
        "model": model_path,
        "model_name": kind,
        "data": str(evalset.path),
        "roi": None if roi is None else str(getattr(roi, "path", roi)),
        "protocol": proto,
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
        "settings": {"k_coarse": k_coarse, "index": index_kind, "batch_size": batch_size,
                     "fine_chunk_size": fine_chunk_size, "max_fine_pairs": max_fine_pairs, "fine_all": fine_all,
                     "resample": resample, "torch_threads": torch.get_num_threads()},
        "versions": {"s3prl_vgs": __version__, "torch": torch.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"per_query": per_query_ranks} if per_query else {}),
    }


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
    p.add_argument("--num-workers", type=int, default=2, help="threads reading files ahead of the encoder (default 2)")
    p.add_argument("--per-query", action="store_true",
                   help="also save the rank of the right answer per caption / image id (coarse with the exact index, fine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


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
        results = evaluate(
            args.model, args.data, roi=args.roi, k_coarse=args.k_coarse, protocol=args.protocol,
            batch_size=args.batch_size, device=args.device, index=args.index, fine_all=args.fine_all,
            max_fine_pairs=args.max_fine_pairs, fine_chunk_size=args.fine_chunk_size, resample=args.resample,
            workers=args.num_workers, progress=not args.quiet, per_query=args.per_query,
        )
        out, md = write_results(results, args.out)
    except errors as e:
        print(f"vgs-evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(markdown_table(results).split("\n\n")[2], file=sys.stderr)  # the table itself
    print(f"wrote {out} and {md}", file=sys.stderr)
    return 0


__all__ = ["EvalSet", "EvaluateError", "evaluate", "encode_captions", "encode_images", "coarse_retrieval",
           "fine_matrix", "markdown_table", "write_results", "main"]

if __name__ == "__main__":
    sys.exit(main())
