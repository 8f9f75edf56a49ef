"""Validation by subset (Places: dev_seen and dev_unseen, each with its own gallery, selected on their mean).

* :class:`RetrievalTap` with a subset map, on hand-made vectors whose recalls are worked out below by
  hand, and on a real tiny FaST-VGS model against ranks counted here one caption / image at a time.
* A real (tiny, CPU) ``VGSTask.main`` run with ``--valid_utt2subset``: each subset's statistics in
  ESPnet's log equal ``vgs-evaluate``'s on that subset's own data dir, and ``retrieval_r1`` (what
  ``best_model_criterion`` selects on) is their mean.
* Two gloo DDP ranks, each tapping a shard: the same per-subset statistics on every rank.
* A map that misses a validation utterance, or names one the split lacks: one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import s3prl_vgs
from espnet_recipes.bin import vgs_export
from espnet_recipes.tasks.vgs import VGSTask
from espnet_recipes.vgs.trainer import VGSTrainer
from espnet_recipes.vgs.validation import STAT, RetrievalTap, read_utt2subset
from s3prl_vgs import evaluate
from s3prl_vgs.data.datadir import DataDir, DataDirError, write_scp
from s3prl_vgs.errors import FileProblem
from s3prl_vgs.models.base import AudioOutput, ImageOutput, VGSModelMixin
from tests.integration.test_ddp import run_ranks
from tests.integration.test_espnet_task import SYNTH_CONF, data_args, make_dumped_corpus, run_main
from tests.integration.test_retrieval_selection import valid_stats

# ----------------------------------------------------------------------------- hand-made vectors


class Lookup(torch.nn.Module):
    """The "speech" of a batch is its caption's retrieval vector and the RoI row its image's
    (a model whose vectors are known); scores are the model contract's inner products."""

    coarse_scores = staticmethod(VGSModelMixin.coarse_scores)

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))  # a device for the tap

    def encode_audio(self, speech, lengths):
        return AudioOutput(coarse=speech)

    def encode_image(self, feats, boxes):
        return ImageOutput(coarse=feats[:, 0])


IMAGES = {0: (1.0, 0.0), 1: (0.0, 1.0),  # seen: s0, s1
          2: (2.0, 0.0), 3: (0.0, -1.0)}  # unseen: v0, v1
CAPTIONS = [  # utt, subset, image, vector; the scores on the subset's own gallery
    ("u0", "seen", 0, (1.0, 0.0)),     # s0 1 > s1 0        hit  (one union gallery: v0 2, miss)
    ("u1", "seen", 1, (0.9, 0.5)),     # s1 0.5 < s0 0.9    miss
    ("w0", "unseen", 2, (1.0, 0.0)),   # v0 2 > v1 0        hit
    ("w1", "unseen", 3, (0.0, -1.0)),  # v1 1 > v0 0        hit
    ("u0b", "seen", 0, (0.2, 0.1)),    # s0 0.2 > s1 0.1    hit  (union: v0 0.4, miss)
]
# Seen: A2I 2/3; I2A s0's best caption u0 (1) beats u1 (0.9), s1's u1 (0.5) beats u0 (0) and u0b (0.1):
# 100; r1 (66.67 + 100) / 2. Unseen: A2I 100; I2A v0: w0 (2) > w1 (0), v1: w1 (1) > w0 (0): 100; r1 100.
SEEN_R1 = (200 / 3 + 100) / 2
HAND = {"seen_r1": SEEN_R1, "seen_r1_a2i": 200 / 3, "seen_r1_i2a": 100.0,
        "unseen_r1": 100.0, "unseen_r1_a2i": 100.0, "unseen_r1_i2a": 100.0,
        STAT: (SEEN_R1 + 100) / 2, "r1_a2i": (200 / 3 + 100) / 2, "r1_i2a": 100.0}


def hand_batches():
    """Two ESPnet items ``(utt_ids, batch)``, each mixing the subsets; image 0 comes in both."""
    out = []
    for idx in ([0, 2], [1, 3, 4]):
        sel = [CAPTIONS[i] for i in idx]
        out.append(([u for u, *_ in sel], {
            "speech": torch.tensor([v for *_, v in sel]),
            "speech_lengths": torch.full((len(sel),), 2),
            "roi_feats": torch.tensor([[IMAGES[i]] for _, _, i, _ in sel]),
            "roi_boxes": torch.zeros(len(sel), 1, 4),
            "image_id": torch.tensor([[i] for _, _, i, _ in sel]),
        }))
    return out, {u: s for u, s, *_ in CAPTIONS}


def test_hand_made_vectors_each_subset_with_its_own_gallery():
    batches, utt2subset = hand_batches()
    tap = RetrievalTap(Lookup(), utt2subset, source="dev/utt2subset")
    assert [u for u, _ in tap.tap(iter(batches))] == [b[0] for b in batches]  # ESPnet's items, unchanged
    stats = tap.stats()
    for key, value in HAND.items():
        assert stats[key] == pytest.approx(value), key
    for name in ("seen", "unseen"):  # 2 images per gallery: everything within 5 and 10
        for k in (5, 10):
            assert stats[f"{name}_r{k}_a2i"] == stats[f"{name}_r{k}_i2a"] == 100.0


def test_without_a_map_the_whole_split_is_one_gallery():
    batches, _ = hand_batches()
    tap = RetrievalTap(Lookup())
    for utt, batch in batches:
        tap.add(batch, utt)
    stats = tap.stats()
    # One gallery of 4: A2I u0, u1, u0b miss, w0, w1 hit = 40; I2A s0's best caption u0 (1) ties w0 (1),
    # miss; s1 hit; v0's w0 (2) ties u0 (2), miss; v1 hit = 50.
    assert stats[STAT] == pytest.approx((40 + 50) / 2)
    assert stats["r1_a2i"] == pytest.approx(40.0) and stats["r1_i2a"] == pytest.approx(50.0)
    assert not any(k.startswith(("seen", "unseen")) for k in stats)


def _tap_rank(rank: int) -> dict:
    """One DDP rank's tap: each rank sees one of the two ESPnet items (a shard of the split)."""
    batches, utt2subset = hand_batches()
    tap = RetrievalTap(Lookup(), utt2subset, source="utt2subset")
    list(tap.tap(iter(batches[rank:rank + 1])))
    return tap.stats()


def test_ddp_ranks_label_the_gathered_rows_alike(tmp_path):
    # Two gloo ranks, each with part of both subsets: every rank scores the whole split, by subset.
    for stats in run_ranks(_tap_rank, tmp_path):
        for key, value in HAND.items():
            assert stats[key] == pytest.approx(value), key


def counted_recall_at_1(scores: torch.Tensor, targets: list) -> tuple:
    """A2I and I2A R@1 (percent) by counting, ties against the query (as recall_at_k)."""
    a2i = sum(all(scores[a, t] > scores[a, j] for j in range(scores.size(1)) if j != t)
              for a, t in enumerate(targets))
    i2a = 0
    images = sorted(set(targets))
    for j in images:
        best = max(scores[a, j] for a, t in enumerate(targets) if t == j)
        i2a += all(best > scores[a, j] for a, t in enumerate(targets) if t != j)
    return 100.0 * a2i / len(targets), 100.0 * i2a / len(images)


def test_real_tiny_model_per_subset_recall_counted_by_hand():
    torch.manual_seed(0)
    model = s3prl_vgs.build_model("fast_vgs", "tiny").eval()
    spec = model.input_spec
    subsets = {"dev_seen": range(0, 3), "dev_unseen": range(3, 6)}  # 3 images each, 2 captions per image
    utts = [(f"{name}_{j}_{c}", name, j) for name, js in subsets.items() for j in js for c in range(2)]
    speech = torch.randn(len(utts), 8000) * 0.1
    feats = torch.randn(6, spec.max_rois, spec.roi_feat_dim)
    boxes = torch.rand(6, spec.max_rois, 4)
    tap = RetrievalTap(model, {u: s for u, s, _ in utts}, source="utt2subset")
    perm = torch.randperm(len(utts)).tolist()
    for start in range(0, len(perm), 5):  # batches that mix the subsets
        rows = perm[start:start + 5]
        ids = torch.tensor([[utts[r][2]] for r in rows])
        tap.add({"speech": speech[rows], "speech_lengths": torch.full((len(rows),), 8000),
                 "roi_feats": feats[ids.view(-1)], "roi_boxes": boxes[ids.view(-1)], "image_id": ids},
                [utts[r][0] for r in rows])
    stats = tap.stats()

    with torch.no_grad():
        audio = model.encode_audio(speech, torch.full((len(utts),), 8000)).coarse
        image = model.encode_image(feats, boxes).coarse
    means = []
    for name, js in subsets.items():
        rows = [i for i, (_, s, _) in enumerate(utts) if s == name]
        scores = model.coarse_scores(audio[rows], image[list(js)])  # the subset's own 3 images
        a2i, i2a = counted_recall_at_1(scores, [utts[i][2] - js[0] for i in rows])
        assert stats[f"{name}_r1_a2i"] == pytest.approx(a2i, abs=1e-6)
        assert stats[f"{name}_r1_i2a"] == pytest.approx(i2a, abs=1e-6)
        assert stats[f"{name}_r1"] == pytest.approx((a2i + i2a) / 2, abs=1e-6)
        means.append((a2i + i2a) / 2)
    assert stats[STAT] == pytest.approx(sum(means) / 2, abs=1e-6)


# ----------------------------------------------------------------------------- errors


def test_utterance_without_a_subset_is_one_line_naming_the_map():
    batches, utt2subset = hand_batches()
    del utt2subset["w1"]
    tap = RetrievalTap(Lookup(), utt2subset, source="dump/dev/utt2subset")
    with pytest.raises(FileProblem, match=r"^dump/dev/utt2subset: no subset for validation utterance 'w1'$"):
        list(tap.tap(iter(batches)))


def test_map_naming_an_utterance_validation_did_not_see(tmp_path):
    batches, utt2subset = hand_batches()
    tap = RetrievalTap(Lookup(), {**utt2subset, "ghost": "seen"}, source="utt2subset")
    list(tap.tap(iter(batches)))
    with pytest.raises(FileProblem, match=r"^utt2subset: names utterance 'ghost', which the validation split"):
        tap.stats()


def test_trainer_options_check_the_map_against_the_valid_split_before_training(tmp_path):
    shape = tmp_path / "speech_shape"
    shape.write_text("a 16000\nb 16000\nc 16000\n")
    utt2subset = tmp_path / "utt2subset"

    def options(text):
        utt2subset.write_text(text)
        args = VGSTask.get_parser().parse_args(["--output_dir", str(tmp_path / "exp"), "--valid_shape_file", str(shape),
                                                "--valid_utt2subset", str(utt2subset)])
        return VGSTrainer.build_options(args)

    good = options("a seen\nb seen\nc unseen\n")
    assert good.valid_subsets == {"a": "seen", "b": "seen", "c": "unseen"}
    assert good.valid_utt2subset == str(utt2subset)
    with pytest.raises(FileProblem, match=rf"^{utt2subset}: no subset for validation utterance 'c' \(1 of"):
        options("a seen\nb seen\n")
    with pytest.raises(FileProblem, match=rf"^{utt2subset}: names utterance 'd', which"):
        options("a seen\nb seen\nc unseen\nd unseen\n")
    with pytest.raises(FileProblem, match=rf"^{utt2subset}: utterance 'c': subset name 'un seen'"):
        options("a seen\nb seen\nc un seen\n")
    with pytest.raises(DataDirError, match=rf"^{utt2subset}:3: duplicate key 'a'"):
        options("a seen\nb seen\na unseen\nc x\n")
    plain = VGSTrainer.build_options(VGSTask.get_parser().parse_args(["--output_dir", str(tmp_path / "exp")]))
    assert plain.valid_subsets is None and plain.valid_utt2subset is None
    with pytest.raises(DataDirError, match=rf"^{tmp_path / 'none'}"):
        read_utt2subset(tmp_path / "none")


# ----------------------------------------------------------------------------- ESPnet run vs vgs-evaluate

N_IMAGES, N_CAPTIONS = 10, 2  # val: 20 utterances; each subset 5 images, 10 captions
SUBSETS = {"dev_seen": range(0, 5), "dev_unseen": range(5, 10)}
MODEL = "vg_mim"  # the per-subset logic is the model's; the MIM family has no fine scorer to wait for


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = make_dumped_corpus(tmp_path_factory.mktemp("subset_corpus"), seed=30, n_images=N_IMAGES,
                              captions=N_CAPTIONS)
    dev = DataDir.read(root / "data" / "val")
    labels = {}
    for name, js in SUBSETS.items():  # each subset's own data dir, as data/dev_seen and data/dev_unseen
        images = {f"val_img{j}" for j in js}
        utts = {u for u, img in dev.utt2img.items() if img in images}
        DataDir(wav={u: dev.wav[u] for u in utts}, utt2img={u: dev.utt2img[u] for u in utts},
                img={i: dev.img[i] for i in images}).write(root / "data" / name)
        labels.update({u: name for u in utts})
    write_scp(root / "data" / "val" / "utt2subset", labels)  # what places' local/data.sh writes
    return root


def test_subset_statistics_equal_vgs_evaluate_on_each_subset(corpus, tmp_path):
    config = yaml.safe_load((SYNTH_CONF / f"train_{MODEL}_debug.yaml").read_text())
    config.update(max_epoch=2, num_iters_per_epoch=2, best_model_criterion=[["valid", STAT, "max"]],
                  early_stopping_criterion=["valid", STAT, "max"])
    conf = tmp_path / "train.yaml"
    conf.write_text(yaml.safe_dump(config))
    out = tmp_path / "exp"
    log = run_main(["--config", str(conf), "--ngpu", "0", "--output_dir", str(out), *data_args(corpus, MODEL),
                    "--valid_utt2subset", str(corpus / "data" / "val" / "utt2subset")])

    per_epoch = {e: valid_stats(log, e) for e in (1, 2)}
    for stats in per_epoch.values():  # the selection statistic: the mean of the subsets' mean R@1
        assert stats[STAT] == pytest.approx((stats["dev_seen_r1"] + stats["dev_unseen_r1"]) / 2, abs=2e-3)
    best_epoch = max(per_epoch, key=lambda e: per_epoch[e][STAT])  # ties: the first, as ESPnet
    assert (out / f"valid.{STAT}.best.pth").resolve().name == f"{best_epoch}epoch.pth"

    assert vgs_export.main(["--exp", str(out), "--out", str(tmp_path / "upstream")]) == 0
    best = per_epoch[best_epoch]
    for name in SUBSETS:
        results = tmp_path / f"{name}.json"
        assert evaluate.main(["--model", str(tmp_path / "upstream"), "--data", str(corpus / "data" / name),
                              "--out", str(results), "--quiet"]) == 0
        coarse = json.loads(Path(results).read_text())["methods"]["coarse"]
        assert best[f"{name}_r1"] == pytest.approx(coarse["mean_R@1"], abs=1e-3)  # ESPnet logs 3 decimals
        for k in (1, 5, 10):
            assert best[f"{name}_r{k}_a2i"] == pytest.approx(coarse["A2I"][str(k)], abs=1e-3)
            assert best[f"{name}_r{k}_i2a"] == pytest.approx(coarse["I2A"][str(k)], abs=1e-3)
