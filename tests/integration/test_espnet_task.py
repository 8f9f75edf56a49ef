"""VGSTask through ESPnet's real parser, data loading, trainer and checkpoints (CPU, tiny models)."""

from __future__ import annotations

import argparse
import io
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from espnet2.train.dataset import DATA_TYPES
from espnet2.train.distributed_utils import DistributedOption
from PIL import Image

import s3prl_vgs
from espnet_recipes.bin import vgs_dump, vgs_export
from espnet_recipes.tasks.vgs import VGSTask, model_choices
from espnet_recipes.vgs.data_types import VGSDataError, roi_feats_loader
from espnet_recipes.vgs.espnet_model import ESPnetFaSTVGSModel, ESPnetVGMIMModel
from espnet_recipes.vgs.scheduler import WarmupLinearLR
from s3prl_vgs.config import ConfigError
from s3prl_vgs.data.datadir import DataDir, read_scp
from s3prl_vgs.features import RoIFeatureStore
from s3prl_vgs.features.store import empty_record, write_records
from s3prl_vgs.losses import masked_margin_softmax_loss
from s3prl_vgs.optim import warmup_linear

ROOT = Path(__file__).resolve().parents[2]
SYNTH_CONF = ROOT / "egs" / "synthetic" / "vgs1" / "conf"
ALL_CONFIGS = sorted(ROOT.glob("egs/*/vgs1/conf/*.yaml"))
MODELS = ("fast_vgs", "vg_mim")
N_IMAGES, CAPTIONS = 4, 4  # per split: 16 utterances, 4 captions of each image
FEAT_DIM = 128  # RoI feature width of the test stores: the synthetic configs' (synth_roi128)
STEPS = 2 * 3  # the debug configs: max_epoch 2 x num_iters_per_epoch 3, accum_grad 1


# ----------------------------------------------------------------------------- helpers


def make_split(root: Path, split: str, seed: int, n_images: int = N_IMAGES, captions: int = CAPTIONS) -> None:
    """``root/data/<split>`` (noisy tones whose pitch depends on the image, random images) and its RoI store
    ``root/roi/<split>.h5``."""
    rng = np.random.default_rng(seed)
    dd, records = DataDir(), []
    for j in range(n_images):
        img_id = f"{split}_img{j}"
        path = root / "img" / f"{img_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        dd.img[img_id] = str(path)
        rec = empty_record(img_id, 40, 48, 36, FEAT_DIM)
        rec["features"][:3] = rng.random((3, FEAT_DIM), dtype=np.float32)
        rec["boxes"][:3] = [[0.1, 0.1, 0.5, 0.5], [0.4, 0.2, 0.9, 0.8], [0.0, 0.0, 1.0, 1.0]]
        rec["valid"][:3] = True
        records.append(rec)
        for k in range(captions):
            utt = f"spk{k}-{img_id}_{k}"
            n = int(16000 * rng.uniform(0.6, 1.2))
            wav = 0.1 * np.sin(2 * np.pi * (200 + 100 * j) * np.arange(n) / 16000) + 0.01 * rng.standard_normal(n)
            wpath = root / "wav" / f"{utt}.wav"
            wpath.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(wpath), wav, 16000, subtype="PCM_16")
            dd.wav[utt], dd.utt2img[utt] = str(wpath), img_id
    dd.write(root / "data" / split)
    (root / "roi").mkdir(exist_ok=True)
    write_records(root / "roi" / f"{split}.h5", records, {"made_by": "test_espnet_task"})


def make_dumped_corpus(root: Path, seed: int, n_images: int = N_IMAGES, captions: int = CAPTIONS) -> Path:
    """train and val splits (seeds ``seed``, ``seed + 1``) with their stage-4 dumps under ``root``."""
    for i, split in enumerate(("train", "val")):
        make_split(root, split, seed=seed + i, n_images=n_images, captions=captions)
        assert vgs_dump.main(["--data", str(root / "data" / split), "--roi", str(root / "roi" / f"{split}.h5"),
                              "--out", str(root / "dump" / split)]) == 0
    return root


def data_args(corpus: Path, model: str) -> list:
    """The --*_data_path_and_name_and_type / --*_shape_file options of vgs.sh stage 5."""
    args = []
    for phase, split in (("train", "train"), ("valid", "val")):
        d = corpus / "dump" / split
        items = [("wav.scp", "speech", "sound"), ("image_id", "image_id", "text_int")]
        if model == "fast_vgs":
            items += [("roi.scp", "roi_feats", "roi_feats"), ("roi.scp", "roi_boxes", "roi_boxes")]
        else:
            items += [("image.scp", "image", "image")]
        for f, name, kind in items:
            args += [f"--{phase}_data_path_and_name_and_type", f"{d / f},{name},{kind}"]
        args += [f"--{phase}_shape_file", str(d / "wav.scp")]
    return args


def run_main(cmd: list) -> str:
    """``VGSTask.main(cmd)`` with its INFO log captured and returned."""
    handler = logging.StreamHandler(io.StringIO())
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        VGSTask.main(cmd=cmd)
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    return handler.stream.getvalue()


def best_checkpoint(out: Path) -> Path:
    """``<phase>.<metric>.best.pth`` of the run's first best_model_criterion (what vgs-export picks)."""
    phase, metric, _ = yaml.safe_load((out / "config.yaml").read_text())["best_model_criterion"][0]
    return out / f"{phase}.{metric}.best.pth"


def epoch_results(log: str, epoch: int) -> str:
    lines = [line for line in log.splitlines() if f"{epoch}epoch results:" in line]
    assert lines, f"no '{epoch}epoch results' in the log"
    return lines[-1]


def debug_args(model: str, corpus: Path, *extra: str) -> argparse.Namespace:
    return VGSTask.get_parser().parse_args(
        ["--config", str(SYNTH_CONF / f"train_{model}_debug.yaml"), "--output_dir", "unused", *data_args(corpus, model), *extra])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_dumped_corpus(tmp_path_factory.mktemp("vgs_corpus"), seed=0)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One real 2-epoch CPU training run per model through VGSTask.main: {model: (exp dir, log)}."""
    runs = {}
    for model in MODELS:
        out = tmp_path_factory.mktemp(f"exp_{model}")
        log = run_main(["--config", str(SYNTH_CONF / f"train_{model}_debug.yaml"), "--ngpu", "0",
                        "--output_dir", str(out), *data_args(corpus, model)])
        runs[model] = (out, log)
    return runs


# ----------------------------------------------------------------------------- parser and model


def test_print_config_lists_our_choices(monkeypatch):
    # ESPnet's print_config re-parses sys.argv, as on the command line
    argv = ["vgs_train", "--print_config", "--model", "vg_mim", "--scheduler", "warmuplinear"]
    monkeypatch.setattr("sys.argv", argv)
    buf = io.StringIO()
    VGSTask.print_config(file=buf)
    config = yaml.safe_load(buf.getvalue())
    assert config["model"] == "vg_mim" and config["model_conf"] == {"preset": "base"}
    assert config["scheduler_conf"] == {"total_steps": None, "warmup_fraction": 0.1, "last_epoch": -1}
    assert config["speech_crop_sec"] is None
    with pytest.raises(SystemExit) as e:
        VGSTask.main(cmd=argv[1:])
    assert e.value.code == 0
    with pytest.raises(SystemExit):  # not a choice
        VGSTask.get_parser().parse_args(["--model", "no_such_model"])


def test_build_model_maps_model_conf_onto_the_config():
    parser = VGSTask.get_parser()
    args = parser.parse_args(["--model", "fast_vgs", "--model_conf", "preset=tiny", "--model_conf", "margin=0.5",
                              "--model_conf", "speech.dropout=0.0", "--output_dir", "x"])
    model = VGSTask.build_model(args)
    assert isinstance(model, ESPnetFaSTVGSModel)
    assert isinstance(model.model, s3prl_vgs.models.get_model_class("fast_vgs"))
    expected = s3prl_vgs.build_model("fast_vgs", "tiny").config
    got = model.model.config
    assert got.margin == 0.5 and got.speech.dropout == 0.0
    # deep merge: the tiny preset's other speech fields stay
    assert got.speech.hidden_size == expected.speech.hidden_size == 64
    args = parser.parse_args(["--model", "vg_mim", "--model_conf", "preset=tiny", "--output_dir", "x"])
    assert isinstance(VGSTask.build_model(args), ESPnetVGMIMModel)
    for name, cls in model_choices.classes.items():  # vgs-export relies on it
        assert cls.model_name == name
    bad = parser.parse_args(["--model", "fast_vgs", "--model_conf", "preset=tiny", "--model_conf", "hiden_size=3",
                             "--output_dir", "x"])
    with pytest.raises(ConfigError, match="hiden_size"):
        VGSTask.build_model(bad)


def _offline_overrides(config_file: Path) -> list:
    """--model_conf options that turn every pretrained backbone of a config off (no hub in tests)."""
    conf = yaml.safe_load(config_file.read_text())
    model_conf = dict(conf.get("model_conf") or {})
    cls = s3prl_vgs.models.get_model_class(conf["model"])
    resolved = cls.config_class.preset(model_conf.pop("preset", "base"), **model_conf).to_dict()
    out = [f"--model_conf={key}.pretrained=null" for key, sub in resolved.items()
           if isinstance(sub, dict) and sub.get("pretrained")]
    if resolved.get("visual_feat_dim") not in (None, FEAT_DIM):  # real corpora's 2048-d: fit the test store
        out.append(f"--model_conf=visual_feat_dim={FEAT_DIM}")
    return out


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: f"{p.parts[-4]}/{p.name}")
def test_dry_run_every_recipe_config(config, corpus, tmp_path):
    conf = yaml.safe_load(config.read_text())
    out = tmp_path / "exp"
    run_main(["--config", str(config), "--dry_run", "true", "--ngpu", "0", "--output_dir", str(out),
              *data_args(corpus, conf["model"]), *_offline_overrides(config)])
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["model"] == conf["model"] and written["model_conf"]["preset"] == conf["model_conf"]["preset"]
    assert written["max_epoch"] == conf["max_epoch"]
    # ESPnet's trainer reads these only after the first epoch: check their shape now
    criteria = written["best_model_criterion"] + [written["early_stopping_criterion"]]
    assert all(len(c) == 3 and c[0] in ("train", "valid") and c[2] in ("min", "max") for c in criteria)


# ----------------------------------------------------------------------------- data


def test_dump_writes_espnet_inputs(corpus):
    d = corpus / "dump" / "train"
    utt2img = DataDir.read(corpus / "data" / "train").utt2img
    images = dict(line.split() for line in (d / "images").read_text().splitlines())
    image_id = read_scp(d / "image_id")
    assert set(image_id) == set(utt2img)
    assert all(images[image_id[u]] == utt2img[u] for u in utt2img)
    roi = read_scp(d / "roi.scp")
    assert roi[next(iter(roi))].endswith(":" + utt2img[next(iter(roi))])


def test_train_batches_mask_other_captions_of_the_same_image(corpus):
    """The real training iterator: per-epoch random batches, several captions of one image in a
    batch, and the model's loss masking exactly those pairs."""
    args = debug_args("fast_vgs", corpus)
    factory = VGSTask.build_iter_factory(args, DistributedOption(), mode="train")
    store = RoIFeatureStore(corpus / "roi" / "train.h5")
    utt2img = DataDir.read(corpus / "data" / "train").utt2img
    images = dict(line.split() for line in (corpus / "dump" / "train" / "images").read_text().splitlines())
    batches = [b for epoch in (1, 2) for b in factory.build_iter(epoch)]
    assert [u for u, _ in batches[:3]] != [u for u, _ in batches[3:]]  # new batches each epoch
    model = VGSTask.build_model(args).eval()
    n_with_duplicates = 0
    for utts, batch in batches:
        assert set(batch) == {"speech", "speech_lengths", "image_id", "roi_feats", "roi_boxes"}
        B = len(utts)
        assert batch["image_id"].shape == (B, 1) and batch["roi_feats"].shape == (B, 36, FEAT_DIM)
        ids = [utt2img[u] for u in utts]
        assert [images[str(int(i))] for i in batch["image_id"].view(-1)] == ids
        np.testing.assert_array_equal(batch["roi_feats"][0].numpy(), store[ids[0]]["features"])
        same = torch.tensor([[a == b for b in ids] for a in ids])
        if not bool((same & ~torch.eye(B, dtype=torch.bool)).any()):
            continue
        n_with_duplicates += 1
        with torch.no_grad():
            loss, stats, weight = model(**batch, utt_id=utts)
            inner = model.model
            a = inner.encode_audio(batch["speech"], batch["speech_lengths"])
            v = inner.encode_image(batch["roi_feats"], batch["roi_boxes"])
            c = inner.config
            expect = (c.coarse_matching_weight * masked_margin_softmax_loss(inner.coarse_scores(a, v), same, c.margin)
                      + c.fine_matching_weight * masked_margin_softmax_loss(inner.fine_scores(a, v), same, c.margin))
            unmasked = inner.compute_loss(a, v).loss
        assert float(weight) == B
        loss = loss.reshape(())  # force_gatherable makes scalars (1,)
        torch.testing.assert_close(loss, expect)
        assert not torch.isclose(loss, unmasked)
    assert n_with_duplicates >= 1


def test_image_type_goes_through_the_models_eval_transform(corpus):
    args = debug_args("vg_mim", corpus)
    model = VGSTask.build_model(args).model
    images = DATA_TYPES["image"]["func"](str(corpus / "dump" / "val" / "image.scp"))  # as ESPnet finds it
    utt = next(iter(images))
    raw = images[utt]
    assert raw.dtype == np.uint8 and raw.shape == (40, 48, 3)
    out = VGSTask.build_preprocess_fn(args, train=False)(utt, {"image": raw})["image"]
    expect = model.image_transform(False)(Image.fromarray(raw)).numpy()
    np.testing.assert_array_equal(out, expect)
    train_out = VGSTask.build_preprocess_fn(args, train=True)(utt, {"image": raw})["image"]
    assert train_out.shape == expect.shape and train_out.dtype == np.float32
    no_augment = debug_args("vg_mim", corpus, "--image_augment", "false")
    np.testing.assert_array_equal(VGSTask.build_preprocess_fn(no_augment, train=True)(utt, {"image": raw})["image"], expect)


def test_speech_crop_keeps_the_start(corpus):
    args = debug_args("fast_vgs", corpus, "--speech_crop_sec", "0.5", "--valid_speech_crop_sec", "0.75")
    wav = np.arange(20000, dtype=np.float32)
    assert len(VGSTask.build_preprocess_fn(args, train=True)("u", {"speech": wav})["speech"]) == 8000
    np.testing.assert_array_equal(VGSTask.build_preprocess_fn(args, train=False)("u", {"speech": wav})["speech"],
                                  wav[:12000])


def test_missing_image_id_names_the_file_and_store(corpus, tmp_path, capsys):
    scp = tmp_path / "roi.scp"
    store = corpus / "roi" / "train.h5"
    scp.write_text(f"u1 {store}:train_img0\nu2 {store}:not_an_image\n")
    with pytest.raises(VGSDataError, match=r"roi\.scp: 1 utterance.*not in .*train\.h5.*u2 -> not_an_image"):
        roi_feats_loader(str(scp))
    # the same problem caught by stage 4 (vgs_dump), before ESPnet starts
    assert vgs_dump.main(["--data", str(corpus / "data" / "val"), "--roi", str(store), "--out", str(tmp_path / "d")]) == 1
    assert "image id(s) of" in capsys.readouterr().err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("model", MODELS)
def test_collect_stats_reads_every_data_name(model, corpus, tmp_path):
    """ESPnet's collect-stats (streaming iterator): shape files for every batch key."""
    out = tmp_path / "stats"
    run_main(["--config", str(SYNTH_CONF / f"train_{model}_debug.yaml"), "--collect_stats", "true", "--ngpu", "0",
              "--output_dir", str(out), *data_args(corpus, model)])
    shapes = {name: read_scp(out / "train" / f"{name}_shape") for name in ("speech", "image_id")}
    assert len(shapes["speech"]) == N_IMAGES * CAPTIONS
    assert set(shapes["image_id"].values()) == {"1"}
    if model == "fast_vgs":
        assert set(read_scp(out / "valid" / "roi_feats_shape").values()) == {f"36,{FEAT_DIM}"}
        assert set(read_scp(out / "valid" / "roi_boxes_shape").values()) == {"36,4"}
    else:
        assert set(read_scp(out / "valid" / "image_shape").values()) == {"3,32,32"}  # the tiny preset's size
    assert (out / "train" / "speech_stats.npz").exists()


# ----------------------------------------------------------------------------- training


def test_warmuplinear_scheduler():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupLinearLR(opt)  # total_steps from the trainer
    with pytest.raises(RuntimeError, match="total_steps"):
        sched.step()
    sched = WarmupLinearLR(opt)
    sched.set_total_steps(20)
    lrs = []
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([warmup_linear(s / 20, 0.1) for s in range(1, 21)])


@pytest.mark.parametrize("model", MODELS)
def test_real_training_run(model, trained):
    out, log = trained[model]
    assert f"warmuplinear: total_steps = {STEPS} (3 per epoch x 2 epochs)" in log
    for epoch in (1, 2):
        line = epoch_results(log, epoch)
        assert "[train]" in line and "[valid]" in line and "batch_r1_a2i=" in line
    for name in ("checkpoint.pth", "latest.pth"):
        assert (out / name).exists()
    assert best_checkpoint(out).exists()
    state = torch.load(out / "latest.pth", map_location="cpu", weights_only=True)
    assert int(state["schedule.num_updates"]) == STEPS  # the post-step hook ran after every optimizer step
    first = float(re.search(r"\[train\].*?optim0_lr0=([0-9.e+-]+)", epoch_results(log, 1)).group(1))
    last = float(re.search(r"\[train\].*?optim0_lr0=([0-9.e+-]+)", epoch_results(log, 2)).group(1))
    assert last < first  # decaying after the warmup


def test_resume_continues_the_schedule_and_the_step_count(corpus, trained, tmp_path):
    out = tmp_path / "exp"
    base = ["--config", str(SYNTH_CONF / "train_vg_mim_debug.yaml"), "--ngpu", "0", "--output_dir", str(out),
            *data_args(corpus, "vg_mim")]
    run_main([*base, "--max_epoch", "1"])
    log = run_main([*base, "--resume", "true"])  # max_epoch 2: the schedule is stretched to 6 steps
    assert "The training was resumed" in log and "1epoch results" not in log
    state = torch.load(out / "latest.pth", map_location="cpu", weights_only=True)
    assert int(state["schedule.num_updates"]) == STEPS
    lr_of = lambda text: float(re.search(r"\[train\].*?optim0_lr0=([0-9.e+-]+)", epoch_results(text, 2)).group(1))
    assert lr_of(log) > 0
    assert lr_of(log) == pytest.approx(lr_of(trained["vg_mim"][1]))  # as if never interrupted


def test_mim_weight_switches_on_with_the_epoch(trained):
    _, log = trained["vg_mim"]
    # debug config: mim_start_epoch 1 (0-based) = ESPnet's epoch 2
    assert "mim_loss" not in epoch_results(log, 1)
    assert re.search(r"\[train\].*mim_loss=", epoch_results(log, 2))
    assert re.search(r"\[valid\].*mim_loss=", epoch_results(log, 2))


def test_momentum_encoder_follows_the_schedule(corpus):
    model = VGSTask.build_model(debug_args("vg_mim", corpus))
    inner = model.model
    with torch.no_grad():
        for p in inner.image_encoder.parameters():
            p.add_(1.0)  # as if the optimizer had moved the online encoder
    before = {k: v.clone() for k, v in inner.momentum_image_encoder.named_buffers()}
    online = dict(inner.image_encoder.named_parameters())
    model.set_total_steps(10)
    model.num_updates.fill_(4)
    model.after_optimizer_step()
    alpha = inner.momentum_at(4, 10)
    assert 0.999 < alpha < 1.0 and int(model.num_updates) == 5
    for name, after in inner.momentum_image_encoder.named_buffers():
        if name in online:
            torch.testing.assert_close(after, alpha * before[name] + (1 - alpha) * online[name].detach())
    model.total_steps = None
    with pytest.raises(RuntimeError, match="total_steps"):
        model.after_optimizer_step()


def test_momentum_encoder_moved_during_training(trained, corpus):
    out, _ = trained["vg_mim"]
    state = torch.load(out / "latest.pth", map_location="cpu", weights_only=True)
    init = VGSTask.build_model(debug_args("vg_mim", corpus)).state_dict()  # same seed as training (0)
    key = next(k for k in state if k.startswith("model.momentum_image_encoder.") and k.endswith("weight"))
    online = key.replace("momentum_image_encoder", "image_encoder")
    assert not torch.equal(state[key], state[online])  # an EMA, not a copy
    assert not torch.equal(state[key], init[key])


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("model", MODELS)
def test_export_round_trip(model, trained, tmp_path):
    out, _ = trained[model]
    assert vgs_export.main(["--exp", str(out), "--out", str(tmp_path / "upstream")]) == 0
    exported = s3prl_vgs.load_model(tmp_path / "upstream").eval()
    config = yaml.safe_load((out / "config.yaml").read_text())
    espnet_model = VGSTask.build_model(argparse.Namespace(**config))
    espnet_model.load_state_dict(torch.load(best_checkpoint(out), map_location="cpu", weights_only=True))
    inner = espnet_model.model.eval()
    torch.manual_seed(0)
    wavs, lengths = torch.randn(2, 16000), torch.tensor([16000, 11000])
    with torch.no_grad():
        torch.testing.assert_close(exported.encode_audio(wavs, lengths).coarse, inner.encode_audio(wavs, lengths).coarse)
        if model == "fast_vgs":
            feats, boxes = torch.rand(3, 36, FEAT_DIM), torch.rand(3, 36, 4)
            torch.testing.assert_close(exported.encode_image(feats, boxes).coarse, inner.encode_image(feats, boxes).coarse)
        else:
            images = torch.randn(3, 3, inner.config.image.image_size, inner.config.image.image_size)
            torch.testing.assert_close(exported.encode_image(images).coarse, inner.encode_image(images).coarse)
    meta = yaml.safe_load((tmp_path / "upstream" / "config.yaml").read_text())
    assert meta["extra"]["exported_from"]["checkpoint"] == str(best_checkpoint(out))


def test_export_errors_name_the_file(tmp_path, capsys):
    assert vgs_export.main(["--exp", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "config.yaml: missing" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("model: fast_vgs\nmodel_conf: {preset: tiny}\nbest_model_criterion: [[valid, loss, min]]\n")
    assert vgs_export.main(["--exp", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "no checkpoint found" in capsys.readouterr().err
    torch.save({"encoder.weight": torch.zeros(1)}, tmp_path / "latest.pth")
    assert vgs_export.main(["--exp", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "latest.pth: no 'model.*' weights" in capsys.readouterr().err


# ----------------------------------------------------------------------------- distributed


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_ddp_on_cpu_with_torchrun(model, corpus, tmp_path):
    """Two DDP ranks (gloo, CPU) started by torchrun: each process imports the task again and
    registers our data types and scheduler; the MIM decoder is unused in epoch 1 (unused_parameters)."""
    import subprocess
    import sys

    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "espnet_recipes.bin.vgs_train", "--config", str(SYNTH_CONF / f"train_{model}_debug.yaml"),
           "--ngpu", "0", "--dist_backend", "gloo", "--output_dir", str(out), *data_args(corpus, model)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = torch.load(out / "latest.pth", map_location="cpu", weights_only=True)
    # each rank takes every optimizer step on its half of the batch: 3 batches per epoch x 2 epochs
    assert int(state["schedule.num_updates"]) == STEPS
    assert "2epoch results" in proc.stderr


def test_checkpoints_from_before_the_schedule_object_resume(corpus):
    """ESPnet checkpoints that kept the step count as top-level ``num_updates`` still load (--resume)."""
    model = VGSTask.build_model(debug_args("vg_mim", corpus))
    state = model.state_dict()
    state["num_updates"] = state.pop("schedule.num_updates").fill_(7)
    model.load_state_dict(state)
    assert int(model.num_updates) == 7 and int(model.schedule.num_updates) == 7
