"""egs/synthetic/vgs1/run.sh end to end (stages 1-7) with the debug configs on a tiny corpus."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import s3prl_vgs

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "egs" / "synthetic" / "vgs1"
TINY_CORPUS = "--n_train 6 --n_val 2 --n_test 2"


def run_recipe(cwd: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["./run.sh", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"run.sh {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """A copy of the recipe (run.sh, local/, conf/) outside the source tree."""
    work = tmp_path_factory.mktemp("synthetic") / "vgs1"
    work.mkdir()
    shutil.copy2(RECIPE / "run.sh", work / "run.sh")
    for sub in ("local", "conf"):
        shutil.copytree(RECIPE / sub, work / sub)
    return work


@pytest.mark.slow
@pytest.mark.parametrize("model", ["fast_vgs", "vg_mim"])
def test_synthetic_recipe_end_to_end(recipe, model):
    nj = "2" if model == "fast_vgs" else "1"  # split collect-stats jobs + aggregate_stats_dirs, and one job
    out = run_recipe(recipe, "--model", model, "--config_suffix", "_debug", "--stop_stage", "7", "--nj", nj,
                     "--local_data_opts", TINY_CORPUS)
    exp = recipe / "exp" / f"{model}_debug"
    for stage in range(1, 8):
        assert f"Stage {stage}:" in out
    assert "2epoch results" in (exp / "train.log").read_text()
    assert (recipe / "exp" / f"stats_{model}" / "train" / "speech_shape").exists()
    if model == "fast_vgs":
        assert (recipe / "dump" / "roi" / "test.h5").exists()
        assert (recipe / "dump" / "espnet" / "train" / "roi.scp").exists()

    # stage 7: the exported upstream loads and encodes
    upstream = exp / "upstream"
    model_obj = s3prl_vgs.load_model(upstream).eval()
    assert model_obj.model_name == model
    with torch.no_grad():
        assert model_obj.encode_audio(torch.randn(1, 16000)).coarse.shape[0] == 1

    # stage 6: retrieval results on the test set
    if shutil.which("vgs-evaluate", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"):
        results = json.loads((exp / "decode" / "test" / "results.json").read_text())
        assert results  # vgs-evaluate's own tests check its content

    # finished stages are skipped, and a stage re-runs alone
    again = run_recipe(recipe, "--model", model, "--config_suffix", "_debug", "--stage", "4", "--stop_stage", "4")
    assert "stats already in" in again
    run_recipe(recipe, "--model", model, "--config_suffix", "_debug", "--stage", "7", "--stop_stage", "7")
    assert s3prl_vgs.load_model(upstream).model_name == model


def test_recipe_refuses_a_config_of_the_other_model(recipe):
    proc = subprocess.run(["./run.sh", "--model", "vg_mim", "--train_config", "conf/train_fast_vgs_debug.yaml",
                           "--stage", "5", "--stop_stage", "5"], cwd=recipe, capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"))
    assert proc.returncode == 1
    assert "trains 'fast_vgs' but the recipe runs --model vg_mim" in proc.stdout + proc.stderr
