"""Semantic similarity (sSIMI) with scipy, as ZR2021's ``semantic.py`` computes it.

1. Each token's (T, D) features are pooled over time (max, mean, min, sum,
   last, lastlast: ``x[-2]``).
2. A word pair's distance is the mean ``scipy.spatial.distance.cdist``
   distance (``cosine`` = 1 - cos) over token pairs: all token_1 x token_2
   pairs for the librispeech subset; for the synthetic subset only the
   pairs spoken by the same voice (the tokens are joined on ``voice``), so
   the voice does not enter the distance.
3. Per subset and pair dataset: ``100 x Spearman(-human score, distance)``;
   per subset, the mean over datasets and the mean weighted by pair count
   (the leaderboard's two summaries; the dev set has one dataset, mturk-771).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .dataset import SEMANTIC_SUBSETS, GoldToken, WordPair

POOLING_FNS = {
    "max": lambda x: x.max(axis=0),
    "mean": lambda x: x.mean(axis=0),
    "min": lambda x: x.min(axis=0),
    "sum": lambda x: x.sum(axis=0),
    "last": lambda x: x[-1],
    "lastlast": lambda x: x[-2] if len(x) > 1 else x[-1],
}


def pool(x: np.ndarray, pooling: str) -> np.ndarray:
    if pooling not in POOLING_FNS:
        raise ValueError(f"pooling must be one of {sorted(POOLING_FNS)}, got {pooling!r}")
    x = np.asarray(x, dtype=np.float64)
    return POOLING_FNS[pooling](x if x.ndim == 2 else x[None])


def load_pooled(semantic_dir: Path, gold: Sequence[GoldToken], pooling: str) -> Dict[Tuple[str, str], np.ndarray]:
    """``{(type, filename): pooled vector}`` from ``semantic_dir/<type>/<filename>.txt``."""
    return {(t.type, t.filename): pool(np.loadtxt(Path(semantic_dir) / t.type / f"{t.filename}.txt", ndmin=2), pooling)
            for t in gold}


def pair_distances(gold: Sequence[GoldToken], pairs: Sequence[WordPair], vectors: Mapping[Tuple[str, str], np.ndarray],
                   metric: str = "cosine") -> List[Optional[float]]:
    """The machine distance of every pair (None for a synthetic pair with no voice in common)."""
    from scipy.spatial.distance import cdist

    tokens: Dict[Tuple[str, str], List[GoldToken]] = defaultdict(list)
    for t in gold:
        tokens[(t.type, t.word)].append(t)
    out: List[Optional[float]] = []
    for p in pairs:
        t1, t2 = tokens[(p.type, p.word_1)], tokens[(p.type, p.word_2)]
        x1 = np.stack([vectors[(t.type, t.filename)] for t in t1])
        x2 = np.stack([vectors[(t.type, t.filename)] for t in t2])
        d = cdist(x1, x2, metric=metric)  # (n1, n2)
        if p.type == "synthetic":
            same = np.array([[a.voice == b.voice for b in t2] for a in t1])
            out.append(float(d[same].mean()) if same.any() else None)
        else:
            out.append(float(d.mean()))
    return out


def ssimi(gold: Sequence[GoldToken], pairs: Sequence[WordPair], vectors: Mapping[Tuple[str, str], np.ndarray],
          metric: str = "cosine") -> Dict[str, dict]:
    """Scores per subset: ``{subset: {"datasets": {name: {"score", "pairs"}}, "mean", "weighted"}}``."""
    from scipy.stats import spearmanr

    dist = pair_distances(gold, pairs, vectors, metric)
    groups: Dict[Tuple[str, str], List[Tuple[float, float]]] = defaultdict(list)
    skipped: Dict[str, int] = defaultdict(int)
    for p, d in zip(pairs, dist):
        if d is None:
            skipped[p.type] += 1
        else:
            groups[(p.type, p.dataset)].append((p.score, d))
    result: Dict[str, dict] = {}
    for subset in SEMANTIC_SUBSETS:
        datasets = {}
        for (typ, name), rows in sorted(groups.items()):
            if typ != subset:
                continue
            human, machine = np.array(rows).T
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a constant input gives NaN; reported as null
                rho = spearmanr(-human, machine).statistic
            datasets[name] = {"score": None if np.isnan(rho) else float(100 * rho), "pairs": len(rows)}
        valid = [d for d in datasets.values() if d["score"] is not None]
        n = sum(d["pairs"] for d in valid)
        result[subset] = {
            "datasets": datasets,
            "mean": float(np.mean([d["score"] for d in valid])) if valid else None,
            "weighted": float(sum(d["score"] * d["pairs"] for d in valid) / n) if valid else None,
            "pairs_skipped": skipped.get(subset, 0),
        }
    return result


__all__ = ["pool", "load_pooled", "pair_distances", "ssimi", "POOLING_FNS"]
