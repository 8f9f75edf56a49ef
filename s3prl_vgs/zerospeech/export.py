"""Write the features of a ZR2021 dataset as a submission tree, resumably.

Layout of an output directory ``OUT``::

    OUT/run.json                  what these features are (model, layers, dataset) + cached ABX scores
    OUT/submission.partial/       the submission while it is being written
    OUT/submission/               the finished ZR2021 submission (renamed from .partial at the very end)
    OUT/layers/<stream>.<index>/<subset>/<utt>.txt    every layer of a sweep (--phonetic-layer all)

Every feature file is written atomically (temporary sibling, then rename),
so an existing file is a finished one: a killed run resumes where it
stopped, and files already written are not recomputed. ``submission/``
appears only once every file, ``meta.yaml`` and the layout check are done.
A rerun with another model, layer set or dataset into the same ``OUT`` is
refused (``--overwrite`` starts it afresh) instead of mixing features.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import FileProblem, VGSError
from ..io import atomic_write_text, load_json
from .dataset import ZR2021Dataset
from .features import FeatureModel, frames_to_text
from .layers import Layer
from .submission import check_submission, code_readme, meta_yaml

SUBMISSION = "submission"
PARTIAL = "submission.partial"
LAYERS = "layers"
STATE = "run.json"
FORMAT = 1  # bump when the text written for the same layer changes


class ExportError(VGSError, ValueError):
    """The output directory cannot be used for this run; names it."""


@dataclass
class ExportPlan:
    out: Path
    phonetic: Optional[Layer]  # the submission's phonetic layer (None: phonetic not run)
    semantic: Optional[Layer]
    sweep: List[Layer] = field(default_factory=list)  # phonetic layers with their own trees

    def layer_dir(self, layer: Layer) -> Path:
        return self.out / LAYERS / f"{layer.stream}.{layer.index}"

    def phonetic_dir(self, layer: Layer, subset: str) -> Path:
        """Where the ``.txt`` files of ``layer`` on ``subset`` are, once the export is complete."""
        if layer in self.sweep:
            return self.layer_dir(layer) / subset
        return self.out / SUBMISSION / "phonetic" / subset


def model_fingerprint(model_dir: Path, random_init: Optional[int]) -> Dict[str, Any]:
    """Identifies the weights without hashing them (size + mtime of the safetensors, hash of the config)."""
    model_dir = Path(model_dir).resolve()
    cfg = model_dir / "config.yaml"
    fp: Dict[str, Any] = {"dir": str(model_dir), "config_sha256": hashlib.sha256(cfg.read_bytes()).hexdigest()}
    if random_init is None:
        w = os.stat(model_dir / "model.safetensors")
        fp["weights"] = [w.st_size, w.st_mtime_ns]
    else:
        fp["random_init_seed"] = random_init
    return fp


def fingerprint(plan: ExportPlan, model: Dict[str, Any], dataset: ZR2021Dataset) -> Dict[str, Any]:
    return {
        "format": FORMAT,
        "model": model,
        "dataset": str(dataset.root.resolve()),
        "parts": sorted({part for part, _, _ in dataset.wav_jobs()}),
        "phonetic": plan.phonetic.name if plan.phonetic else None,
        "semantic": plan.semantic.name if plan.semantic else None,
        "sweep": [layer.name for layer in plan.sweep],
    }


def open_run(out: Path, fp: Dict[str, Any], overwrite: bool = False) -> Dict[str, Any]:
    """The run state of ``out`` for fingerprint ``fp`` (created, resumed, or refused)."""
    out = Path(out)
    state_path = out / STATE
    ours = [out / n for n in (SUBMISSION, PARTIAL, LAYERS, STATE)]
    if state_path.is_file():
        state = load_json(state_path)
        if isinstance(state, dict) and state.get("fingerprint") == fp:
            return state
        if not overwrite:
            old = state.get("fingerprint", {}) if isinstance(state, dict) else {}
            diff = sorted(k for k in set(fp) | set(old) if fp.get(k) != old.get(k))
            raise ExportError(f"{out}: holds features of another run (differs in {', '.join(diff) or 'format'}); "
                              "pass --overwrite to replace them, or choose another --out")
    elif any(p.exists() for p in ours) and not overwrite:
        raise ExportError(f"{out}: has {SUBMISSION}/ or {LAYERS}/ but no {STATE}; not written by this tool "
                          "(pass --overwrite to replace them)")
    for p in ours:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    state = {"fingerprint": fp, "complete": False, "abx": {}}
    save_state(out, state)
    return state


def save_state(out: Path, state: Dict[str, Any]) -> None:
    import json

    atomic_write_text(Path(out) / STATE, json.dumps(state, indent=1) + "\n")


def _remove_temporaries(root: Path) -> None:
    # Left by a killed atomic write (s3prl_vgs.io names them .<name>.tmp<pid>).
    if root.is_dir():
        for p in root.rglob(".*.tmp*"):
            p.unlink(missing_ok=True)


def _link(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def export(fm: FeatureModel, dataset: ZR2021Dataset, plan: ExportPlan, state: Dict[str, Any], meta: Dict[str, Any],
           command: List[str], versions: Dict[str, str], progress: bool = True) -> Dict[str, int]:
    """Write every feature file that is not there yet, then finish the submission; returns counts."""
    out = plan.out
    final, partial = out / SUBMISSION, out / PARTIAL
    if state.get("complete") and final.is_dir():
        atomic_write_text(final / "meta.yaml", meta_yaml(meta))  # pooling / meta options may have changed
        return {"written": 0, "kept": len(dataset.wav_jobs())}
    partial.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(partial)
    _remove_temporaries(out / LAYERS)
    from tqdm import tqdm

    counts = {"written": 0, "kept": 0}
    jobs = dataset.wav_jobs()
    bar = tqdm(jobs, desc="features", unit="wav", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for part, stem, wav in bar:
        task = part.split("/")[0]
        targets: Dict[Path, Layer] = {}  # file -> layer it holds
        links: Dict[Path, Path] = {}  # submission file -> sweep file it is a link of
        if task == "phonetic" and plan.phonetic is not None:
            subset = part.split("/")[1]
            for layer in plan.sweep:
                targets[plan.layer_dir(layer) / subset / f"{stem}.txt"] = layer
            sub_file = partial / part / f"{stem}.txt"
            if plan.phonetic in plan.sweep:
                links[sub_file] = plan.layer_dir(plan.phonetic) / subset / f"{stem}.txt"
            else:
                targets[sub_file] = plan.phonetic
        elif task == "semantic" and plan.semantic is not None:
            targets[partial / part / f"{stem}.txt"] = plan.semantic
        todo = {f: layer for f, layer in targets.items() if not f.is_file()}
        if todo:
            frames = fm.extract(wav, sorted(set(todo.values()), key=lambda layer: layer.name))
            for f, layer in todo.items():
                f.parent.mkdir(parents=True, exist_ok=True)
                try:
                    text = frames_to_text(frames[layer])
                except ValueError as e:
                    raise FileProblem(wav, f"{layer.short_name}: {e}") from None
                atomic_write_text(f, text)
            counts["written"] += 1
        else:
            counts["kept"] += 1
        for dst, src in links.items():
            if not dst.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                _link(src, dst)
    bar.close()
    for name in ("lexical", "syntactic"):
        (partial / name).mkdir(exist_ok=True)
    for part in {p for p, _, _ in jobs}:  # a task that was not run still gets its folders
        (partial / part).mkdir(parents=True, exist_ok=True)
    (partial / "phonetic").mkdir(exist_ok=True)
    (partial / "semantic").mkdir(exist_ok=True)
    code = partial / "code"
    if meta.get("open_source"):
        code.mkdir(exist_ok=True)
        atomic_write_text(code / "README.md", code_readme(command, versions))
    elif code.exists():
        shutil.rmtree(code)
    atomic_write_text(partial / "meta.yaml", meta_yaml(meta))
    check_submission(partial, dataset, full=False)
    if final.exists():
        shutil.rmtree(final)
    os.rename(partial, final)
    state["complete"] = True
    save_state(out, state)
    return counts


__all__ = ["ExportPlan", "ExportError", "export", "open_run", "save_state", "fingerprint", "model_fingerprint",
           "SUBMISSION", "PARTIAL", "LAYERS", "STATE"]
