"""The demo's RESULTS.md writer (egs/synthetic/vgs1/local/results_table.py): chance and the rows it reads."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("results_table", ROOT / "egs/synthetic/vgs1/local/results_table.py")
results_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_table)


def brute_force_i2a_chance(n_audio: int, captions: int, k: int) -> float:
    """P(any of an image's captions in the top k of a uniformly random ranking), by enumeration."""
    hits = total = 0
    for top in itertools.combinations(range(n_audio), k):
        total += 1
        hits += any(i < captions for i in top)
    return 100.0 * hits / total


def test_chance_is_exact():
    c = results_table.chance(n_audio=12, n_image=6, captions=2)
    assert c["A2I"]["1"] == pytest.approx(100 / 6) and c["A2I"]["10"] == 100.0  # k >= N: always a hit
    assert c["I2A"]["5"] == pytest.approx(brute_force_i2a_chance(12, 2, 5))
    assert c["I2A"]["1"] == pytest.approx(brute_force_i2a_chance(12, 2, 1))
    demo = results_table.chance(n_audio=2500, n_image=500, captions=5)  # the demo's test split
    assert demo["A2I"]["10"] == pytest.approx(2.0)
    assert demo["I2A"]["10"] == pytest.approx(1.98, abs=0.01)


def _results(path: Path, methods: dict) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"n_audio": 20, "n_image": 4, "captions_per_image": {"min": 5, "max": 5},
                                "methods": methods}))


def test_table_rows_and_missing_runs(tmp_path):
    r = {"A2I": {"1": 50.0, "5": 100.0, "10": 100.0}, "I2A": {"1": 25.0, "5": 100.0, "10": 100.0}}
    _results(tmp_path / "fast_vgs_tiny/decode/test/results.json", {"coarse": r, "fine": r, "coarse_to_fine": r})
    _results(tmp_path / "vg_mim_tiny/decode/test/results.json", {"coarse": r})
    (tmp_path / "timings.tsv").write_text("fast_vgs_tiny\t1-7\t120\nvg_mim_tiny\t3-7\t60\n")
    probe = [{"tag": "fast_vgs_tiny", "task": "fluent_commands", "metric": "acc", "upstream": u, "value": v,
              "top_layer": 2} for u, v in (("trained", 0.75), ("random", 0.125), ("fbank", 0.5))]
    (tmp_path / "probe_rows.json").write_text(json.dumps({"rows": probe}))
    assert results_table.main(["--exp", str(tmp_path), "--run", "FaST-VGS=fast_vgs_tiny",
                               "--run", "MIM=vg_mim_tiny", "--run", "VG-HuBERT(M)=vg_hubert_tiny"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| FaST-VGS | coarse-to-fine | 50.0 | 100.0 | 100.0 | 25.0 | 100.0 | 100.0 |" in text
    assert "| MIM | coarse | 50.0 |" in text and "| MIM | fine" not in text
    assert "VG-HuBERT(M) | not run" in text
    assert "| chance |  | 25.0 | 100.0 | 100.0 |" in text
    assert "| total |  | 3.0 |" in text
    assert "| FaST-VGS | fluent_commands | acc | 0.750 | 0.125 | 0.500 | 2 |" in text  # stage 8, side by side
    table = json.loads((tmp_path / "RESULTS.json").read_text())
    assert [row.get("method") for row in table["rows"]] == ["coarse", "fine", "coarse-to-fine", "coarse", None]


def test_bad_run_option(tmp_path, capsys):
    assert results_table.main(["--exp", str(tmp_path), "--run", "no-equals-sign"]) == 1
    assert "not LABEL=TAG" in capsys.readouterr().err
