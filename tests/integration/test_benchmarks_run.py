"""The benchmark scripts run against the current API at toy sizes (a renamed field once broke one silently)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, tmp_path: Path) -> dict:
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.read_text())


def test_retrieval_scale_rows(tmp_path):
    res = _run("retrieval_scale.py", "--n", "4000", "--dim", "32", "--clusters", "200", "--queries", "100",
               "--nlist", "32", "--nprobe", "4", "32", "--ctf-images", "20", "40", "--threads", "1", tmp_path=tmp_path)
    rows = {r["row"]: r for r in res["coarse"]}
    exact, flat = rows["exact, torch matmul + topk"], rows["exact, FAISS IndexFlatIP"]
    # both exact searches agree with each other; a query (its item plus noise) finds its item
    assert exact["recall10_of_exact"] == 1.0 and flat["recall10_of_exact"] >= 0.99
    assert exact["match_at_10"] >= 0.95
    # probing every list is exact search; fewer lists lose some neighbours, never gain
    assert rows["IVF32 nprobe 32"]["recall10_of_exact"] >= 0.99
    assert rows["IVF32 nprobe 4"]["recall10_of_exact"] <= rows["IVF32 nprobe 32"]["recall10_of_exact"]
    small, large = res["ctf"]
    assert small["pairs_scored"] > 0 and large["pairs_scored"] > small["pairs_scored"]
    assert res["gemm_gflops_probe"] > 0
