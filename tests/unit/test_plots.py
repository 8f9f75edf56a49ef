"""Pictures: the train.log parser on ESPnet's real line format, and every picture drawn from a real (tiny) model."""

from __future__ import annotations

import pytest
import torch

import s3prl_vgs
from s3prl_vgs.data.prepare import prepare
from s3prl_vgs.data.synthetic import generate
from s3prl_vgs.plots import PlotError, parse_train_log, plot_mim, plot_retrieval_grid, plot_training_curves

LOG = """[vm] 2026-12-02 03:12:27,507 (trainer:394) INFO: 1epoch results: [train] iter_time=0.033, loss=6.789, coarse_loss=6.170, fine_loss=6.172, batch_r1_a2i=0.233, grad_norm=3.272e+05, optim0_lr0=7.407e-04, train_time=0.885, time=2.66 seconds, total_count=3, [valid] loss=5.897, coarse_loss=5.361, retrieval_r1=25.000, time=0.13 seconds, total_count=1
[vm] 2026-12-02 03:14:29,704 (trainer:394) INFO: 2epoch results: [train] iter_time=0.030, loss=6.705, coarse_loss=6.094, fine_loss=6.095, batch_r1_a2i=0.267, grad_norm=3.301, optim0_lr0=6.173e-05, train_time=0.631, time=1 minute and 1.9 seconds, total_count=6, [valid] loss=5.797, coarse_loss=5.261, retrieval_r1=50.000, time=0.25 seconds, total_count=2
"""


def test_train_log_parsing_and_curves(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("some other line\n" + LOG)
    stats = parse_train_log(log)
    assert sorted(stats["train"]) == [1, 2]
    assert stats["train"][1]["loss"] == 6.789 and stats["train"][1]["grad_norm"] == 3.272e5
    assert stats["train"][2]["time"] == pytest.approx(61.9)
    assert stats["valid"][2] == {"loss": 5.797, "coarse_loss": 5.261, "retrieval_r1": 50.0, "time": 0.25,
                                 "total_count": 2.0}
    png = plot_training_curves(log, tmp_path / "out" / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    (tmp_path / "empty.log").write_text("no epochs here\n")
    with pytest.raises(PlotError, match="empty.log: no 'Nepoch results' lines"):
        parse_train_log(tmp_path / "empty.log")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    generate(root / "synth", n_train=0, n_val=0, n_test=3, n_commands=3, seed=5, progress=False)
    prepare("spokencoco", root / "synth", root / "data", progress=False)
    return root / "data" / "test"


def test_retrieval_grid_and_mim_pictures(data, tmp_path):
    torch.manual_seed(0)
    model = s3prl_vgs.build_model("vg_mim", preset="tiny").eval()
    png, result = plot_retrieval_grid(model, data, tmp_path / "grid.png", n_queries=2, k=2)
    assert png.stat().st_size > 10_000
    assert len(result.queries) == 2 and all(len(q.hits) == 2 for q in result.queries)
    assert len({q.id.split("-synth_")[-1].rsplit("_", 1)[0] for q in result.queries}) == 2  # distinct images
    assert plot_mim(model, data, tmp_path / "mim.png", n=2).stat().st_size > 10_000
    with pytest.raises(PlotError, match="mim 'none'"):
        plot_mim(s3prl_vgs.build_model("vg_mim", preset="tiny", mim="none"), data, tmp_path / "no.png")
