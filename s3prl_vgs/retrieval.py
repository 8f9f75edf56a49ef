"""Speech-image retrieval: recall@k, coarse / FAISS search, coarse-to-fine re-ranking.

Pure torch (FAISS optional). Score matrices are (N_audio, N_image), audios as
rows; ``audio_to_image[i]`` is the gallery index of caption i's image.

Protocols (official ``steps/utils.py``): one-to-many (SpokenCOCO, Flickr8k:
several captions per image) and one-to-one (Places: ``audio_to_image =
arange(N)``) are the same computation here:
  * A2I ("I_r@k" in the official logs): for each caption, a hit when its image
    is among the top k images; averaged over captions;
  * I2A ("A_r@k"): for each image, a hit when *any* of its captions is among
    the top k captions; averaged over images that have at least one caption.

Ties count against the query: an item scoring exactly as much as the correct
one is ranked ahead of it, so constant scores never give free hits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

Recalls = Dict[str, Dict[int, float]]


# ----------------------------------------------------------------------------- recall


def _check_targets(audio_to_image: torch.Tensor, n_audio: int, n_image: int) -> torch.Tensor:
    audio_to_image = torch.as_tensor(audio_to_image)
    if audio_to_image.dim() != 1 or audio_to_image.numel() != n_audio:
        raise ValueError(f"audio_to_image must be (N_audio,) = ({n_audio},), got {tuple(audio_to_image.shape)}")
    if audio_to_image.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"audio_to_image must be integer image indices, got {audio_to_image.dtype}")
    audio_to_image = audio_to_image.long()
    if n_audio and (int(audio_to_image.min()) < 0 or int(audio_to_image.max()) >= n_image):
        raise ValueError(f"audio_to_image has indices outside [0, {n_image})")
    return audio_to_image


def _check_ks(ks: Sequence[int]) -> Tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def retrieval_ranks(scores: torch.Tensor, audio_to_image: torch.Tensor, block: int = 4096) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """0-based rank of the correct answer for every query in both directions.

    Args:
        scores: (N_audio, N_image), audios as rows.
        audio_to_image: (N_audio,) long.
        block: caption rows processed at a time (bounds memory).

    Returns:
        ``(a2i_rank (N_audio,), i2a_rank (N_image,), has_caption (N_image,) bool)``.
        ``i2a_rank[j]`` is the rank of image j's best caption (undefined where
        ``has_caption`` is False).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N_audio, N_image), got {tuple(scores.shape)}")
    Na, Ni = scores.shape
    t = _check_targets(audio_to_image, Na, Ni).to(scores.device)
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    rows = torch.arange(Na, device=scores.device)
    true = scores[rows, t]  # (Na,)
    # I2A: each image's best caption score.
    best = torch.full((Ni,), float("-inf"), dtype=scores.dtype, device=scores.device)
    best = best.scatter_reduce(0, t, true, reduce="amax")
    has_caption = torch.zeros(Ni, dtype=torch.bool, device=scores.device)
    has_caption[t] = True
    a2i = torch.empty(Na, dtype=torch.long, device=scores.device)
    i2a = torch.zeros(Ni, dtype=torch.long, device=scores.device)
    for s in range(0, Na, block):
        S = scores[s:s + block]  # (b, Ni)
        tb = t[s:s + block]
        own = torch.zeros_like(S, dtype=torch.bool)
        own[torch.arange(S.size(0), device=S.device), tb] = True
        # A2I: other images scoring >= the correct one.
        a2i[s:s + block] = ((S >= true[s:s + block, None]) & ~own).sum(1)
        # I2A: captions of other images scoring >= the image's best caption.
        i2a += ((S >= best[None, :]) & ~own).sum(0)
    return a2i, i2a, has_caption


def _recalls_from_ranks(a2i_rank, i2a_rank, has_caption, ks) -> Recalls:
    out: Recalls = {"A2I": {}, "I2A": {}}
    i2a_rank = i2a_rank[has_caption]
    for k in ks:
        out["A2I"][k] = 100.0 * (a2i_rank < k).double().mean().item() if a2i_rank.numel() else 0.0
        out["I2A"][k] = 100.0 * (i2a_rank < k).double().mean().item() if i2a_rank.numel() else 0.0
    return out


def recall_at_k(scores: torch.Tensor, audio_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> Recalls:
    """Recall@k in percent, both directions, from a full score matrix.

    Args:
        scores: (N_audio, N_image), audios as rows.
        audio_to_image: (N_audio,) long, caption i describes image ``audio_to_image[i]``.
        ks: cut-offs.

    Returns:
        ``{"A2I": {k: pct}, "I2A": {k: pct}}`` (see the module docstring).

    Example:
        >>> S = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
        >>> recall_at_k(S, torch.tensor([0, 1, 1]), ks=(1,))
        {'A2I': {1: 66.66666666666667}, 'I2A': {1: 100.0}}
    """
    ks = _check_ks(ks)
    return _recalls_from_ranks(*retrieval_ranks(scores, audio_to_image), ks)


def recall_from_rankings(a2i: torch.Tensor, i2a: torch.Tensor, audio_to_image: torch.Tensor,
                         ks: Sequence[int] = (1, 5, 10)) -> Recalls:
    """Recall@k from ranked lists, with the semantics of :func:`recall_at_k`.

    Args:
        a2i: (N_audio, K) image indices, best first (-1 = no item).
        i2a: (N_image, K) caption indices, best first (-1 = no item).
        audio_to_image: (N_audio,) long.
        ks: cut-offs; where k > K only the K listed items count.
    """
    ks = _check_ks(ks)
    Na, Ni = a2i.size(0), i2a.size(0)
    t = _check_targets(audio_to_image, Na, Ni).to(a2i.device)
    has_caption = torch.zeros(Ni, dtype=torch.bool, device=a2i.device)
    has_caption[t] = True
    big = torch.iinfo(torch.long).max

    def first_hit(hit: torch.Tensor) -> torch.Tensor:  # (N, K) bool -> (N,) first hit position or big
        pos = torch.arange(hit.size(1), device=hit.device).expand_as(hit)
        return torch.where(hit, pos, torch.full_like(pos, big)).min(1).values if hit.size(1) else hit.new_full((hit.size(0),), big, dtype=torch.long)

    a2i_rank = first_hit(a2i == t[:, None])
    owner = torch.where(i2a >= 0, t[i2a.clamp(min=0)], torch.full_like(i2a, -1))  # (Ni, K) image of each listed caption
    i2a_rank = first_hit(owner == torch.arange(Ni, device=i2a.device)[:, None])
    return _recalls_from_ranks(a2i_rank, i2a_rank, has_caption, ks)


def rankings_from_scores(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k lists from a full (N_audio, N_image) matrix: ``(a2i (Na, k), i2a (Ni, k))``."""
    return scores.topk(min(k, scores.size(1)), dim=1).indices, scores.t().topk(min(k, scores.size(0)), dim=1).indices


# ----------------------------------------------------------------------------- coarse search


class CoarseIndex:
    """Maximum-inner-product search over a gallery of coarse vectors.

    Args:
        gallery: (N, D) vectors.
        kind: ``"exact"`` (torch matmul + topk, any device), ``"flat"``
            (``faiss.IndexFlatIP``, exact), ``"ivf"`` (``faiss.IndexIVFFlat``,
            approximate; ``nlist``, ``nprobe``) or ``"hnsw"``
            (``faiss.IndexHNSWFlat``, approximate; ``hnsw_m``, ``ef_search``).
        block: query rows per matmul for ``"exact"``.
    """

    KINDS = ("exact", "flat", "ivf", "hnsw")

    def __init__(self, gallery: torch.Tensor, kind: str = "exact", nlist: Optional[int] = None, nprobe: int = 16,
                 hnsw_m: int = 32, ef_search: int = 128, block: int = 4096):
        if kind not in self.KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose from {self.KINDS}")
        if gallery.dim() != 2:
            raise ValueError(f"gallery must be (N, D), got {tuple(gallery.shape)}")
        self.kind, self.block = kind, block
        self.size = gallery.size(0)
        self.device = gallery.device
        if kind == "exact":
            self.gallery = gallery.detach()
            return
        try:
            import faiss
        except ImportError:
            raise ImportError(f"index kind {kind!r} needs faiss (pip install faiss-cpu)") from None
        x = gallery.detach().float().cpu().contiguous().numpy()
        d = x.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "ivf":
            nlist = nlist or max(1, min(int(4 * self.size ** 0.5), self.size // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.nprobe = min(nprobe, nlist)
        else:
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = max(ef_search, 1)
        index.add(x)
        self.index = index

    def search(self, queries: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-k gallery items per query: ``(scores (Q, k), indices (Q, k) long)``, -1 where missing."""
        k = min(k, self.size)
        if self.kind == "exact":
            vals, idx = [], []
            for s in range(0, queries.size(0), self.block):
                v, i = (queries[s:s + self.block].to(self.gallery) @ self.gallery.t()).topk(k, dim=1)
                vals.append(v)
                idx.append(i)
            return torch.cat(vals), torch.cat(idx)
        D, I = self.index.search(queries.detach().float().cpu().contiguous().numpy(), k)
        return torch.from_numpy(D).to(self.device), torch.from_numpy(I).long().to(self.device)


# ----------------------------------------------------------------------------- coarse to fine


@dataclass
class CoarseToFineResult:
    """Ranked lists of a coarse-to-fine search. K = ``keep``."""

    a2i: torch.Tensor  # (N_audio, K) image indices, best first by fine score (-1 = none)
    a2i_scores: torch.Tensor  # (N_audio, K) their fine scores
    i2a: torch.Tensor  # (N_image, K) caption indices, best first
    i2a_scores: torch.Tensor  # (N_image, K)
    n_pairs: int  # cross-encoder pairs actually scored
    timing: Dict[str, float] = field(default_factory=dict)  # seconds: coarse, fine, total; per_query_ms

    def recall(self, audio_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> Recalls:
        return recall_from_rankings(self.a2i, self.i2a, audio_to_image, ks)


def _rerank(cand: torch.Tensor, fine: torch.Tensor, keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Q, k) candidates and their fine scores -> the best ``keep`` of each row."""
    fine = fine.masked_fill(cand < 0, float("-inf"))
    vals, order = fine.topk(min(keep, cand.size(1)), dim=1)
    return cand.gather(1, order).masked_fill(vals == float("-inf"), -1), vals


@torch.no_grad()
def coarse_to_fine(
    audio_coarse: torch.Tensor,
    image_coarse: torch.Tensor,
    fine_fn: Callable[[torch.Tensor], torch.Tensor],
    k_coarse: int = 100,
    keep: int = 10,
    index: str = "exact",
    query_block: int = 1024,
    dedupe: bool = True,
    index_options: Optional[dict] = None,
) -> CoarseToFineResult:
    """Top-``k_coarse`` candidates by coarse score, re-ranked by fine score, both directions.

    Streams: candidates are scored ``query_block`` queries at a time and only the
    best ``keep`` of each query are kept, so the full fine matrix never exists.
    The pairs of the smaller direction are scored first; with ``dedupe`` the
    other direction looks them up instead of scoring them again.

    Args:
        audio_coarse: (N_audio, D); image_coarse: (N_image, D).
        fine_fn: (P, 2) long (audio index, image index) -> (P,) fine scores,
            e.g. ``lambda p: model.fine_scores(audio, image, p)``.
        k_coarse: candidates per query (official ``--topk`` 100).
        keep: ranks kept per query (>= the largest k of recall@k).
        index: coarse search, see :class:`CoarseIndex`.
        query_block: queries per fine-scoring call.
        index_options: extra :class:`CoarseIndex` arguments (``nlist``, ``nprobe``, ...).

    Returns:
        :class:`CoarseToFineResult`; ``.recall(audio_to_image)`` gives recall@k.
    """
    if k_coarse < 1 or keep < 1 or query_block < 1:
        raise ValueError("k_coarse, keep and query_block must be >= 1")
    Na, Ni = audio_coarse.size(0), image_coarse.size(0)
    opts = index_options or {}
    t0 = time.perf_counter()
    _, a2i_cand = CoarseIndex(image_coarse, index, **opts).search(audio_coarse, k_coarse)  # (Na, ka)
    _, i2a_cand = CoarseIndex(audio_coarse, index, **opts).search(image_coarse, k_coarse)  # (Ni, ki)
    t1 = time.perf_counter()

    def pairs_of(queries: torch.Tensor, cand: torch.Tensor, audio_queries: bool) -> torch.Tensor:
        q = queries[:, None].expand_as(cand)
        return torch.stack([q, cand] if audio_queries else [cand, q], dim=-1).reshape(-1, 2)

    def key(pairs: torch.Tensor) -> torch.Tensor:
        return pairs[:, 0] * Ni + pairs[:, 1]

    directions = [("a2i", a2i_cand, True), ("i2a", i2a_cand, False)]
    directions.sort(key=lambda d: d[1].numel())  # smaller first: its scores serve as the lookup table
    results, n_pairs = {}, 0
    lookup_keys = lookup_vals = None
    for d, (name, cand, audio_queries) in enumerate(directions):
        ranked, ranked_scores, all_keys, all_vals = [], [], [], []
        for s in range(0, cand.size(0), query_block):
            c = cand[s:s + query_block]
            queries = torch.arange(s, s + c.size(0), device=c.device)
            pairs = pairs_of(queries, c, audio_queries)
            valid = (pairs >= 0).all(1)
            scores = torch.full((pairs.size(0),), float("-inf"), device=c.device)
            todo = valid.clone()
            if dedupe and lookup_keys is not None and lookup_keys.numel():
                k = key(pairs)
                pos = torch.searchsorted(lookup_keys, k).clamp(max=lookup_keys.numel() - 1)
                found = valid & (lookup_keys[pos] == k)
                scores[found] = lookup_vals[pos[found]].to(scores.dtype)
                todo &= ~found
            if todo.any():
                scores[todo] = fine_fn(pairs[todo]).float().to(scores.device)
                n_pairs += int(todo.sum())
            if dedupe and d == 0:
                all_keys.append(key(pairs[valid]))
                all_vals.append(scores[valid])
            r, v = _rerank(c, scores.view(c.shape), keep)
            ranked.append(r)
            ranked_scores.append(v)
        results[name] = (torch.cat(ranked), torch.cat(ranked_scores))
        if dedupe and d == 0 and all_keys:
            lookup_keys, order = torch.cat(all_keys).sort()
            lookup_vals = torch.cat(all_vals)[order]
    t2 = time.perf_counter()
    timing = {"coarse": t1 - t0, "fine": t2 - t1, "total": t2 - t0,
              "per_query_ms": 1000.0 * (t2 - t0) / max(Na + Ni, 1)}
    return CoarseToFineResult(a2i=results["a2i"][0], a2i_scores=results["a2i"][1], i2a=results["i2a"][0],
                              i2a_scores=results["i2a"][1], n_pairs=n_pairs, timing=timing)


# ----------------------------------------------------------------------------- model scoring


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def coarse_retrieval(model, audio_coarse: torch.Tensor, image_coarse: torch.Tensor, audio_to_image: torch.Tensor,
                     index: str = "exact", ks: Sequence[int] = (1, 5, 10)) -> Tuple[Recalls, float, Optional[torch.Tensor]]:
    """Recall of the coarse vectors: the model's full score matrix (``exact``) or a FAISS search of the top max(ks).

    Returns ``(recalls, seconds, S)``; ``S`` is the (N_audio, N_image) matrix (None with a FAISS index).
    Seconds cover scoring and ranking in both directions (a warm-up call runs first, outside the timing).
    """
    device = audio_coarse.device
    a2i = torch.as_tensor(audio_to_image).to(device)
    model.coarse_scores(audio_coarse[:1], image_coarse[:1])
    sync(device)
    t0 = time.perf_counter()
    if index == "exact":
        S = model.coarse_scores(audio_coarse, image_coarse)  # (N_audio, N_image)
        rankings_from_scores(S, max(ks))  # what a retrieval system returns; recall reads exact ranks below
        sync(device)
        seconds = time.perf_counter() - t0
        return recall_at_k(S, a2i, ks), seconds, S
    k = max(ks)
    _, a2i_list = CoarseIndex(image_coarse, index).search(audio_coarse, k)
    _, i2a_list = CoarseIndex(audio_coarse, index).search(image_coarse, k)
    sync(device)
    seconds = time.perf_counter() - t0
    return recall_from_rankings(a2i_list, i2a_list, a2i, ks), seconds, None


@torch.inference_mode()
def fine_matrix(model, audio, image, chunk_size: int = 256, progress=None) -> torch.Tensor:
    """(N_audio, N_image) ``model.fine_scores`` of every pair, in blocks of caption rows.

    Args:
        progress: optional bar with ``update(n)``, advanced by the pairs scored.
    """
    Na, Ni = len(audio), len(image)
    rows = max(1, (64 * chunk_size) // max(Ni, 1))
    S = torch.empty(Na, Ni, device=audio.coarse.device)
    for s in range(0, Na, rows):
        e = min(s + rows, Na)
        S[s:e] = model.fine_scores(audio[s:e], image, None, chunk_size=chunk_size).float()
        if progress is not None:
            progress.update((e - s) * Ni)
    return S


def fine_fn_for(model, audio, image, chunk_size: Optional[int] = 256, progress=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``fine_fn`` of :func:`coarse_to_fine` for a model with ``fine_scores`` and its cached encoder outputs.

    Args:
        model: implements ``fine_scores(audio, image, pairs, chunk_size=...)``.
        audio, image: ``encode_audio`` / ``encode_image`` outputs (or a cache of them).
        chunk_size: pairs per cross-encoder call.
        progress: optional bar with ``update(n)``, advanced by the pairs scored.
    """
    def fine_fn(pairs: torch.Tensor) -> torch.Tensor:
        scores = model.fine_scores(audio, image, pairs, chunk_size=chunk_size)
        if progress is not None:
            progress.update(pairs.size(0))
        return scores

    return fine_fn


__all__ = [
    "recall_at_k",
    "recall_from_rankings",
    "retrieval_ranks",
    "rankings_from_scores",
    "CoarseIndex",
    "CoarseToFineResult",
    "coarse_to_fine",
    "fine_fn_for",
    "coarse_retrieval",
    "fine_matrix",
]
