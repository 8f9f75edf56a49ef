"""Stage 8's probe: s3prl's runner on trained / random-init / fbank upstreams, results.json, plot, rows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import s3prl_vgs
from s3prl_vgs.upstream.export import export_speech_only
from s3prl_vgs.upstream.probe import ProbeError, parse_metric, pick_checkpoint, probe_rows, rows_markdown

BIN = Path(sys.executable).parent


def test_probe_three_upstreams_results_and_rows(tmp_path):
    synth = subprocess.run([str(BIN / "vgs-synth"), "--out", str(tmp_path / "corp"), "--n-train", "1", "--n-val", "1",
                            "--n-test", "1", "--seed", "3", "--n-commands", "24"], capture_output=True, text=True, timeout=300)
    assert synth.returncode == 0, synth.stderr[-2000:]
    torch.manual_seed(1)  # the "trained" upstream: any weights but the random-init probe's seed-0 ones
    exp = tmp_path / "exp" / "vg_mim_tiny"
    up = export_speech_only(s3prl_vgs.build_model("vg_mim", preset="tiny").save(tmp_path / "full"), exp / "upstream")
    out = exp / "probe" / "fluent_commands"
    run = subprocess.run([sys.executable, "-m", "s3prl_vgs.upstream.probe", "run", "--upstream", str(up),
                          "--data", str(tmp_path / "corp" / "fluent_commands"), "--out", str(out), "--steps", "4",
                          "--eval_step", "2", "--batch_size", "4", "--num_workers", "0"],
                         capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]

    summary = json.loads((out / "results.json").read_text())
    results = summary["results"]
    assert list(results) == ["trained", "random", "fbank"] and summary["task"] == "fluent_commands"
    with torch.no_grad():
        n_layers = len(s3prl_vgs.load_model(up).encode_audio(torch.randn(1, 16000)).hidden_states)
    for variant, r in results.items():
        assert r["metric"] == "acc" and 0.0 <= r["value"] <= 1.0
        assert Path(r["checkpoint"]).is_file() and r["checkpoint_step"] in (2, 4)
        assert math.isclose(sum(r["layer_weights"]), 1.0, abs_tol=1e-5) and all(w > 0 for w in r["layer_weights"])
        assert r["num_layers"] == (1 if variant == "fbank" else n_layers)
        # the test metric is s3prl's own: the evaluation's predictions against the truth it wrote
        pred = (out / variant / "test_predict.csv").read_text().splitlines()
        truth = (out / variant / "test_truth.csv").read_text().splitlines()
        assert len(pred) == len(truth) > 0
        assert r["value"] == pytest.approx(sum(p == t for p, t in zip(pred, truth)) / len(truth))
    assert results["trained"]["upstream"] == results["random"]["upstream"] == "vg_mim_local"
    assert results["fbank"]["upstream"] == "fbank"
    # the random-init upstream has the trained one's architecture (same keys and shapes), not its weights
    a, b = load_file(str(up / "model.safetensors")), load_file(str(out / "random_upstream" / "model.safetensors"))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert (out / "layer_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = probe_rows(tmp_path / "exp")
    assert [(r["tag"], r["upstream"]) for r in rows] == [("vg_mim_tiny", v) for v in ("trained", "random", "fbank")]
    assert rows[0]["value"] == results["trained"]["value"]
    assert "| vg_mim_tiny | fluent_commands | fbank | acc |" in rows_markdown(rows)
    printed = subprocess.run([sys.executable, "-m", "s3prl_vgs.upstream.probe", "rows", "--exp", str(tmp_path / "exp")],
                             capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0 and "| vg_mim_tiny | fluent_commands | trained | acc |" in printed.stdout
    assert json.loads((tmp_path / "exp" / "probe_rows.json").read_text())["rows"] == rows


def test_metric_and_checkpoint_errors_name_the_file(tmp_path):
    assert parse_metric("[Runner] ...\ntest acc: 0.25\n", "x") == {"acc": 0.25}
    with pytest.raises(ProbeError, match="x.ckpt: the evaluation printed no 'test <metric>"):
        parse_metric("dev acc: 0.5\n", "x.ckpt")
    with pytest.raises(ProbeError, match="no dev-best.ckpt or states"):
        pick_checkpoint(tmp_path)
    for step in (2, 10, 4):
        (tmp_path / f"states-{step}.ckpt").write_bytes(b"")
    assert pick_checkpoint(tmp_path).name == "states-10.ckpt"
    (tmp_path / "dev-best.ckpt").write_bytes(b"")
    assert pick_checkpoint(tmp_path).name == "dev-best.ckpt"
