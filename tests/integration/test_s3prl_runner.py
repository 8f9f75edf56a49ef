"""s3prl's own legacy runner, every mode, on torch 2.8's weights-only ``torch.load`` (no mocks).

One interpreter per test (importing ``s3prl.hub`` costs tens of seconds on a
busy CPU) runs, for each model family on a tiny *speech-only exported*
upstream, fluent_commands intent classification: ``-m train`` (4 steps),
``-m evaluate -e states-4.ckpt`` and a resume with ``-e`` to step 6. The
vg_mim runs use s3prl's stock ``run_downstream.main`` in an interpreter that
never imported ``s3prl_vgs`` (the start-up hook supplies the entry and the
weights-only allow-list); the fast_vgs runs go through ``s3prl-vgs-downstream``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import s3prl_vgs
from s3prl_vgs.upstream.export import export_speech_only
from s3prl_vgs.upstream.run_downstream import _device, runner_argv

BIN = Path(sys.executable).parent

DRIVER = r"""
import json, sys
corpus, runs = sys.argv[1], json.loads(sys.argv[2])
assert "s3prl_vgs" not in sys.modules and "s3prl.hub" not in sys.modules
from s3prl import run_downstream          # imports s3prl.hub: the start-up hook registers our entries
import s3prl.hub as hub
registered_by_hook = hasattr(hub, "vg_mim_local") and hasattr(hub, "fast_vgs_local")
for how, argv in runs:
    if how == "wrapper":
        from s3prl_vgs.upstream.run_downstream import main
        assert main(argv) == 0, argv
    else:
        sys.argv = ["run_downstream.py", *argv]
        run_downstream.main()
print("REGISTERED_BY_HOOK", registered_by_hook)
"""


def _overrides(corpus: Path, total_steps: int) -> str:
    return ",,".join([
        f"config.downstream_expert.datarc.file_path={corpus}",
        f"config.runner.total_steps={total_steps}", "config.runner.eval_step=2", "config.runner.save_step=2",
        "config.runner.log_step=2", "config.runner.max_keep=3", "config.downstream_expert.datarc.num_workers=0",
        "config.downstream_expert.datarc.train_batch_size=4", "config.downstream_expert.datarc.eval_batch_size=4",
    ])


def _load(path: Path) -> dict:
    torch.serialization.add_safe_globals([argparse.Namespace])
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corp")
    synth = subprocess.run([str(BIN / "vgs-synth"), "--out", str(out), "--n-train", "1", "--n-val", "1",
                            "--n-test", "1", "--seed", "3", "--n-commands", "24"], capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr[-2000:]
    return out / "fluent_commands"


def test_runner_train_evaluate_resume_each_family(corpus, tmp_path):
    config = str(Path(s3prl_vgs.__file__).parent / "upstream" / "configs" / "fluent_commands.yaml")
    runs, exps = [], {}
    for family, how in (("vg_mim", "stock"), ("fast_vgs", "wrapper")):
        torch.manual_seed(0)
        full = s3prl_vgs.build_model(family, preset="tiny").save(tmp_path / f"{family}_full")
        up = export_speech_only(full, tmp_path / f"{family}_upstream")
        exp = exps[family] = tmp_path / f"exp_{family}"
        cfg = ["-c", config] if how == "stock" else []
        runs += [
            (how, ["-m", "train", "-u", f"{family}_local", "-k", str(up), "-d", "fluent_commands", *cfg,
                   "--device", "cpu", "-p", str(exp), "-o", _overrides(corpus, 4)]),
            (how, ["-m", "evaluate", "-e", str(exp / "states-4.ckpt"), "-t", "test", "--device", "cpu"]),
            (how, ["-m", "train", "-e", str(exp / "states-4.ckpt"), "--device", "cpu", "-o", _overrides(corpus, 6)]),
        ]
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"  # every torch.load in the runner is weights-only
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run([sys.executable, "-c", DRIVER, str(corpus), json.dumps(runs)], capture_output=True,
                         text=True, timeout=900, env=env, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "REGISTERED_BY_HOOK True" in run.stdout
    assert out.count("test acc:") >= 2 * 3  # each train's test evals (steps 2, 4) and the -e evaluate
    for family, exp in exps.items():
        first, resumed = _load(exp / "states-4.ckpt"), _load(exp / "states-6.ckpt")
        assert (first["Step"], resumed["Step"]) == (4, 6)
        assert resumed["Args"].upstream == f"{family}_local"
        # Resuming continued training from step 4's weights: the probe moved on.
        w4, w6 = first["Featurizer"]["weights"], resumed["Featurizer"]["weights"]
        assert w4.shape == w6.shape and w4.numel() > 1 and not torch.equal(w4, w6)
        assert (exp / "test_predict.csv").read_text().strip()


def test_local_rank_passes_through():
    assert runner_argv(["-m", "train", "-c", "x.yaml"], {"LOCAL_RANK": "1"})[-2:] == ["--local_rank", "1"]
    assert runner_argv(["--local-rank=2", "-c", "x.yaml"], {})[:2] == ["--local_rank", "2"]
    assert runner_argv(["--local_rank", "0", "-c", "x.yaml"], {"LOCAL_RANK": "3"}).count("--local_rank") == 1
    shipped = runner_argv(["-m", "train", "-d", "fluent_commands"], {})
    assert shipped[-2] == "-c" and Path(shipped[-1]).is_file()
    with pytest.raises(SystemExit, match="no config shipped for downstream 'asr'"):
        runner_argv(["-m", "train", "-d", "asr"], {})
    assert _device(["-m", "train", "--device", "cpu"]) == "cpu" and _device(["--device=cuda"]) == "cuda"
    assert _device(["-m", "train"]) is None
