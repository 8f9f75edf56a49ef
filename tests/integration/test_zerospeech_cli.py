"""vgs-zerospeech end to end on the espeak-ng ZR2021 set (vgs-synth-zr2021) and a tiny
random model directory: the real exporter, zerospeech-libriabx2 and the sSIMI scorer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

import s3prl_vgs
from s3prl_vgs.zerospeech.abx import score_abx
from s3prl_vgs.zerospeech.cli import main
from s3prl_vgs.zerospeech.dataset import read_dataset
from s3prl_vgs.zerospeech.features import frames_to_text
from s3prl_vgs.zerospeech.submission import check_submission
from s3prl_vgs.zerospeech.synthetic import PAIRS, WORDS, generate

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def zr(tmp_path_factory):
    root = tmp_path_factory.mktemp("zr") / "zr2021"
    counts = generate(root, seed=0)
    assert counts == {"items_dev-clean": 81, "items_dev-other": 81, "semantic_tokens": 9 * len(WORDS),
                      "semantic_pairs": 2 * len(PAIRS)}
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return s3prl_vgs.build_model("fast_vgs", preset="tiny").save(tmp_path_factory.mktemp("m") / "fast_vgs_tiny")


def _run(capsys, *args):
    rc = main([*map(str, args), "--no-progress", "--threads", "1"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_synthetic_set_has_phonetic_structure(zr, tmp_path):
    """Log-mel frames (no model) separate the vowels far better than chance: the set measures something."""
    import torchaudio

    from s3prl_vgs.data.audio import load_audio

    ds = read_dataset(zr, tasks=["phonetic"])
    items = ds.phonetic["dev-clean"].items
    assert {it.phone for it in items} == {"a", "i", "u"} and len({it.speaker for it in items}) == 3
    assert {(it.prev, it.next) for it in items} == {("p", "t"), ("k", "s"), ("m", "n")}
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=40)
    for name in ("dev-clean", "dev-other"):
        sub = ds.phonetic[name]
        d = tmp_path / name
        d.mkdir()
        for stem, wav in sub.wavs.items():
            (d / f"{stem}.txt").write_text(frames_to_text(torch.log(mel(load_audio(wav)) + 1e-6).T.numpy()))
        s = score_abx(d, sub.item_file, sub.items, 0.01)
        assert s["items_scored"] == 81 and s["within"] < 0.05 and s["across"] < 0.25, (name, s)


def test_end_to_end_tiny_model_submission_scores_and_resume(zr, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc, table, err = _run(capsys, "--model", model_dir, "--dataset", zr, "--out", out)
    assert rc == 0, err
    sub = out / "submission"
    assert sorted(p.name for p in sub.iterdir()) == ["code", "lexical", "meta.yaml", "phonetic", "semantic", "syntactic"]
    assert not (out / "submission.partial").exists()
    ds = read_dataset(zr)
    assert check_submission(sub, ds, full=True) == {"phonetic": 64, "semantic": 64}  # every file parsed: 2-D, one width
    import yaml

    meta = yaml.safe_load((sub / "meta.yaml").read_text())
    assert meta["visually_grounded"] is True
    assert meta["parameters"] == {"phonetic": {"metric": "cosine", "frame_shift": 0.02},
                                  "semantic": {"metric": "cosine", "pooling": "max"}}
    # Trm2 frames are 320 ms: a ~0.4 s word gives 1-2 frames, written as >= 2 lines.
    syn = np.loadtxt(sub / "semantic/dev/synthetic/syn-red-usm2.txt")
    assert syn.ndim == 2 and syn.shape[0] in (2, 3)
    # A 20 ms layer gives one frame per 320 samples of its wav.
    wav = ds.phonetic["dev-clean"].wavs["usm1-0000"]
    n = sf.info(str(wav)).frames
    assert abs(np.loadtxt(sub / "phonetic/dev-clean/usm1-0000.txt").shape[0] - n / 320) <= 1.5

    scores = json.loads((out / "scores.json").read_text())
    assert scores["schema"] == "s3prl-vgs.zerospeech/1" and scores["model"]["weights"] == "trained"
    ph, se = scores["phonetic"], scores["semantic"]
    assert (ph["layer"], ph["frame_shift"], se["layer"], se["frame_shift"], se["pooling"]) == (
        "hidden_states:2", 0.02, "trm2_hidden_states:1", 0.32, "max")
    for subset in ("dev-clean", "dev-other"):
        a = ph["abx"][subset]
        assert a["items"] == a["items_scored"] == 81
        assert 0.2 < a["within"] < 0.8 and 0.2 < a["across"] < 0.8  # random weights: about chance
    for subset in ("synthetic", "librispeech"):
        s = se["ssimi"][subset]
        assert s["datasets"]["toy-sim"]["pairs"] == len(PAIRS) and -100 <= s["mean"] <= 100
    assert f"| trained | trm1:2 | {100 * ph['abx']['dev-clean']['within']:.2f} |" in table
    assert (out / "scores.md").read_text() == table

    # Resume: nothing recomputed, same scores; a new pooling only rewrites meta.yaml and sSIMI.
    f = sub / "phonetic/dev-clean/usm1-0000.txt"
    mtime = f.stat().st_mtime_ns
    rc, _, err = _run(capsys, "--model", model_dir, "--dataset", zr, "--out", out, "--pooling", "mean")
    assert rc == 0, err
    again = json.loads((out / "scores.json").read_text())
    assert again["features"] == {"written": 0, "kept": len(ds.wav_jobs())}
    assert again["phonetic"]["abx"] == ph["abx"] and f.stat().st_mtime_ns == mtime
    assert yaml.safe_load((sub / "meta.yaml").read_text())["parameters"]["semantic"]["pooling"] == "mean"
    # Another layer into the same directory is refused, naming it; nothing changes.
    rc, _, err = _run(capsys, "--model", model_dir, "--dataset", zr, "--out", out, "--phonetic-layer", "1")
    assert rc == 1 and err.strip().count("\n") == 0
    assert "holds features of another run (differs in phonetic)" in err and f.stat().st_mtime_ns == mtime


def test_failed_run_leaves_no_complete_submission_and_resumes(zr, model_dir, tmp_path, capsys):
    ds_dir = tmp_path / "zr"
    shutil.copytree(zr, ds_dir)
    # 200 samples: a valid 16 kHz wav that gives no frame, found only when its turn comes.
    short = ds_dir / "semantic/dev/librispeech/lib-zz-short.wav"  # the last librispeech job
    sf.write(str(short), np.zeros(200, dtype=np.float32), 16000)
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "--model", model_dir, "--dataset", ds_dir, "--out", out, "--tasks", "semantic")
    assert rc == 1 and "lib-zz-short.wav: 200 samples is shorter than one frame" in err
    assert not (out / "submission").exists() and not (out / "scores.json").exists()
    written = sorted((out / "submission.partial/semantic/dev/librispeech").glob("*.txt"))
    assert len(written) == 3 * 2 * len(WORDS)  # librispeech comes first; synthetic not reached
    assert not list((out / "submission.partial/semantic/dev/synthetic").glob("*.txt"))
    mtimes = {p: p.stat().st_mtime_ns for p in written}
    short.unlink()
    rc, _, err = _run(capsys, "--model", model_dir, "--dataset", ds_dir, "--out", out, "--tasks", "semantic")
    assert rc == 0, err
    assert json.loads((out / "scores.json").read_text())["features"] == {"written": 3 * len(WORDS), "kept": 6 * len(WORDS)}
    final = out / "submission/semantic/dev/librispeech"
    assert all((final / p.name).stat().st_mtime_ns == t for p, t in mtimes.items())


def test_bad_input_is_one_line_and_writes_nothing(zr, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "--model", model_dir, "--dataset", zr, "--out", out, "--phonetic-layer", "7")
    assert rc == 1 and err.strip().count("\n") == 0
    assert "--phonetic-layer '7': layer index out of range; this model has hidden_states:0..2 (20 ms), " \
           "trm2_hidden_states:0..1 (320 ms)" in err
    bad = tmp_path / "zr"
    shutil.copytree(zr, bad)
    shutil.rmtree(bad / "semantic/dev/librispeech")
    rc, _, err = _run(capsys, "--model", model_dir, "--dataset", bad, "--out", out)
    assert rc == 1 and "semantic/dev/librispeech: missing folder" in err and err.strip().count("\n") == 0
    shutil.copytree(zr / "semantic/dev/librispeech", bad / "semantic/dev/librispeech")
    sf.write(str(bad / "phonetic/dev-other/usf3-0001.wav"), np.zeros(8000, dtype=np.float32), 8000)
    rc, _, err = _run(capsys, "--model", model_dir, "--dataset", bad, "--out", out)
    assert rc == 1 and "usf3-0001.wav: sample rate 8000 Hz; ZeroSpeech 2021 audio is 16000 Hz" in err
    assert not out.exists()


def test_sweep_scores_every_layer_and_plots(zr, tmp_path, capsys):
    model = s3prl_vgs.build_model("vg_mim", preset="tiny").save(tmp_path / "mim")
    out = tmp_path / "out"
    rc, table, err = _run(capsys, "--model", model, "--dataset", zr, "--out", out, "--phonetic-layer", "all",
                          "--random-init", "1")
    assert rc == 0, err
    scores = json.loads((out / "scores.json").read_text())
    assert scores["model"]["weights"] == "random_init" and scores["model"]["seed"] == 1
    assert [s["layer"] for s in scores["sweep"]] == ["hidden_states:0", "hidden_states:1", "hidden_states:2"]
    assert scores["best_layer"] == min(scores["sweep"], key=lambda s: s["mean"])["layer"]
    # The submission's phonetic files are the default layer's (L/2 = 1) sweep files.
    sweep1 = scores["sweep"][1]
    assert scores["phonetic"]["abx"] == sweep1["abx"]
    assert (out / "submission/phonetic/dev-clean/usm1-0000.txt").read_text() == \
           (out / "layers/hidden_states.1/dev-clean/usm1-0000.txt").read_text()
    png = out / "abx_per_layer.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ABX error (%) per layer" in table


@pytest.mark.slow
def test_recipe_stage9_scores_trained_and_random_init(tmp_path):
    """vgs.sh stage 9 on a stage-7 style speech-only upstream, without --zr2021_dir (the espeak-ng set)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from s3prl_vgs.upstream.export import export_speech_only

    torch.manual_seed(5)
    full = s3prl_vgs.build_model("fast_vgs", preset="tiny").save(tmp_path / "full")
    export_speech_only(full, tmp_path / "recipe/exp/fast_vgs_tiny/upstream")
    vgs_sh = Path(s3prl_vgs.__file__).parents[1] / "espnet_recipes/TEMPLATE/vgs1/vgs.sh"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(vgs_sh), "--stage", "9", "--stop_stage", "9", "--config_suffix", "_tiny",
                           "--python", sys.executable], cwd=tmp_path / "recipe", env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    zs = tmp_path / "recipe/exp/fast_vgs_tiny/zerospeech"
    both = json.loads((zs / "scores.json").read_text())
    assert both["schema"] == "s3prl-vgs.zerospeech.compare/1" and list(both["runs"]) == ["trained", "random_init"]
    trained, rand = both["runs"]["trained"], both["runs"]["random_init"]
    assert (trained["model"]["weights"], rand["model"]["weights"], rand["model"]["seed"]) == ("trained", "random_init", 1)
    assert trained["phonetic"]["abx"] != rand["phonetic"]["abx"]  # different weights, different features
    assert (zs / "trained/submission/meta.yaml").is_file() and (zs / "random_init/submission/meta.yaml").is_file()
    assert "| trained | trm1:2 |" in (zs / "scores.md").read_text() and "| random_init | trm1:2 |" in proc.stdout
