"""The ZR2021 submission layout: ``meta.yaml`` and the rules ``zerospeech2021-validate`` applies.

::

    SUBMISSION/meta.yaml
    SUBMISSION/phonetic/<subset>/<utt>.txt          one per dataset wav, nothing else
    SUBMISSION/semantic/<kind>/{librispeech,synthetic}/<token>.txt
    SUBMISSION/lexical/  SUBMISSION/syntactic/      empty: a VG model's phonetic/semantic entry
    SUBMISSION/code/README.md                       (open_source: true needs a non-empty code/)

The validator compares the root's entries with this set exactly, so scores
and the run state live beside the submission, never inside it. Evaluate it
with ``zerospeech2021-evaluate DATASET SUBMISSION --no-lexical --no-syntactic``
(or validate with ``--only-dev --no-lexical --no-syntactic``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import FileProblem
from .dataset import ZR2021Dataset
from .layers import Layer

META_KEYS = ("author", "affiliation", "description", "open_source", "train_set", "visually_grounded", "gpu_budget", "parameters")
META_DEFAULTS: Dict[str, Any] = {
    "author": "unknown",
    "affiliation": "unknown",
    "open_source": True,
    "train_set": "unknown",
    "gpu_budget": 0,
}
PHONETIC_METRICS = ("cosine", "euclidean", "kl", "kl_symmetric")
POOLINGS = ("min", "max", "mean", "sum", "last", "lastlast", "off")
ROOT_DIRS = ("phonetic", "semantic", "lexical", "syntactic")


class SubmissionError(FileProblem):
    """A submission that breaks a ZR2021 layout rule; names the file."""


def build_meta(phonetic: Optional[Layer], semantic: Optional[Layer], pooling: str, description: str,
               overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``meta.yaml`` with the exact key set of ``zerospeech2021/meta.py`` (``visually_grounded: true``)."""
    meta = dict(META_DEFAULTS, description=description, visually_grounded=True)
    for k, v in (overrides or {}).items():
        if k not in META_KEYS or k in ("parameters", "visually_grounded"):
            raise SubmissionError(f"--meta {k}: not a settable meta.yaml key (choose from author, affiliation, "
                                  f"description, open_source, train_set, gpu_budget)")
        meta[k] = v
    # The validator needs both sections; a part that was not exported keeps the VG-track values.
    meta["parameters"] = {
        "phonetic": {"metric": "cosine", "frame_shift": phonetic.frame_shift if phonetic else 0.02},
        "semantic": {"metric": "cosine", "pooling": pooling},
    }
    return {k: meta[k] for k in META_KEYS}


def meta_yaml(meta: Dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(meta, sort_keys=False)


def check_meta(meta: Any, path: Path) -> None:
    if not isinstance(meta, dict) or set(meta) != set(META_KEYS):
        got = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise SubmissionError(path, f"keys must be exactly {sorted(META_KEYS)}, got {got}")
    if meta["visually_grounded"] is not True:
        raise SubmissionError(path, "visually_grounded must be true for a VGS model")
    for key in ("open_source",):
        if not isinstance(meta[key], bool):
            raise SubmissionError(path, f"{key} must be a boolean")
    if not isinstance(meta["gpu_budget"], (int, float)) or isinstance(meta["gpu_budget"], bool):
        raise SubmissionError(path, "gpu_budget must be a number")
    params = meta["parameters"]
    if not isinstance(params, dict) or set(params) != {"phonetic", "semantic"}:
        raise SubmissionError(path, "parameters must have exactly phonetic and semantic")
    ph, se = params["phonetic"], params["semantic"]
    if not isinstance(ph, dict) or set(ph) != {"metric", "frame_shift"} or ph["metric"] not in PHONETIC_METRICS:
        raise SubmissionError(path, f"parameters.phonetic must be {{metric: {'|'.join(PHONETIC_METRICS)}, frame_shift: seconds}}")
    if not isinstance(ph["frame_shift"], (int, float)) or not ph["frame_shift"] > 0:
        raise SubmissionError(path, "parameters.phonetic.frame_shift must be a positive number of seconds")
    if not isinstance(se, dict) or set(se) != {"metric", "pooling"} or se["pooling"] not in POOLINGS:
        raise SubmissionError(path, f"parameters.semantic must be {{metric: ..., pooling: {'|'.join(POOLINGS)}}}")


def check_feature_file(path: Path, full: bool = True) -> int:
    """The width D of a feature file; SubmissionError unless it loads as a 2-D float array.

    ``full=False`` checks the line count and the first and last lines only
    (files this package wrote atomically; a full parse of a LibriSpeech-size
    submission takes minutes).
    """
    if full:
        try:
            x = np.loadtxt(path, dtype=np.float64)
        except Exception as e:  # noqa: BLE001 -- numpy raises ValueError or its own subclasses
            raise SubmissionError(path, f"not a text matrix of floats ({' '.join(str(e).split())[:120]})") from None
        shape = x.shape
    else:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        try:
            widths = {len([float(v) for v in ln.split()]) for ln in (lines[:1] + lines[-1:])}
        except ValueError:
            raise SubmissionError(path, "not a text matrix of floats") from None
        if len(widths) > 1:
            raise SubmissionError(path, "lines of different widths")
        shape = (len(lines), widths.pop() if widths else 0)
        if shape[0] == 1 or shape[1] == 1:
            shape = (max(shape),)  # what np.loadtxt would give
    if len(shape) != 2:
        raise SubmissionError(path, f"not a 2D array (loads with shape {shape}; need >= 2 frames and >= 2 dims)")
    return shape[1]


def check_submission(sub: Path, dataset: ZR2021Dataset, full: bool = True) -> Dict[str, int]:
    """Apply the layout rules for the parts of ``dataset``; returns the feature width per task.

    Root entries exactly {meta.yaml, phonetic, semantic, lexical, syntactic}
    (+ code/ iff open_source), meta.yaml keys, one ``.txt`` per wav and
    nothing else in every folder, every file 2-D, one width per task.
    """
    from ..io import load_yaml

    sub = Path(sub)
    meta_path = sub / "meta.yaml"
    if not meta_path.is_file():
        raise SubmissionError(meta_path, "missing")
    meta = load_yaml(meta_path)
    check_meta(meta, meta_path)
    expected = {"meta.yaml", *ROOT_DIRS} | ({"code"} if meta["open_source"] else set())
    observed = {p.name for p in sub.iterdir()}
    if observed != expected:
        raise SubmissionError(sub, f"root must hold exactly {sorted(expected)}; extra {sorted(observed - expected)}, "
                                   f"missing {sorted(expected - observed)}")
    if meta["open_source"] and not any((sub / "code").iterdir()):
        raise SubmissionError(sub / "code", "open_source is true but code/ is empty")
    widths: Dict[str, int] = {}
    for part, stem, _ in dataset.wav_jobs():
        task = part.split("/")[0]
        f = sub / part / f"{stem}.txt"
        if not f.is_file():
            raise SubmissionError(f, "missing feature file")
        d = check_feature_file(f, full=full)
        if widths.setdefault(task, d) != d:
            raise SubmissionError(f, f"{d} columns; the other {task} files have {widths[task]}")
    stems: Dict[str, set] = {}
    for part, stem, _ in dataset.wav_jobs():
        stems.setdefault(part, set()).add(stem)
    for part, want in stems.items():
        have = {p.name for p in (sub / part).iterdir()}
        extra = sorted(have - {f"{s}.txt" for s in want})
        if extra:
            raise SubmissionError(sub / part / extra[0], "not a feature file of this dataset (the validator rejects it)")
    return widths


def code_readme(command: List[str], versions: Dict[str, str]) -> str:
    lines = ["# Code", "", "Features written by the s3prl-vgs package (`vgs-zerospeech`), from a model directory.", "",
             "Command:", "", "    " + " ".join(command), "", "Versions:", ""]
    lines += [f"- {k} {v}" for k, v in versions.items()]
    return "\n".join(lines) + "\n"


__all__ = ["build_meta", "meta_yaml", "check_meta", "check_submission", "check_feature_file", "code_readme",
           "SubmissionError", "META_KEYS", "POOLINGS"]
