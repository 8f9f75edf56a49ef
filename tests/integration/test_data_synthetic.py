"""The synthetic corpus: deterministic bytes, true boxes and captions, and a clean pass through the real reader."""

import csv
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from s3prl_vgs.data.datadir import DataDir
from s3prl_vgs.data.prepare import prepare
from s3prl_vgs.data.synthetic import (
    COLORS, IMAGE_SIZE, SHAPES, SIZES, SynthError, generate, main, make_captions, render_scene, sample_scene,
)

SMALL = dict(n_train=3, n_val=1, n_test=1, n_commands=6, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    generate(out, seed=7, jobs=2, **SMALL)
    return out


def _tree(root: Path):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_different(corpus, tmp_path):
    generate(tmp_path / "b", seed=7, jobs=1, **SMALL)  # one worker vs two: same bytes
    a, b = _tree(corpus), _tree(tmp_path / "b")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert sum(k.endswith(".wav") for k in a) == 5 * 5 + 6 and sum(k.endswith(".png") for k in a) == 5

    generate(tmp_path / "c", seed=8, **SMALL)
    c = _tree(tmp_path / "c")
    images = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in images)
    assert a["boxes.json"] != c["boxes.json"]


def test_rerun_into_its_own_output_replaces_it(corpus, tmp_path):
    out = tmp_path / "d"
    generate(out, seed=7, n_train=4, n_val=1, n_test=1, n_commands=6, progress=False)
    generate(out, seed=7, **SMALL)
    assert _tree(out) == _tree(corpus)


def test_refuses_a_foreign_nonempty_dir(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SynthError, match="not empty and not written by vgs-synth"):
        generate(tmp_path, seed=1, **SMALL)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_goes_through_prepare_and_validate_cleanly(corpus, tmp_path):
    problems = prepare("spokencoco", corpus, tmp_path / "data", progress=False)
    assert problems == {"train": [], "val": [], "test": []}
    boxes = json.loads((corpus / "boxes.json").read_text())
    train = DataDir.read(tmp_path / "data" / "train")
    assert len(train) == 15
    assert set(train.utt2img.values()) == {f"synth_train_{i:06d}" for i in range(3)}
    assert set(boxes) == {f"synth_{s}_{i:06d}" for s, n in (("train", 3), ("val", 1), ("test", 1)) for i in range(n)}
    entries = json.loads((corpus / "SpokenCOCO" / "SpokenCOCO_train_karpathy.json").read_text())["data"]
    cap = entries[0]["captions"][2]
    assert train.text[cap["uttid"]] == cap["text"] and train.utt2spk[cap["uttid"]] == cap["speaker"]
    assert {c["speaker"] for c in entries[0]["captions"]} == {f"en-us+{v}" for v in ("m1", "m2", "m3", "f1", "f2")}


def _check_image(img: np.ndarray, objects, gray: int):
    """Every object pixel is inside its box, and the drawn object touches all four sides of the box."""
    background = np.all(img == gray, axis=-1)
    inside_any = np.zeros(background.shape, bool)
    for o in objects:
        x1, y1, x2, y2 = o["box"]
        inside_any[y1:y2, x1:x2] = True
        mask = np.all(img[y1:y2, x1:x2] == COLORS[o["color"]], axis=-1)
        assert mask[(y2 - y1) // 2, (x2 - x1) // 2], o  # the center is painted
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any(), o  # tight box
        assert np.all(mask | np.all(img[y1:y2, x1:x2] == gray, axis=-1)), o  # only its color and background
        side = x2 - x1
        assert y2 - y1 == side and SIZES[o["size"]][0] <= side <= SIZES[o["size"]][1]
    assert np.all(background | inside_any)  # nothing drawn outside the boxes


def test_written_images_match_boxes_json(corpus):
    objects = json.loads((corpus / "objects.json").read_text())
    boxes = json.loads((corpus / "boxes.json").read_text())
    for image_id, objs in objects.items():
        split = image_id.split("_")[1]
        img = np.asarray(Image.open(corpus / "images" / split / f"{image_id}.png"))
        assert img.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert boxes[image_id] == [o["box"] for o in objs]
        _check_image(img, objs, int(img[0, 0, 0]))


def test_many_scenes_have_disjoint_tight_boxes():
    seen_shapes = set()
    for i in range(150):
        gray, objs = sample_scene(random.Random(f"scene/{i}"))
        assert 1 <= len(objs) <= 3
        img = np.asarray(render_scene(gray, objs))
        _check_image(img, [{"color": o.color, "size": o.size, "box": list(o.box)} for o in objs], gray)
        seen_shapes |= {o.shape for o in objs}
    assert seen_shapes == set(SHAPES)


PHRASE = re.compile(r"a (small|big) (\w+) (\w+)")
RELATION = re.compile(r"(a \w+ \w+ \w+) (to the left of|to the right of|above|below) (a \w+ \w+ \w+)")


def _check_captions(texts, objects):
    """5 distinct captions; every object they name is in the image; every spatial relation is true."""
    objs = {(o["size"], o["color"], o["shape"]): o for o in objects}
    assert len(texts) == 5 and len(set(texts)) == 5
    relations = 0
    for text in texts:
        found = PHRASE.findall(text)
        assert found and all(f in objs for f in found), text
        m = RELATION.fullmatch(text)
        if m:
            (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = (objs[tuple(m[i].split()[1:])]["box"] for i in (1, 3))
            left, up = (ax1 + ax2) < (bx1 + bx2), (ay1 + ay2) < (by1 + by2)
            truth = {"to the left of": left, "to the right of": not left, "above": up, "below": not up}
            assert truth[m[2]], text
            relations += 1
    return relations


def test_captions_describe_the_image(corpus):
    objects = json.loads((corpus / "objects.json").read_text())
    for split in ("train", "val", "test"):
        data = json.loads((corpus / "SpokenCOCO" / f"SpokenCOCO_{split}_karpathy.json").read_text())["data"]
        for entry in data:
            _check_captions([c["text"] for c in entry["captions"]], objects[Path(entry["image"]).stem])


def test_many_scenes_get_true_captions():
    relations = 0
    for i in range(150):
        rng = random.Random(f"captions/{i}")
        _, objs = sample_scene(rng)
        as_json = [{"size": o.size, "color": o.color, "shape": o.shape, "box": list(o.box)} for o in objs]
        relations += _check_captions(make_captions(objs, rng), as_json)
    assert relations > 20  # the spatial templates are exercised


def test_wavs_are_16k_mono_speech(corpus):
    wavs = sorted((corpus / "SpokenCOCO" / "wavs").rglob("*.wav"))
    assert len(wavs) == 25
    for w in wavs[:5]:
        info = sf.info(str(w))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        x, _ = sf.read(str(w))
        assert 0.5 < len(x) / 16000 < 8 and np.abs(x).max() > 0.05


def test_fluent_commands_in_s3prl_layout(corpus):
    base = corpus / "fluent_commands"
    # The file names s3prl's expert reads, taken from its installed source.
    spec = importlib.util.find_spec("s3prl.downstream.fluent_commands")
    source = (Path(spec.origin).parent / "expert.py").read_text()
    wanted = re.findall(r'os\.path\.join\(self\.base_path, "data", "(\w+\.csv)"\)', source)
    assert sorted(wanted) == ["test_data.csv", "train_data.csv", "valid_data.csv"]
    rows = {}
    for name in wanted:
        with open(base / "data" / name, newline="") as f:
            rows[name] = list(csv.DictReader(f))
        assert {"path", "action", "object", "location", "speakerId", "transcription"} <= set(rows[name][0])
        for r in rows[name]:
            info = sf.info(str(base / r["path"]))
            assert (info.samplerate, info.channels) == (16000, 1)
    assert [len(rows[n]) for n in ("train_data.csv", "valid_data.csv", "test_data.csv")] == [4, 1, 1]
    for slot in ("action", "object", "location"):  # s3prl's label maps come from train only
        train_values = {r[slot] for r in rows["train_data.csv"]}
        assert {r[slot] for n in ("valid_data.csv", "test_data.csv") for r in rows[n]} <= train_values


def test_fluent_commands_load_with_s3prl_expert(corpus, tmp_path):
    pytest.importorskip("pandas")  # s3prl's fluent_commands expert reads the CSVs with pandas
    from s3prl.downstream.fluent_commands.expert import DownstreamExpert

    config = {
        "datarc": {"file_path": str(corpus / "fluent_commands"), "train_batch_size": 2, "eval_batch_size": 2,
                   "num_workers": 0},
        "modelrc": {"select": "UtteranceLevel", "projector_dim": 8, "UtteranceLevel": {"pooling": "MeanPooling"}},
    }
    expert = DownstreamExpert(16, config, str(tmp_path))
    sizes = [len(d) for d in (expert.train_dataset, expert.dev_dataset, expert.test_dataset)]
    assert sizes == [4, 1, 1]
    for dataset in (expert.train_dataset, expert.dev_dataset, expert.test_dataset):
        for i in range(len(dataset)):
            wav, label, stem = dataset[i]
            assert wav.ndim == 1 and len(wav) > 8000 and label.shape == (3,)


def test_unknown_voice_and_missing_espeak_fail_with_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--voices", "en-us+m1", "xx-nonexistent", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "vgs-synth: error: espeak-ng cannot use voice 'xx-nonexistent' (`espeak-ng --voices` lists the voices)\n"
    )
    assert not (tmp_path / "x").exists()
    proc = subprocess.run([sys.executable, "-m", "s3prl_vgs.data.synthetic", "--out", str(tmp_path / "y")],
                          capture_output=True, text=True, env={**os.environ, "PATH": str(tmp_path)})
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(
        "espeak-ng not found on PATH; install it (Debian/Ubuntu: apt-get install espeak-ng)"
    )
    assert "Traceback" not in proc.stderr
