"""ZeroSpeech results as files: ``scores.json`` (schema below), a markdown table, the per-layer ABX plot.

``scores.json`` of one run (``vgs-zerospeech``)::

    schema: "s3prl-vgs.zerospeech/1"
    model: {dir, name, weights: "trained" | "random_init", seed}
    dataset, submission: paths
    phonetic: {layer, short, frame_shift, metric,
               abx: {dev-clean: {within, across, items, items_scored}, dev-other: {...}},
               mean}                     # ABX error rates in [0, 1]; mean of the four numbers
    semantic: {layer, short, frame_shift, pooling, metric,
               ssimi: {synthetic: {datasets: {NAME: {score, pairs}}, mean, weighted, pairs_skipped},
                       librispeech: {...}}}   # 100 x Spearman
    sweep: null | [{layer, short, frame_shift, abx: {...}, mean}, ...]   # --phonetic-layer all
    best_layer: null | name of the sweep layer with the lowest mean ABX
    abx_settings, versions, elapsed_s

``phonetic`` or ``semantic`` is null when that task was not run. A
comparison of several runs (recipe stage 9: trained vs random-init) is
``{schema: "s3prl-vgs.zerospeech.compare/1", runs: {NAME: <run scores>}}``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..cli import console_script
from ..errors import VGSError
from ..io import atomic_write_text, load_json

SCHEMA = "s3prl-vgs.zerospeech/1"
COMPARE_SCHEMA = "s3prl-vgs.zerospeech.compare/1"
ABX_COLUMNS = (("dev-clean", "within"), ("dev-clean", "across"), ("dev-other", "within"), ("dev-other", "across"))


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def _abx_cells(abx: Optional[Dict[str, dict]]) -> List[str]:
    abx = abx or {}
    return [_pct(abx.get(s, {}).get(m)) for s, m in ABX_COLUMNS]


def summary_row(name: str, scores: dict) -> List[str]:
    ph, se = scores.get("phonetic") or {}, scores.get("semantic") or {}
    ss = se.get("ssimi") or {}
    return ([name, ph.get("short", "-")] + _abx_cells(ph.get("abx"))
            + [se.get("short", "-") + (f" ({se['pooling']})" if se else ""),
               _num((ss.get("synthetic") or {}).get("mean")), _num((ss.get("librispeech") or {}).get("mean"))])


SUMMARY_HEADER = ["run", "ABX layer", "clean within", "clean across", "other within", "other across",
                  "sSIMI layer", "sSIMI synthetic", "sSIMI librispeech"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(scores: dict, name: str = "") -> str:
    """The readable form of one run's scores: summary, then the sweep if there is one."""
    name = name or ("random init" if scores["model"]["weights"] == "random_init" else "trained")
    parts = [f"ZeroSpeech 2021 ({scores['model']['name']}, {Path(scores['model']['dir']).name}, {name}); "
             "ABX: error rate in %, lower is better; sSIMI: 100 x Spearman, higher is better.", "",
             _table(SUMMARY_HEADER, [summary_row(name, scores)])]
    if scores.get("sweep"):
        rows = [[s["short"] + (" *" if s["layer"] == scores.get("best_layer") else "")] + _abx_cells(s["abx"])
                + [_pct(s["mean"])] for s in scores["sweep"]]
        parts += ["", "ABX error (%) per layer (* lowest mean):", "",
                  _table(["layer", "clean within", "clean across", "other within", "other across", "mean"], rows)]
    return "\n".join(parts) + "\n"


def compare_markdown(runs: Dict[str, dict]) -> str:
    return ("ZeroSpeech 2021; ABX: error rate in %, lower is better; sSIMI: 100 x Spearman, higher is better.\n\n"
            + _table(SUMMARY_HEADER, [summary_row(n, s) for n, s in runs.items()]) + "\n")


def write_json(path: Path, obj) -> None:
    import json

    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def plot_sweep(scores: dict, path: Path) -> Optional[Path]:
    """ABX error (%) per layer, one line per subset x speaker condition; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sweep = scores["sweep"]
    x = [s["layer"].split(":")[1] for s in sweep]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for subset, mode in ABX_COLUMNS:
        y = [100 * s["abx"][subset][mode] if subset in s["abx"] else float("nan") for s in sweep]
        ax.plot(x, y, marker="o", linestyle="-" if mode == "within" else "--", label=f"{subset.replace('dev-', '')} {mode}")
    ax.set_xlabel(f"layer of {sweep[0]['layer'].split(':')[0]} (0 = conv features)")
    ax.set_ylabel("ABX error (%)")
    ax.set_title(f"ZeroSpeech 2021 ABX per layer: {scores['model']['name']} ({scores['model']['weights']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read_scores(path: Path) -> dict:
    obj = load_json(path)
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise VGSError(f"{path}: not a vgs-zerospeech scores.json (schema {SCHEMA})")
    return obj


@console_script("vgs-zerospeech-compare")
def main(argv=None) -> int:
    """Merge runs into one comparison JSON + table (recipe stage 9: trained vs random init)."""
    p = argparse.ArgumentParser(prog="vgs-zerospeech-compare", description=main.__doc__)
    p.add_argument("runs", nargs="+", metavar="NAME=SCORES_JSON")
    p.add_argument("--out", required=True, type=Path, help="comparison JSON; the table goes beside it (.md)")
    args = p.parse_args(argv)
    runs = {}
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            p.error(f"expected NAME=SCORES_JSON, got {spec!r}")
        runs[name] = _read_scores(Path(path))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"schema": COMPARE_SCHEMA, "runs": runs})
    table = compare_markdown(runs)
    atomic_write_text(args.out.with_suffix(".md"), table)
    print(table, end="")
    return 0


__all__ = ["SCHEMA", "COMPARE_SCHEMA", "markdown", "compare_markdown", "write_json", "plot_sweep", "main"]


if __name__ == "__main__":
    raise SystemExit(main())
