"""ESPnet checkpoints of VGS training: weights-only loading, atomic writes, resuming after SIGKILL.

The training runs are the real ``VGSTask.main`` on the synthetic debug config
(2 epochs x 3 optimizer steps). A kill is a real ``SIGKILL`` of the training
process, sent by the process itself at a chosen point (an optimizer step, or
half-way through writing a checkpoint file), so no cleanup code runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from espnet_recipes.vgs import checkpoints
from espnet_recipes.vgs.checkpoints import UnsafeCheckpointError, atomic_save, safe_load
from tests.integration.test_espnet_task import SYNTH_CONF, data_args, make_split, run_main
from espnet_recipes.bin import vgs_dump

ROOT = Path(__file__).resolve().parents[2]
MODEL = "fast_vgs"
EPOCHS, STEPS_PER_EPOCH = 2, 3  # the debug config

# The training process: optionally SIGKILLs itself at KILL_STEP (optimizer steps) or half-way through the
# KILL_SAVE-th torch.save whose file name contains KILL_NAME, then runs VGSTask.main(argv).
CHILD = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    kill_step, kill_save, kill_name = int(os.environ.get("KILL_STEP", 0)), int(os.environ.get("KILL_SAVE", 0)), os.environ.get("KILL_NAME", "")
    real_save, saves, steps = torch.save, [0], [0]
    def save(obj, f, *a, **k):
        if kill_save and isinstance(f, (str, os.PathLike)) and kill_name in os.path.basename(str(f)):
            saves[0] += 1
            if saves[0] == kill_save:
                buf = io.BytesIO(); real_save(obj, buf)
                with open(f, "wb") as fh:
                    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2]); fh.flush(); os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)
    torch.save = save
    real_step = torch.optim.AdamW.step
    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        steps[0] += 1
        if steps[0] == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    torch.optim.AdamW.step = step
    from espnet_recipes.tasks.vgs import VGSTask
    VGSTask.main(cmd=sys.argv[1:])
""")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_corpus")
    for i, split in enumerate(("train", "val")):
        make_split(root, split, seed=i)
        assert vgs_dump.main(["--data", str(root / "data" / split), "--roi", str(root / "roi" / f"{split}.h5"),
                              "--out", str(root / "dump" / split)]) == 0
    return root


def train(corpus: Path, out: Path, **kill) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", CHILD, "--config", str(SYNTH_CONF / f"train_{MODEL}_debug.yaml"), "--ngpu", "0",
           "--resume", "true", "--output_dir", str(out), *data_args(corpus, MODEL)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in kill.items()}}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


def finished(out: Path) -> dict:
    """What a run leaves: finished epochs, optimizer steps, epoch files and links."""
    state = safe_load(out / "checkpoint.pth")
    links = {p.name: os.readlink(p) for p in out.iterdir() if p.is_symlink()}
    return dict(epochs=int(state["reporter"]["epoch"]), steps=int(state["model"]["schedule.num_updates"]),
                latest_steps=int(safe_load(out / "latest.pth")["schedule.num_updates"]),
                epoch_files=sorted(p.name for p in out.glob("*epoch.pth")), links=links,
                averaged=sorted(p.name for p in out.glob("*ave*.pth")))


# ----------------------------------------------------------------------------- no training needed


def test_atomic_save_and_safe_load(tmp_path):
    target = tmp_path / "checkpoint.pth"
    atomic_save({"w": torch.ones(2)}, target)
    atomic_save({"w": torch.zeros(2)}, target)  # replaces, leaves no temporary behind
    assert torch.equal(safe_load(target)["w"], torch.zeros(2)) and [p.name for p in tmp_path.iterdir()] == [target.name]

    import datetime

    import numpy as np
    stats = {"stats": {1: {"train": {"loss": np.nanmean([1.0, 2.0]), "time": datetime.timedelta(seconds=3)}}}}
    torch.save(stats, tmp_path / "reporter.pth")  # what ESPnet's reporter stores loads weights-only
    assert safe_load(tmp_path / "reporter.pth")["stats"][1]["train"]["loss"] == 1.5


class _Payload:
    """Unpickling it would touch a file: the kind of pickle weights-only loading refuses."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_checkpoint_is_refused_by_resume(corpus, tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    marker = tmp_path / "payload_ran"
    torch.save({"model": {}, "reporter": _Payload(marker), "optimizers": [], "schedulers": [], "scaler": None},
               out / "checkpoint.pth")
    with pytest.raises(UnsafeCheckpointError) as e:
        run_main(["--config", str(SYNTH_CONF / f"train_{MODEL}_debug.yaml"), "--ngpu", "0", "--resume", "true",
                  "--output_dir", str(out), *data_args(corpus, MODEL)])
    message = str(e.value)
    assert str(out / "checkpoint.pth") in message and "pathlib" in message and "not weights-only" in message
    assert "\n" not in message and not marker.exists()  # one line, and the payload never ran


def test_every_espnet_checkpoint_loader_is_weights_only():
    import espnet2.main_funcs.average_nbest_models as nbest
    import espnet2.torch_utils.load_pretrained_model as init_param
    import espnet2.train.trainer as trainer

    import espnet_recipes.tasks.vgs  # noqa: F401  (installs)
    for module in (trainer, nbest, init_param):
        assert module.torch.load is safe_load and module.torch.save is atomic_save
        assert module.torch.no_grad is torch.no_grad  # the rest is the real torch
    assert set(checkpoints.PATCHED_MODULES) == {trainer.__name__, nbest.__name__, init_param.__name__}


# ----------------------------------------------------------------------------- SIGKILL and resume


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = train(corpus, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return finished(out)


KILLS = {
    "mid_epoch": dict(KILL_STEP=STEPS_PER_EPOCH + 2),  # 2nd optimizer step of epoch 2
    "mid_checkpoint_write": dict(KILL_SAVE=2, KILL_NAME="checkpoint.pth"),  # epoch 2's checkpoint.pth
    "after_checkpoint_before_epoch_file": dict(KILL_SAVE=2, KILL_NAME="epoch.pth"),  # epoch 2's 2epoch.pth
}


@pytest.mark.slow
@pytest.mark.parametrize("kill", KILLS, ids=list(KILLS))
def test_sigkill_then_resume_finishes_like_an_uninterrupted_run(kill, corpus, uninterrupted, tmp_path):
    out = tmp_path / "exp"
    proc = train(corpus, out, **KILLS[kill])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    state = safe_load(out / "checkpoint.pth")  # whatever the kill hit, checkpoint.pth is whole
    expected_epoch = 2 if kill == "after_checkpoint_before_epoch_file" else 1
    assert int(state["reporter"]["epoch"]) == expected_epoch
    if kill == "mid_checkpoint_write":
        assert list(out.glob(".checkpoint.pth.tmp*")), "the kill did not hit the write"
    if kill == "after_checkpoint_before_epoch_file":
        assert not (out / "2epoch.pth").exists() and list(out.glob(".2epoch.pth.tmp*"))

    proc = train(corpus, out)  # --resume true
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = finished(out)
    assert got == uninterrupted, (got, uninterrupted)
    assert got["epochs"] == EPOCHS and got["steps"] == got["latest_steps"] == EPOCHS * STEPS_PER_EPOCH


def test_init_param_reads_a_converted_model_dir(tmp_path):
    """``--init_param <dir>/model.safetensors::model``: ESPnet's own loader fills the wrapper's model."""
    import espnet2.torch_utils.load_pretrained_model as init_param

    import espnet_recipes.tasks.vgs  # noqa: F401  (installs)
    from espnet_recipes.vgs.espnet_model import ESPnetFaSTVGSModel
    from s3prl_vgs.models import build_model

    torch.manual_seed(1)
    source = build_model(MODEL, "tiny")
    source.save(tmp_path / "converted")  # the model-dir format vgs-convert writes
    torch.manual_seed(2)
    wrapper = ESPnetFaSTVGSModel(preset="tiny")
    assert not torch.equal(wrapper.model.trm2_proj.weight, source.trm2_proj.weight)
    init_param.load_pretrained_model(f"{tmp_path / 'converted' / 'model.safetensors'}::model", wrapper, ignore_init_mismatch=False)
    for name, value in source.state_dict().items():
        assert torch.equal(wrapper.model.state_dict()[name], value), name
    with pytest.raises(UnsafeCheckpointError, match="unreadable safetensors"):
        (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
        init_param.load_pretrained_model(f"{tmp_path / 'bad.safetensors'}::model", wrapper, ignore_init_mismatch=False)
