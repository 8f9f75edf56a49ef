"""Model selection by retrieval: ESPnet's valid/retrieval_r1 equals vgs-evaluate's mean R@1 on the same split.

A real (tiny, CPU) VGSTask.main training run with ``best_model_criterion:
[[valid, retrieval_r1, max]]``; the statistic is read from the run's own reporter
log line, the exported best model is evaluated with vgs-evaluate
on the validation data dir, and the two must agree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from PIL import Image

from espnet_recipes.bin import vgs_dump, vgs_export
from espnet_recipes.vgs.validation import STAT
from s3prl_vgs import evaluate
from s3prl_vgs.data.datadir import DataDir
from s3prl_vgs.features.store import empty_record, write_records
from tests.integration.test_espnet_task import SYNTH_CONF, data_args, epoch_results, run_main

N_IMAGES, CAPTIONS = 10, 2  # 20 utterances per split: R@1 has room to be neither 0 nor 100
MODELS = ("fast_vgs", "vg_mim")


def make_split(root: Path, split: str, seed: int) -> None:
    """Tones whose pitch depends on the image, random images and RoI rows: something to retrieve."""
    rng = np.random.default_rng(seed)
    dd, records = DataDir(), []
    for j in range(N_IMAGES):
        img_id = f"{split}_img{j}"
        path = root / "img" / f"{img_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        dd.img[img_id] = str(path)
        rec = empty_record(img_id, 40, 48, 36, 2048)
        rec["features"][:2] = rng.random((2, 2048), dtype=np.float32)
        rec["boxes"][:2] = [[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]]
        rec["valid"][:2] = True
        records.append(rec)
        for k in range(CAPTIONS):
            utt = f"spk{k}-{img_id}_{k}"
            n = int(16000 * rng.uniform(0.5, 1.0))
            wav = 0.1 * np.sin(2 * np.pi * (150 + 60 * j) * np.arange(n) / 16000) + 0.01 * rng.standard_normal(n)
            wpath = root / "wav" / f"{utt}.wav"
            wpath.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(wpath), wav, 16000, subtype="PCM_16")
            dd.wav[utt], dd.utt2img[utt] = str(wpath), img_id
    dd.write(root / "data" / split)
    (root / "roi").mkdir(exist_ok=True)
    write_records(root / "roi" / f"{split}.h5", records, {"made_by": "test_retrieval_selection"})


def valid_stats(log: str, epoch: int) -> dict:
    """The [valid] statistics of ESPnet's '<epoch>epoch results' line."""
    line = epoch_results(log, epoch)
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-0-9.e+]+)", line[line.index("[valid]"):])}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("selection_corpus")
    for i, split in enumerate(("train", "val")):
        make_split(root, split, seed=10 + i)
        assert vgs_dump.main(["--data", str(root / "data" / split), "--roi", str(root / "roi" / f"{split}.h5"),
                              "--out", str(root / "dump" / split)]) == 0
    return root


@pytest.mark.parametrize("model", MODELS)
def test_selection_statistic_equals_vgs_evaluate(model, corpus, tmp_path):
    config = yaml.safe_load((SYNTH_CONF / f"train_{model}_debug.yaml").read_text())
    config.update(max_epoch=2, num_iters_per_epoch=2, best_model_criterion=[["valid", STAT, "max"]],
                  early_stopping_criterion=["valid", STAT, "max"])
    conf = tmp_path / "train.yaml"
    conf.write_text(yaml.safe_dump(config))
    out = tmp_path / "exp"
    log = run_main(["--config", str(conf), "--ngpu", "0", "--output_dir", str(out), *data_args(corpus, model)])
    assert f"{STAT}=" in log  # logged with the other validation statistics

    per_epoch = {e: valid_stats(log, e) for e in (1, 2)}
    best_epoch = max(per_epoch, key=lambda e: per_epoch[e][STAT])  # ties: the first, as ESPnet
    assert (out / f"valid.{STAT}.best.pth").exists()
    assert (out / f"valid.{STAT}.best.pth").resolve().name == f"{best_epoch}epoch.pth"

    assert vgs_export.main(["--exp", str(out), "--out", str(tmp_path / "upstream")]) == 0
    results = tmp_path / "val.json"
    args = ["--model", str(tmp_path / "upstream"), "--data", str(corpus / "data" / "val"), "--out", str(results), "--quiet"]
    if model == "fast_vgs":
        args += ["--roi", str(corpus / "roi" / "val.h5")]
    assert evaluate.main(args) == 0
    coarse = json.loads(results.read_text())["methods"]["coarse"]
    best = per_epoch[best_epoch]  # ESPnet logs 3 decimals; recalls here are multiples of 5%
    assert best[STAT] == pytest.approx(coarse["mean_R@1"], abs=1e-3)
    for k in (1, 5, 10):
        assert best[f"r{k}_a2i"] == pytest.approx(coarse["A2I"][str(k)], abs=1e-3)
        assert best[f"r{k}_i2a"] == pytest.approx(coarse["I2A"][str(k)], abs=1e-3)
