"""egs/synthetic/vgs1/run.sh end to end.

Default tier (what .ci/run executes, as icefall's yesno and ESPnet's mini_an4 CI):
the debug-config run of every model family (FaST-VGS, speech-guided MIM,
VG-HuBERT(M)) on a corpus of a few items, stages 1-7 including stage 6's
retrieval results and pictures. Slow tier (``-m slow``): the whole demo, and
the recall targets of issue 15 read from the results it wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import s3prl_vgs

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "egs" / "synthetic" / "vgs1"
TINY_CORPUS = "--n_train 6 --n_val 2 --n_test 2"
KS = ("1", "5", "10")
# tag -> (model, methods stage 6 must report)
FAMILIES = {
    "fast_vgs": ("fast_vgs", ("coarse", "fine", "coarse_to_fine")),
    "vg_mim": ("vg_mim", ("coarse",)),
    "vg_hubert": ("vg_mim", ("coarse",)),
}


def _env():
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def run_recipe(cwd: Path, *args: str, timeout: int = 1800) -> str:
    proc = subprocess.run(["./run.sh", *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"run.sh {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def assert_recalls(results: dict, methods) -> None:
    """Stage 6 wrote recall@1/5/10 in both directions for every method, as percentages."""
    assert results.get("n_audio", 0) > 0 and results.get("n_image", 0) > 0, "results.json counts no queries"
    for m in methods:
        assert m in results.get("methods", {}), f"results.json has no recall of method {m!r}"
        for d in ("A2I", "I2A"):
            values = results["methods"][m].get(d, {})
            for k in KS:
                assert k in values, f"results.json: no {d} R@{k} for {m}"
                assert isinstance(values[k], (int, float)) and 0.0 <= values[k] <= 100.0, (m, d, k, values[k])


def _copy_recipe(work: Path) -> Path:
    work.mkdir(parents=True)
    for script in ("run.sh", "path.sh"):  # path.sh is a link into the template: copied as a file
        shutil.copy2(RECIPE / script, work / script)
    for sub in ("local", "conf"):
        shutil.copytree(RECIPE / sub, work / sub)
    return work


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """A copy of the recipe (run.sh, path.sh, local/, conf/) outside the source tree."""
    return _copy_recipe(tmp_path_factory.mktemp("synthetic") / "vgs1")


@pytest.fixture(scope="module")
def debug_run(recipe):
    """The CI run: every family with its debug config, stages 1-7, one call of run.sh."""
    out = run_recipe(recipe, "--config_suffix", "_debug", "--stop_stage", "7", "--local_data_opts", TINY_CORPUS)
    return recipe, out


def test_stage6_check_fails_without_recall_keys():
    good = {"n_audio": 2, "n_image": 2, "methods": {"coarse": {"A2I": {"1": 50.0, "5": 100.0, "10": 100.0},
                                                               "I2A": {"1": 0.0, "5": 100.0, "10": 100.0}}}}
    assert_recalls(good, ("coarse",))
    for broken in ({}, {"n_audio": 2, "n_image": 2, "methods": {}},
                   {**good, "methods": {"coarse": {"A2I": good["methods"]["coarse"]["A2I"], "I2A": {"1": 0.0}}}}):
        with pytest.raises(AssertionError):
            assert_recalls(broken, ("coarse",))
    with pytest.raises(AssertionError, match="coarse_to_fine"):
        assert_recalls(good, ("coarse", "coarse_to_fine"))


@pytest.mark.parametrize("tag", list(FAMILIES))
def test_debug_recipe_of_every_family(debug_run, tag):
    recipe, out = debug_run
    model, methods = FAMILIES[tag]
    exp = recipe / "exp" / f"{tag}_debug"
    for stage in range(1, 8):
        assert f"Stage {stage}:" in out
    assert "2epoch results" in (exp / "train.log").read_text()
    assert (recipe / "exp" / f"stats_{model}" / "train" / "speech_shape").exists() or any(
        (recipe / "exp").glob(f"stats_{model}*/train/speech_shape"))
    if model == "fast_vgs":
        assert (recipe / "dump" / "roi" / "test.h5").exists()

    # stage 6: recall in both directions for each method of the family
    assert_recalls(json.loads((exp / "decode" / "test" / "results.json").read_text()), methods)

    # stage 6: pictures; ESPnet's own loss plots and TensorBoard logs when the config asks for them
    plots = exp / "plots"
    assert (plots / "training_curves.png").stat().st_size > 10_000
    assert (plots / "retrieval_test.png").stat().st_size > 10_000
    conf = yaml.safe_load((recipe / "conf" / f"train_{tag}_debug.yaml").read_text())
    if conf.get("model_conf", {}).get("mim", "speech_summary") != "none" and model == "vg_mim":
        assert (plots / "mim_test.png").stat().st_size > 10_000
    else:
        assert not (plots / "mim_test.png").exists()
    if conf.get("use_matplotlib"):
        assert (exp / "images" / "loss.png").exists()
    if conf.get("use_tensorboard"):
        assert list((exp / "tensorboard" / "train").glob("events.out.tfevents.*"))

    # stage 7: the exported upstream loads and encodes
    model_obj = s3prl_vgs.load_model(exp / "upstream").eval()
    assert model_obj.model_name == model
    with torch.no_grad():
        assert model_obj.encode_audio(torch.randn(1, 16000)).coarse.shape[0] == 1


def test_debug_results_table_has_every_family(debug_run):
    recipe, _ = debug_run
    table = json.loads((recipe / "exp" / "RESULTS.json").read_text())
    tags = {r["tag"] for r in table["rows"] if "missing" not in r}
    assert tags == {f"{t}_debug" for t in FAMILIES}
    assert (recipe / "exp" / "RESULTS.md").read_text().count("|") > 10


def test_finished_stages_are_skipped_and_a_stage_reruns_alone(debug_run):
    recipe, _ = debug_run
    args = ("--model", "fast_vgs", "--config_suffix", "_debug")
    assert "stats already in" in run_recipe(recipe, *args, "--stage", "4", "--stop_stage", "4")
    run_recipe(recipe, *args, "--stage", "7", "--stop_stage", "7")
    assert s3prl_vgs.load_model(recipe / "exp" / "fast_vgs_debug" / "upstream").model_name == "fast_vgs"


def test_recipe_refuses_a_config_of_the_other_model(recipe):
    proc = subprocess.run(["./run.sh", "--model", "vg_mim", "--train_config", "conf/train_fast_vgs_debug.yaml",
                           "--stage", "5", "--stop_stage", "5"], cwd=recipe, capture_output=True, text=True, env=_env())
    assert proc.returncode == 1
    assert "trains 'fast_vgs' but the recipe runs --model vg_mim" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_demo_meets_the_recall_targets(tmp_path):
    """`make demo`'s run (all stages, the _tiny configs) and the targets of issue 15, from the JSON it wrote."""
    work = _copy_recipe(tmp_path / "vgs1")
    run_recipe(work, timeout=3 * 3600)
    table = json.loads((work / "exp" / "RESULTS.json").read_text())
    assert table["n_image"] >= 500
    info = json.loads((work / "corpus" / "synth_info.json").read_text())
    assert info["voices"] and info["test_voices"] and not set(info["voices"]) & set(info["test_voices"])
    # Caption ids start with the voice (vgs-synth's tag: non-[A-Za-z0-9_-] characters as "_").
    held_out = {re.sub(r"[^A-Za-z0-9_-]", "_", v) for v in info["test_voices"]}
    speakers = {line.split()[0].split("-synth_")[0] for line in (work / "data" / "test" / "wav.scp").read_text().splitlines()
                if line.strip()}
    assert speakers and speakers <= held_out, speakers - held_out

    rows = {(r["model"], r.get("method")): r for r in table["rows"]}
    for key in (("FaST-VGS", "coarse-to-fine"), ("speech-guided MIM", "coarse")):
        assert key in rows and "missing" not in rows[key], f"RESULTS.json lacks the row {key}"
        for d in ("A2I", "I2A"):
            assert rows[key][d]["10"] >= 50.0, f"{key} {d} R@10 = {rows[key][d]['10']:.1f} < 50"
    assert any(m == "VG-HuBERT(M)" for m, _ in rows)
    for tag in ("fast_vgs_tiny", "vg_mim_tiny", "vg_hubert_tiny"):
        assert (work / "exp" / tag / "plots" / "retrieval_test.png").exists()
