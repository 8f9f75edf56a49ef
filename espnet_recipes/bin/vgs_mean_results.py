#!/usr/bin/env python3
"""Retrieval results of several test sets side by side and their mean (recipe stage 6, ``--eval_means``).

Places is reported as the official code reports it: dev_seen and dev_unseen
(or test_seen and test_unseen) evaluated separately, each with its own
1,000-image gallery, and the mean of the two sets' recalls
(``reference/official-code.md`` 3.2). This reads the sets' ``vgs-evaluate``
results and writes ``OUT`` (JSON: every set's recalls and the mean, per
method) and the markdown table beside it (``.md``), both atomically.

Example:
    python -m espnet_recipes.bin.vgs_mean_results --out exp/fast_vgs/decode/dev/results.json \\
        dev_seen=exp/fast_vgs/decode/dev_seen/results.json dev_unseen=exp/fast_vgs/decode/dev_unseen/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from s3prl_vgs.io import atomic_write_text

DIRECTIONS = ("A2I", "I2A")


class MeanResultsError(ValueError):
    """A results file that is missing, unreadable or not comparable to the others; the message names it."""


def _read(name: str, path: Path) -> dict:
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MeanResultsError(f"{path}: unreadable results of {name} ({type(e).__name__}: {e})") from None
    if not isinstance(r, dict) or not isinstance(r.get("methods"), dict) or not r["methods"]:
        raise MeanResultsError(f"{path}: not vgs-evaluate results (no methods)")
    return r


def mean_results(sets: Dict[str, dict]) -> dict:
    """``{"sets": {name: {method: recalls}}, "mean": {method: recalls}}``; recalls as vgs-evaluate's."""
    if len(sets) < 2:
        raise MeanResultsError(f"need at least two sets to average, got {list(sets)}")
    methods = [m for m in next(iter(sets.values()))["methods"] if all(m in r["methods"] for r in sets.values())]
    if not methods:
        raise MeanResultsError(f"the sets {list(sets)} have no retrieval method in common")
    out: dict = {"sets": {}, "mean": {}, "n_audio": {}, "n_image": {}}
    for name, r in sets.items():
        out["sets"][name] = {m: {d: r["methods"][m][d] for d in DIRECTIONS} for m in methods}
        out["n_audio"][name], out["n_image"][name] = r.get("n_audio"), r.get("n_image")
    for m in methods:
        mean = {}
        for d in DIRECTIONS:
            ks = [k for k in sets[next(iter(sets))]["methods"][m][d] if all(k in r["methods"][m][d] for r in sets.values())]
            mean[d] = {k: sum(r["methods"][m][d][k] for r in sets.values()) / len(sets) for k in ks}
        mean["mean_R@1"] = (mean["A2I"]["1"] + mean["I2A"]["1"]) / 2 if "1" in mean["A2I"] else None
        out["mean"][m] = mean
    return out


def markdown(result: dict, title: str) -> str:
    ks = list(next(iter(result["mean"].values()))["A2I"])
    head = ["method", "set"] + [f"A2I R@{k}" for k in ks] + [f"I2A R@{k}" for k in ks] + ["mean R@1"]
    lines = [f"# Retrieval: {title}", "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for m, mean in result["mean"].items():
        rows = [(name, r[m]) for name, r in result["sets"].items()] + [("**mean**", mean)]
        for name, rec in rows:
            cells = [m, name] + [f"{rec[d][k]:.2f}" for d in DIRECTIONS for k in ks]
            cells.append(f"{(rec['A2I']['1'] + rec['I2A']['1']) / 2:.2f}" if "1" in rec["A2I"] else "")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each set is evaluated with its own gallery; **mean** = the average of the sets' recalls "
              "(the official Places protocol: dev_seen and dev_unseen, or test_seen and test_unseen)."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="vgs_mean_results", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="results JSON to write; the markdown table goes beside it (.md)")
    p.add_argument("sets", nargs="+", metavar="NAME=RESULTS.json", help="a set's vgs-evaluate results")
    args = p.parse_args(argv)
    try:
        sets: Dict[str, dict] = {}
        for item in args.sets:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise MeanResultsError(f"{item!r}: expected NAME=RESULTS.json")
            sets[name] = _read(name, Path(path))
        result = mean_results(sets)
    except MeanResultsError as e:
        print(f"vgs_mean_results: error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    md = markdown(result, " + ".join(sets) + " and their mean")
    atomic_write_text(out.with_suffix(".md"), md)
    print(md, file=sys.stderr)
    return 0


__all__: List[str] = ["MeanResultsError", "mean_results", "markdown", "main"]

if __name__ == "__main__":
    sys.exit(main())
