"""Model selection by retrieval: ESPnet's valid/retrieval_r1 equals vgs-evaluate's mean R@1 on the same split.

A real (tiny, CPU) VGSTask.main training run with ``best_model_criterion:
[[valid, retrieval_r1, max]]``; the statistic is read from the run's own reporter
log line, the exported best model is evaluated with vgs-evaluate
on the validation data dir, and the two must agree.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from espnet_recipes.bin import vgs_export
from espnet_recipes.vgs.validation import STAT
from s3prl_vgs import evaluate
from tests.integration.test_espnet_task import SYNTH_CONF, data_args, epoch_results, make_dumped_corpus, run_main

N_IMAGES, CAPTIONS = 10, 2  # 20 utterances per split: R@1 has room to be neither 0 nor 100
MODELS = ("fast_vgs", "vg_mim")


def valid_stats(log: str, epoch: int) -> dict:
    """The [valid] statistics of ESPnet's '<epoch>epoch results' line."""
    line = epoch_results(log, epoch)
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-0-9.e+]+)", line[line.index("[valid]"):])}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_dumped_corpus(tmp_path_factory.mktemp("selection_corpus"), seed=10, n_images=N_IMAGES,
                              captions=CAPTIONS)


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
