"""vgs-search with tiny models trained here for a few seconds on four very distinct items.

Four solid-colour images, each described by one spoken word ("red", "green",
"blue", "yellow", espeak-ng). A model that has fitted them ranks each word's
image first, so the search must return exactly that image (and each image's
word first in reverse). FaST-VGS reads RoI features that vgs-search extracts
itself with the project's extractor (seeded random ResNet-50 pooled at given
boxes, as the synthetic recipe does), and re-ranks coarse-to-fine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import s3prl_vgs
from s3prl_vgs.data.audio import load_audio
from s3prl_vgs.data.synthetic import speak
from s3prl_vgs.features.extract import extract_roi_features
from s3prl_vgs.search import RoIOptions, SearchError, main, read_items, search_captions, search_images

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (240, 230, 30)}
SIZE = 64


def _fit(model, step_loss, check, max_steps=400, lr=2e-3):
    """Train until ``check()`` holds (every item's own image ranked first); returns the steps taken."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    for step in range(1, max_steps + 1):
        model.train()
        loss = step_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 0:
            model.eval()
            with torch.no_grad():
                if check():
                    return step
    raise AssertionError(f"the tiny model did not fit 4 items in {max_steps} steps")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    (root / "images").mkdir()
    (root / "audio").mkdir()
    boxes = {}
    for name, rgb in COLOURS.items():
        Image.new("RGB", (SIZE, SIZE), rgb).save(root / "images" / f"{name}.png")
        sf.write(root / "audio" / f"{name}.wav", speak(name, "en-us", 150, 50), 16000, subtype="PCM_16")
        boxes[name] = [[8, 8, SIZE - 8, SIZE - 8], [0, 0, SIZE // 2, SIZE // 2]]
    (root / "boxes.json").write_text(json.dumps(boxes))
    names = list(COLOURS)
    wavs = [load_audio(root / "audio" / f"{n}.wav") for n in names]
    lens = torch.tensor([w.numel() for w in wavs])
    x = torch.zeros(len(wavs), int(lens.max()))
    for i, w in enumerate(wavs):
        x[i, :w.numel()] = w
    return {"root": root, "names": names, "wavs": x, "lens": lens, "boxes": root / "boxes.json",
            "roi_options": RoIOptions(weights="random", boxes=str(root / "boxes.json"), min_size=224, max_size=224)}


@pytest.fixture(scope="module")
def mim_model(items):
    torch.manual_seed(0)
    model = s3prl_vgs.build_model("vg_mim", preset="tiny", mim="none", loss="info_nce", temperature=0.1)
    transform = model.image_transform(train=False)
    images = torch.stack([transform(Image.open(items["root"] / "images" / f"{n}.png").convert("RGB"))
                          for n in items["names"]])
    target = torch.arange(len(items["names"]))

    def check():
        s = model.coarse_scores(model.encode_audio(items["wavs"], items["lens"]), model.encode_image(images=images))
        return bool((s.argmax(1) == target).all() and (s.argmax(0) == target).all())

    steps = _fit(model, lambda: model(items["wavs"], items["lens"], images, mim_weight=0.0).loss, check)
    path = model.eval().save(items["root"] / "vg_mim")
    return {"path": path, "steps": steps}


@pytest.fixture(scope="module")
def fast_model(items):
    """FaST-VGS fitted on RoI features that are random but very distinct per image, read from a store."""
    from s3prl_vgs.features.store import empty_record, write_records

    rng = np.random.default_rng(0)
    records = []
    for n in items["names"]:
        rec = empty_record(n, SIZE, SIZE, 36, 32)
        rec["features"][:] = rng.standard_normal((36, 32)).astype(np.float32)
        xy = rng.uniform(0.0, 0.5, (36, 2))
        rec["boxes"][:] = np.concatenate([xy, xy + 0.4], 1)
        rec["valid"][:] = True
        records.append(rec)
    store = write_records(items["root"] / "random_roi.h5", records, {"made_by": "test_search"})
    feats = torch.stack([torch.from_numpy(r["features"]) for r in records])
    boxes = torch.stack([torch.from_numpy(r["boxes"]) for r in records])
    torch.manual_seed(0)
    model = s3prl_vgs.build_model("fast_vgs", preset="tiny", coarse_matching_weight=1.0, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    target = torch.arange(len(items["names"]))

    def check():
        a, v = model.encode_audio(items["wavs"], items["lens"]), model.encode_image(feats=feats, boxes=boxes)
        c, f = model.coarse_scores(a, v), model.fine_scores(a, v)
        return all(bool((s.argmax(1) == target).all() and (s.argmax(0) == target).all()) for s in (c, f))

    steps = _fit(model, lambda: model(items["wavs"], items["lens"], feats=feats, boxes=boxes).loss, check)
    path = model.eval().save(items["root"] / "fast_vgs")
    return {"path": path, "steps": steps, "store": store, "feats": feats, "boxes": boxes}


def _queries(items):
    return [str(items["root"] / "audio" / f"{n}.wav") for n in items["names"]]


def test_mim_model_finds_the_image_of_each_word_and_the_word_of_each_image(items, mim_model):
    result = search_images(mim_model["path"], _queries(items), items["root"] / "images", k=3)
    assert result.method == "coarse" and result.gallery_size == 4
    assert result.top1() == {n: n for n in items["names"]}  # ids: file stems of the folder's images
    for q in result.queries:
        assert [h.rank for h in q.hits] == [1, 2, 3]
        assert q.hits[0].score > q.hits[1].score >= q.hits[2].score
    # The scores are the model's own coarse scores.
    model = s3prl_vgs.load_model(mim_model["path"]).eval()
    with torch.no_grad():
        a = model.encode_audio(items["wavs"], items["lens"])
        t = model.image_transform(train=False)
        v = model.encode_image(images=torch.stack([t(Image.open(items["root"] / "images" / f"{n}.png").convert("RGB"))
                                                  for n in items["names"]]))
        S = model.coarse_scores(a, v)
    for i, q in enumerate(result.queries):
        for h in q.hits:
            assert h.score == pytest.approx(float(S[i, items["names"].index(h.id)]), rel=1e-4, abs=1e-5)

    reverse = search_captions(mim_model["path"], items["root"] / "images", _queries(items), k=2)
    assert reverse.direction == "image_to_audio"
    assert reverse.top1() == {n: n for n in items["names"]}


def test_fast_vgs_reranks_the_coarse_candidates_by_fine_score(items, fast_model):
    images = items["root"] / "images"
    result = search_images(fast_model["path"], _queries(items), images, k=2, roi=fast_model["store"], k_coarse=2)
    assert result.method == "coarse_to_fine(k_coarse=2)"
    assert result.top1() == {n: n for n in items["names"]}

    # Re-ranking: the hits are the 2 best by coarse score, ordered and scored by the fine scorer.
    model = s3prl_vgs.load_model(fast_model["path"]).eval()
    with torch.no_grad():
        a = model.encode_audio(items["wavs"], items["lens"])
        v = model.encode_image(feats=fast_model["feats"], boxes=fast_model["boxes"])
        coarse, fine = model.coarse_scores(a, v), model.fine_scores(a, v)
    for i, q in enumerate(result.queries):
        got = [items["names"].index(h.id) for h in q.hits]
        assert set(got) == set(coarse[i].topk(2).indices.tolist())
        assert [h.score for h in q.hits] == pytest.approx([float(fine[i, j]) for j in got], rel=1e-4, abs=1e-4)
        assert q.hits[0].score >= q.hits[1].score

    reverse = search_captions(fast_model["path"], images, _queries(items), k=1, roi=fast_model["store"])
    assert reverse.top1() == {n: n for n in items["names"]}


def test_roi_features_extracted_on_the_fly_equal_the_recipe_store(items, tmp_path):
    """No store: vgs-search extracts features with the project's extractor, as stage 3 does."""
    torch.manual_seed(1)
    model = s3prl_vgs.build_model("fast_vgs", preset="tiny", visual_feat_dim=2048).eval()
    path = model.save(tmp_path / "fast_vgs_2048")
    images = {n: str(items["root"] / "images" / f"{n}.png") for n in items["names"]}
    o = items["roi_options"]
    store = extract_roi_features(images, tmp_path / "roi.h5", weights=o.weights, boxes=o.boxes, min_size=o.min_size,
                                 max_size=o.max_size, num_workers=1, progress=False, log=lambda *a, **k: None)
    queries = _queries(items)[:2]
    live = search_images(path, queries, images, k=4, roi_options=o, coarse_only=True)
    stored = search_images(path, queries, images, k=4, roi=store, coarse_only=True)
    assert [[h.id for h in q.hits] for q in live.queries] == [[h.id for h in q.hits] for q in stored.queries]
    assert [h.score for q in live.queries for h in q.hits] == pytest.approx(
        [h.score for q in stored.queries for h in q.hits], rel=1e-5, abs=1e-6)


def test_cli_prints_a_table_and_writes_json(items, mim_model, tmp_path):
    out = tmp_path / "hits.json"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["vgs-search", "--model", str(mim_model["path"]), "--images", str(items["root"] / "images"),
                           "--query", *_queries(items)[:2], "--k", "2", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("vg_mim (") and "top 2 of 4 images" in lines[0]
    i = lines.index(f"query red ({_queries(items)[0]})")
    assert lines[i + 2].split()[:1] == ["1"] and lines[i + 2].split()[2] == "red"
    data = json.loads(out.read_text())
    assert data["direction"] == "audio_to_image" and data["k"] == 2
    assert [q["hits"][0]["id"] for q in data["queries"]] == ["red", "green"]


# ----------------------------------------------------------------------------- bad input


def _run_main(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _bad(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("case", ["garbage_wav", "rate", "missing_wav", "empty_wav_list", "empty_images",
                                  "garbage_image", "missing_image_in_list", "roi_for_pixels", "both_directions"])
def test_bad_input_is_one_line_naming_the_file(case, items, mim_model, tmp_path, capsys):
    images = str(items["root"] / "images")
    query = _queries(items)[0]
    args = ["--model", str(mim_model["path"]), "--images", images, "--query", query, "--quiet"]
    if case == "garbage_wav":
        bad = _bad(tmp_path, "noise.wav", b"RIFF\x00\x00not really a wave file")
        args[args.index(query)] = str(bad)
        expect = [str(bad), "unreadable audio"]
    elif case == "rate":
        bad = tmp_path / "8k.wav"
        sf.write(bad, np.zeros(8000, np.int16), 8000, subtype="PCM_16")
        args[args.index(query)] = str(bad)
        expect = [str(bad), "sample rate 8000 Hz", "--resample"]
    elif case == "missing_wav":
        args[args.index(query)] = str(tmp_path / "nope.wav")
        expect = [str(tmp_path / "nope.wav"), "no such file"]
    elif case == "empty_wav_list":
        lst = _bad(tmp_path, "queries.txt", b"# nothing here\n\n")
        args[args.index(query)] = str(lst)
        expect = [str(lst), "empty list"]
    elif case == "empty_images":
        (tmp_path / "empty").mkdir()
        args[args.index(images)] = str(tmp_path / "empty")
        expect = [str(tmp_path / "empty"), "no image files"]
    elif case == "garbage_image":
        gal = tmp_path / "gallery"
        gal.mkdir()
        Image.new("RGB", (8, 8)).save(gal / "ok.png")
        bad = _bad(gal, "broken.png", b"\x89PNG\r\n\x1a\n truncated")
        args[args.index(images)] = str(gal)
        expect = [str(bad), "unreadable image"]
    elif case == "missing_image_in_list":
        lst = tmp_path / "img.list"
        lst.write_text(f"red {items['root'] / 'images' / 'red.png'}\ngone {tmp_path / 'gone.jpg'}\n")
        args[args.index(images)] = str(lst)
        expect = [str(tmp_path / "gone.jpg"), "missing image file"]
    elif case == "roi_for_pixels":
        args += ["--roi", str(tmp_path / "x.h5")]
        expect = ["--roi", "FaST-VGS"]
    else:
        args += ["--captions", str(items["root"] / "audio")]
        expect = ["either --images with --query"]
    code, err = _run_main(capsys, *args)
    assert code == 1
    assert len(err) == 1 and err[0].startswith("vgs-search: error: "), err
    for part in expect:
        assert part in err[0], err[0]


def test_a_store_without_a_gallery_image_is_named(items, fast_model, tmp_path):
    (tmp_path / "more").mkdir()
    for n in ("red", "green"):
        Image.open(items["root"] / "images" / f"{n}.png").save(tmp_path / "more" / f"{n}.png")
    Image.new("RGB", (SIZE, SIZE), (10, 10, 10)).save(tmp_path / "more" / "black.png")
    with pytest.raises(SearchError, match=r"roi\.h5: image id 'black' is not in this store"):
        search_images(fast_model["path"], _queries(items)[:1], tmp_path / "more", roi=fast_model["store"])


def test_item_lists(tmp_path):
    (tmp_path / "a").mkdir()
    for rel in ("x.png", "sub/y.JPG", "notes.txt"):
        (tmp_path / "a" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "a" / rel).write_bytes(b"")
    exts = (".png", ".jpg")
    assert read_items(tmp_path / "a", exts, "image", "img.scp") == {
        "sub/y": str(tmp_path / "a" / "sub" / "y.JPG"), "x": str(tmp_path / "a" / "x.png")}
    (tmp_path / "list").write_text("x.png\nk2 sub/y.JPG\n")  # relative to the list's folder
    (tmp_path / "list").rename(tmp_path / "a" / "list")
    assert read_items(tmp_path / "a" / "list", exts, "image", "img.scp") == {
        "x": str(tmp_path / "a" / "x.png"), "k2": str(tmp_path / "a" / "sub" / "y.JPG")}
    (tmp_path / "a" / "img.scp").write_text("only x.png\n")  # a data dir: its img.scp wins
    assert list(read_items(tmp_path / "a", exts, "image", "img.scp")) == ["only"]
    (tmp_path / "dup").write_text("k a/x.png\nk a/x.png\n")
    with pytest.raises(SearchError, match=r"dup:2: duplicate id 'k'"):
        read_items(tmp_path / "dup", exts, "image", "img.scp")
    with pytest.raises(SearchError, match="empty list"):
        read_items([], exts, "image", "img.scp")
