#!/usr/bin/env python3
"""The demo's one table: test retrieval of every trained model next to chance -> exp/RESULTS.md (+ .json).

Reads ``EXP/<tag>/decode/<test_set>/results.json`` (vgs-evaluate, stage 6) for each
``--run LABEL=TAG``: coarse, fine and coarse-to-fine rows for FaST-VGS, the
coarse row for the MIM family. Chance is exact for the split's sizes: A2I
R@k = k / N_image; I2A R@k = 1 - C(N_audio - c, k) / C(N_audio, k) for an image
with c captions (the split's minimum c, so the bound is the largest chance).
When later stages wrote them, it adds the probing rows of stage 8
(``EXP/probe_rows.json``) and the ZeroSpeech 2021 scores of stage 9
(``EXP/<tag>/zerospeech/scores.md``), and the stage timings ``EXP/timings.tsv``
(``tag<TAB>stage<TAB>seconds``, written by run.sh).

Usage: local/results_table.py --exp exp --test_set test --run FaST-VGS=fast_vgs_tiny --run MIM=vg_mim_tiny
"""

from __future__ import annotations

import argparse
import json
import sys
from math import comb
from pathlib import Path
from typing import Dict, List, Optional

from s3prl_vgs.config import atomic_write_text

KS = ("1", "5", "10")
METHODS = (("coarse", "coarse"), ("fine", "fine"), ("coarse_to_fine", "coarse-to-fine"))


def chance(n_audio: int, n_image: int, captions: int) -> Dict[str, Dict[str, float]]:
    """Expected R@k of random rankings, in percent."""
    a2i = {k: 100.0 * min(int(k), n_image) / n_image for k in KS}
    i2a = {k: 100.0 * (1 - comb(n_audio - captions, int(k)) / comb(n_audio, int(k))) for k in KS}
    return {"A2I": a2i, "I2A": i2a}


def _row(cells: List[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def build(exp: Path, test_set: str, runs: Dict[str, str]) -> Dict:
    rows, sizes = [], None
    for label, tag in runs.items():
        path = exp / tag / "decode" / test_set / "results.json"
        if not path.is_file():
            rows.append({"model": label, "tag": tag, "missing": str(path)})
            continue
        res = json.loads(path.read_text())
        sizes = (res["n_audio"], res["n_image"], res["captions_per_image"]["min"])
        for key, title in METHODS:
            m = res["methods"].get(key)
            if m is not None:
                rows.append({"model": label, "tag": tag, "method": title,
                             "A2I": {k: m["A2I"][k] for k in KS}, "I2A": {k: m["I2A"][k] for k in KS}})
    out = {"test_set": test_set, "rows": rows}
    if sizes is not None:
        out.update(n_audio=sizes[0], n_image=sizes[1], captions_per_image=sizes[2], chance=chance(*sizes))
    return out


def probe_table(rows: List[Dict], table: Dict) -> str:
    """Stage 8's probe rows as markdown: trained vs random-init vs fbank upstream, same probe and budget."""
    labels = {r["tag"]: r["model"] for r in table["rows"]}
    cells: Dict = {}
    for r in rows:
        key = (r["tag"], r["task"], r["metric"])
        cells.setdefault(key, {})[r["upstream"]] = r
    lines = [_row(["model", "task", "metric", "trained", "random init", "fbank", "trained: top layer"]),
             _row(["---"] * 7)]
    for (tag, task, metric), by in cells.items():
        value = lambda u: f"{by[u]['value']:.3f}" if u in by else "-"  # noqa: E731
        top = str(by["trained"]["top_layer"]) if "trained" in by else "-"
        lines.append(_row([labels.get(tag, tag), task, metric, value("trained"), value("random"), value("fbank"), top]))
    return "\n".join(lines)


def markdown(table: Dict, exp: Path) -> str:
    lines = [f"# Synthetic demo: retrieval on `{table['test_set']}`", ""]
    if "n_image" in table:
        lines += [f"{table['n_image']} images, {table['n_audio']} spoken captions (voices unseen in training). "
                  "Recall in percent; A2I: images retrieved for each caption, I2A: captions retrieved for each "
                  "image (a hit when any of its captions is in the top k).", ""]
    lines += [_row(["model", "method"] + [f"A2I R@{k}" for k in KS] + [f"I2A R@{k}" for k in KS]),
              _row(["---"] * 8)]
    for r in table["rows"]:
        if "missing" in r:
            lines.append(_row([r["model"], f"not run (no {r['missing']})"] + [""] * 6))
            continue
        lines.append(_row([r["model"], r["method"]] + [f"{r['A2I'][k]:.1f}" for k in KS]
                          + [f"{r['I2A'][k]:.1f}" for k in KS]))
    if "chance" in table:
        c = table["chance"]
        lines.append(_row(["chance", ""] + [f"{c['A2I'][k]:.1f}" for k in KS] + [f"{c['I2A'][k]:.1f}" for k in KS]))
    probe = exp / "probe_rows.json"
    if probe.is_file():  # stage 8: one row per run and task, the three upstreams side by side
        lines += ["", "## Probing (stage 8)", "", probe_table(json.loads(probe.read_text()).get("rows", []), table)]
    for tag in dict.fromkeys(r["tag"] for r in table["rows"]):
        zs = exp / tag / "zerospeech" / "scores.md"
        if zs.is_file():  # stage 9 (issue 11)
            lines += ["", f"## ZeroSpeech 2021 of {tag} (stage 9)", "", zs.read_text().strip()]
    timings = exp / "timings.tsv"
    if timings.is_file():
        lines += ["", "## Wall time", "", _row(["run", "stages", "minutes"]), _row(["---"] * 3)]
        total = 0.0
        for line in timings.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                total += float(parts[2])
                lines.append(_row([parts[0], parts[1], f"{float(parts[2]) / 60:.1f}"]))
        lines.append(_row(["total", "", f"{total / 60:.1f}"]))
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exp", type=Path, default=Path("exp"))
    p.add_argument("--test_set", default="test")
    p.add_argument("--run", action="append", default=[], help="LABEL=TAG (exp/<TAG>); repeatable")
    p.add_argument("--out", type=Path, default=None, help="markdown table (default EXP/RESULTS.md; JSON beside it)")
    a = p.parse_args(argv)
    runs = {}
    for spec in a.run:
        label, sep, tag = spec.partition("=")
        if not sep or not label or not tag:
            print(f"results_table: error: --run {spec!r} is not LABEL=TAG", file=sys.stderr)
            return 1
        runs[label] = tag
    table = build(a.exp, a.test_set, runs)
    out = a.out or a.exp / "RESULTS.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(table, a.exp)
    atomic_write_text(out.with_suffix(".json"), json.dumps(table, indent=2) + "\n")
    atomic_write_text(out, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
