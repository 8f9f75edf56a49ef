"""vgs.sh conventions on the synthetic recipe's FaST-VGS debug config (slow tier: about 5 minutes on 2 cores).

* stages 3 and 6 with several jobs (``--nj``, ``--eval_nj``) give what one job gives;
* stage 6's ``--eval_means`` reports sets side by side and their mean (the Places protocol);
* collect-stats output is tied to the data it was computed from (stage 4 collects again, stage 5 refuses);
* egs/flickr8k's ``--init_from`` starts training from another model's weights;
* a 22.05 kHz stereo corpus goes through stage 2 and trains with ``--ngpu 2 --dist_backend gloo`` on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .test_synthetic_recipe import _copy_recipe, _env, run_recipe

pytestmark = pytest.mark.slow
ROI_OPTS = ["--boxes", "corpus/boxes.json", "--weights", "random", "--min-size", "224", "--max-size", "224"]
BASE = ["--model", "fast_vgs", "--config_suffix", "_debug"]


def _timeless(r):
    return {name: {k: v for k, v in m.items() if not k.endswith("seconds") and k != "ms_per_query"}
            for name, m in r["methods"].items()}, r["per_query"]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    recipe = _copy_recipe(tmp_path_factory.mktemp("stages") / "vgs1")
    out = run_recipe(recipe, *BASE, "--stop_stage", "6", "--local_data_opts", "--n_train 6 --n_val 2 --n_test 3",
                     "--nj", "2", "--eval_nj", "2", "--plots", "false", "--eval_opts", "--per-query")
    return recipe, out


def test_sharded_stages_3_and_6_equal_one_job(sharded, tmp_path):
    recipe, out = sharded
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


def test_eval_means_reports_each_set_and_their_mean(sharded):
    recipe, _ = sharded
    out = run_recipe(recipe, *BASE, "--stage", "6", "--stop_stage", "6", "--test_sets", "test val",
                     "--eval_means", "both=test,val", "--plots", "false")
    assert "Stage 6: test and val and their mean -> exp/fast_vgs_debug/decode/both/results.json" in out
    decode = recipe / "exp/fast_vgs_debug/decode"
    both = json.loads((decode / "both/results.json").read_text())
    sets = {s: json.loads((decode / s / "results.json").read_text()) for s in ("test", "val")}
    assert set(both["sets"]) == {"test", "val"} and set(both["mean"]) == {"coarse", "fine", "coarse_to_fine"}
    for m, mean in both["mean"].items():
        for d in ("A2I", "I2A"):
            for k in ("1", "5", "10"):
                assert mean[d][k] == pytest.approx((sets["test"]["methods"][m][d][k] + sets["val"]["methods"][m][d][k]) / 2)
                assert both["sets"]["val"][m][d][k] == sets["val"]["methods"][m][d][k]
    assert both["n_image"] == {"test": 3, "val": 2}
    assert "| coarse | **mean** |" in (decode / "both/results.md").read_text()


def test_stats_are_tied_to_their_data(sharded):
    recipe, _ = sharded
    stats = recipe / "exp/stats_fast_vgs"
    assert (stats / "data_fingerprint").is_file()
    out = run_recipe(recipe, *BASE, "--stage", "4", "--stop_stage", "4")
    assert "stats already in exp/stats_fast_vgs, collected from this data" in out
    # One training caption fewer (as a rerun of stage 2 with other limits would leave it).
    d = recipe / "dump/formatted/train"
    utt = (d / "wav.scp").read_text().split()[0]
    for name in ("wav.scp", "utt2num_samples", "utt2img", "utt2spk", "text"):
        lines = (d / name).read_text().splitlines(keepends=True)
        (d / name).write_text("".join(x for x in lines if x.split(maxsplit=1)[0] != utt))
    proc = subprocess.run(["./run.sh", *BASE, "--stage", "5", "--stop_stage", "5"], cwd=recipe, env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert ("Error: stage 5: the stats in exp/stats_fast_vgs do not belong to this data (the data changed since "
            "they were collected: dump/formatted/train/utt2num_samples); rerun stage 4") in proc.stdout + proc.stderr
    out = run_recipe(recipe, *BASE, "--stage", "4", "--stop_stage", "4")
    assert "Stage 4: collecting the stats in exp/stats_fast_vgs again: the data changed" in out
    shapes = (stats / "train/speech_shape").read_text().split("\n")
    assert utt not in {line.split(" ")[0] for line in shapes if line} and len([x for x in shapes if x]) == 6 * 5 - 1
    assert "collected from this data" in run_recipe(recipe, *BASE, "--stage", "4", "--stop_stage", "4")


def test_flickr8k_init_from_starts_training_from_another_model(sharded, tmp_path):
    """egs/flickr8k's --init_from (fine-tuning a SpokenCOCO model), run on the synthetic data and debug config."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from .test_synthetic_recipe import ROOT

    recipe, _ = sharded
    script = (ROOT / "egs/flickr8k/vgs1/run.sh").read_text().replace("--valid_set dev", "--valid_set val")
    (recipe / "run_flickr8k.sh").write_text(script)
    (recipe / "run_flickr8k.sh").chmod(0o755)
    # A "SpokenCOCO" experiment whose weights are all shifted by 1: the frozen conv layers of the
    # fine-tuned model then show whether training started from them.
    source = recipe / "exp/coco_like"
    shutil.copytree(recipe / "exp/fast_vgs_debug/model", source / "model")
    weights = {k: v + 1.0 if v.is_floating_point() else v for k, v in load_file(source / "model/model.safetensors").items()}
    save_file(weights, source / "model/model.safetensors")
    proc = subprocess.run(["./run_flickr8k.sh", *BASE, "--init_from", "exp/coco_like", "--stage", "5", "--stop_stage", "5",
                           "--train_args", "--max_epoch 1"], cwd=recipe, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = recipe / "exp/fast_vgs_ft_coco_like_max_epoch1"
    config = (exp / "config.yaml").read_text()
    assert "exp/coco_like/model/model.safetensors::model" in config
    state = torch.load(exp / "1epoch.pth", map_location="cpu", weights_only=True)
    frozen = "trunk.feature_extractor.conv_layers.0.conv.weight"
    assert torch.equal(state[f"model.{frozen}"], weights[frozen])
    trained = "cross_encoder.fc.0.weight"
    assert not torch.equal(state[f"model.{trained}"], weights[trained])  # and training went on from there
    proc = subprocess.run(["./run_flickr8k.sh", *BASE, "--init_from", str(tmp_path), "--stage", "5"], cwd=recipe,
                          env=_env(), capture_output=True, text=True)
    assert proc.returncode == 1 and f"--init_from {tmp_path}: no model.safetensors there" in proc.stderr


def test_stereo_22khz_corpus_trains_with_two_cpu_ranks(tmp_path):
    """A 22.05 kHz stereo copy of the synthetic corpus goes through stage 2 and trains with --ngpu 2 on CPU (gloo DDP)."""
    import soundfile as sf
    import torch
    import torchaudio

    from s3prl_vgs.data.datadir import read_scp, write_scp

    recipe = _copy_recipe(tmp_path / "vgs1")
    run_recipe(recipe, *BASE, "--stop_stage", "1", "--local_data_opts", "--n_train 6 --n_val 2 --n_test 2")
    for dset in ("train", "val", "test"):
        scp = recipe / "data" / dset / "wav.scp"
        wavs = read_scp(scp)
        for utt, path in wavs.items():
            x, sr = sf.read(recipe / path if not os.path.isabs(path) else path, dtype="float32")
            assert sr == 16000 and x.ndim == 1
            y = torchaudio.functional.resample(torch.from_numpy(x), 16000, 22050)
            out = recipe / "stereo22k" / dset / f"{utt}.wav"
            out.parent.mkdir(parents=True, exist_ok=True)
            sf.write(out, torch.stack([y, 0.5 * y], 1).numpy(), 22050, subtype="PCM_16")
            wavs[utt] = str(out)
        write_scp(scp, wavs)
    out = run_recipe(recipe, *BASE, "--stage", "2", "--stop_stage", "5", "--ngpu", "2", "--dist_backend", "gloo")
    assert "Stage 5: training fast_vgs with conf/train_fast_vgs_debug.yaml on 2 CPU processes (DDP, gloo)" in out
    formatted = read_scp(recipe / "dump/formatted/train/wav.scp")
    assert len(formatted) == 6 * 5
    for path in formatted.values():
        info = sf.info(recipe / path if not os.path.isabs(path) else path)
        assert (info.samplerate, info.channels) == (16000, 1)
    log = (recipe / "exp/fast_vgs_debug/train.log").read_text()
    assert "Rank 0 is connected to 1 peer ranks" in log and "Rank 1 is connected to 1 peer ranks" in log
    assert "2epoch results" in log
    state = torch.load(recipe / "exp/fast_vgs_debug/latest.pth", map_location="cpu", weights_only=True)
    # the debug config's 3 steps x 2 epochs, as one process: each rank steps on its half of every global batch
    assert int(state["schedule.num_updates"]) == 6
