"""Phonetic ABX through the ``zerospeech-libriabx2`` package (``zrc_abx2``), on CPU or GPU.

The ZR2021 condition is the triphone task: ``context_mode="within"``
(A, B, X share the context; libriabx2's ``"all"`` would add the
context-free "any" condition), speakers ``within`` and ``across``, the
angular ("cosine") frame distance averaged along the DTW path, groups
subsampled to ``max_size_group=10`` and ``max_x_across=5`` with the
package's seeded sampling. ``feature_size`` is the layer's exact frame shift.

The scores are error rates in [0, 1] (``score_phonetic.csv`` of
``zerospeech2021-evaluate``; papers print them x100).

Before the package runs, the items are sliced here with libri-light's rule
(start ``ceil(onset/shift - 0.5)``, end ``floor(offset/shift - 0.5)``,
exclusive): the package skips empty slices silently and crashes when all
are empty, so the number of items actually scored is reported and "none"
is a one-line error naming the frame shift.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Sequence, Tuple

from ..errors import VGSError
from .dataset import Item

SPEAKER_MODES = ("within", "across")


class ABXError(VGSError, ValueError):
    """ABX cannot be computed on these features (missing files, no usable item)."""


@dataclass(frozen=True)
class ABXConfig:
    distance: str = "cosine"
    max_size_group: int = 10
    max_x_across: int = 5
    seed: int = 3459
    device: str = "cpu"


def frame_slice(onset: float, offset: float, n_frames: int, frame_shift: float) -> Tuple[int, int]:
    """libri-light's [start, end) frame indices of an item (``ABXFeatureLoader._start_end_indices``)."""
    step = 1.0 / frame_shift
    start = max(0, int(math.ceil(step * onset - 0.5)))
    end = int(min(n_frames, int(math.floor(step * offset - 0.5))))
    return start, end


def count_frames(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def usable_items(items: Sequence[Item], n_frames: Dict[str, int], frame_shift: float) -> int:
    """Items whose slice holds at least one frame (the others are skipped by the package)."""
    n = 0
    for it in items:
        start, end = frame_slice(it.onset, it.offset, n_frames[it.file], frame_shift)
        n += start < n_frames[it.file] and end > start
    return n


def score_abx(features_dir: Path, item_file: Path, items: Sequence[Item], frame_shift: float,
              config: ABXConfig = ABXConfig()) -> Dict[str, float]:
    """ABX error within and across speakers of the ``.txt`` features in ``features_dir``.

    Returns ``{"within": e, "across": e, "items": N, "items_scored": n}``.
    """
    features_dir = Path(features_dir)
    files = sorted({it.file for it in items})
    missing = [f for f in files if not (features_dir / f"{f}.txt").is_file()]
    if missing:
        raise ABXError(f"{features_dir}: no features for {len(missing)} file(s) of {item_file} (first: {missing[0]}.txt)")
    n_frames = {f: count_frames(features_dir / f"{f}.txt") for f in files}
    scored = usable_items(items, n_frames, frame_shift)
    if scored == 0:
        raise ABXError(f"{item_file}: no item spans a whole frame at frame shift {frame_shift:g} s "
                       f"(a layer this coarse cannot be scored by ABX)")

    from zrc_abx2 import EvalABX, EvalArgs

    args = EvalArgs(
        path_data=str(features_dir), path_item_file=str(item_file), file_extension=".txt",
        feature_size=frame_shift, cuda=config.device.startswith("cuda"), speaker_mode="all", context_mode="within",
        distance_mode=config.distance, max_size_group=config.max_size_group, max_x_across=config.max_x_across,
        seed=config.seed, pooling="none",
    )
    log = io.StringIO()
    # The package prints its arguments and progress to stdout and uses deprecated torch.sparse
    # constructors; keep our stdout for the results table.
    with contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = EvalABX().eval_abx(args)
    out: Dict[str, float] = {}
    for row in rows:
        if row["abx-c-condition"] == "within":
            out[row["abx-s-condition"]] = float(row["score"])
    if set(out) != set(SPEAKER_MODES):
        raise ABXError(f"{item_file}: zrc_abx2 returned conditions {sorted(out)}, expected {list(SPEAKER_MODES)}")
    return {**out, "items": len(items), "items_scored": scored}


def mean_error(scores: Iterable[Dict[str, float]]) -> float:
    vals = [s[m] for s in scores for m in SPEAKER_MODES]
    return sum(vals) / len(vals)


__all__ = ["ABXConfig", "ABXError", "score_abx", "frame_slice", "usable_items", "count_frames", "mean_error"]
