"""vgs.sh stages 3 and 6 with several jobs (``--nj``, ``--eval_nj``) give what one job gives.

Slow tier: stages 1-6 of the synthetic recipe's FaST-VGS debug config (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .test_synthetic_recipe import _copy_recipe, _env, run_recipe

pytestmark = pytest.mark.slow
ROI_OPTS = ["--boxes", "corpus/boxes.json", "--weights", "random", "--min-size", "224", "--max-size", "224"]


def _timeless(r):
    return {name: {k: v for k, v in m.items() if not k.endswith("seconds") and k != "ms_per_query"}
            for name, m in r["methods"].items()}, r["per_query"]


def test_sharded_stages_3_and_6_equal_one_job(tmp_path):
    recipe = _copy_recipe(tmp_path / "vgs1")
    out = run_recipe(recipe, "--model", "fast_vgs", "--config_suffix", "_debug", "--stop_stage", "6",
                     "--local_data_opts", "--n_train 6 --n_val 2 --n_test 3", "--nj", "2", "--eval_nj", "2",
                     "--plots", "false", "--eval_opts", "--per-query")
    assert "Stage 3: RoI features of dump/formatted/test -> dump/roi/test.h5 (2 jobs" in out
    assert "(2 jobs, logs: exp/fast_vgs_debug/decode/test/eval.*.log)" in out
    env = dict(_env(), OMP_NUM_THREADS="1")  # what vgs.sh gives its jobs: conv sums depend on the thread count
    for dset in ("train", "test"):
        single = tmp_path / f"{dset}.h5"
        subprocess.run(["vgs-extract-roi", "--data", f"dump/formatted/{dset}", "--out", str(single), *ROI_OPTS,
                        "--device", "cpu", "--no-progress"], cwd=recipe, env=env, check=True, capture_output=True)
        assert (recipe / "dump" / "roi" / f"{dset}.h5").read_bytes() == single.read_bytes(), dset
        assert not (recipe / "dump" / "roi" / f"{dset}.h5.parts").exists()
    single = tmp_path / "results.json"
    subprocess.run(["vgs-evaluate", "--model", "exp/fast_vgs_debug/model", "--data", "dump/formatted/test",
                    "--roi", "dump/roi/test.h5", "--out", str(single), "--per-query", "--quiet"],
                   cwd=recipe, env=env, check=True, capture_output=True)
    merged = json.loads((recipe / "exp/fast_vgs_debug/decode/test/results.json").read_text())
    one = json.loads(single.read_text())
    assert merged["jobs"] == 2 and set(merged["methods"]) == {"coarse", "fine", "coarse_to_fine"}
    assert _timeless(merged) == _timeless(one)
    assert sorted(os.listdir(recipe / "exp/fast_vgs_debug/decode/test")) == [
        "eval.1.log", "eval.2.log", "results.json", "results.md"]
