"""Corpus readers and vgs-prepare on tiny corpora written in each corpus's real layout."""

import os
import shutil
from pathlib import Path

import pytest

from s3prl_vgs.data.corpora import CorpusError, read_flickr8k, read_places, read_spokencoco
from s3prl_vgs.data.datadir import DataDir
from s3prl_vgs.data.prepare import main as prepare_main
from tests.unit.data_fixtures import coco_caption, coco_image_entry, write_image, write_json, write_wav


def _coco_root(root: Path, variant: str = "karpathy") -> Path:
    """Two val2014 images with two captions each; ``variant`` picks the JSON file kind."""
    entries = [
        coco_image_entry(root, "val2014", 325114, [coco_caption("m071506418gb9vo0w5xq3", 325114, 0),
                                                   coco_caption("a2xyz", 325114, 1, text="A URINAL")]),
        coco_image_entry(root, "val2014", 42, [coco_caption("m071506418gb9vo0w5xq3", 42, 0, text="TWO DOGS"),
                                               coco_caption("b9", 42, 1, text="DOGS")]),
    ]
    js = root / "SpokenCOCO"
    if variant == "karpathy":
        write_json(js / "SpokenCOCO_test_karpathy.json", {"data": entries})
    elif variant == "unrolled":
        unrolled = [{"image": e["image"], "caption": c} for e in entries for c in e["captions"]]
        write_json(js / "SpokenCOCO_test_unrolled_karpathy.json", {"data": unrolled})
    elif variant == "original":
        write_json(js / "SpokenCOCO_val.json", {"data": entries})
    return root


def _expected_coco(root: Path) -> DataDir:
    def utt(spk, img, k):
        return f"{spk}-3LUY3GC63Z0R9PYEETJGN5HO4UEP7B_{img}_{k}"

    utts = [(utt("m071506418gb9vo0w5xq3", 325114, 0), 325114, "A CAT ON A MAT", "m071506418gb9vo0w5xq3"),
            (utt("a2xyz", 325114, 1), 325114, "A URINAL", "a2xyz"),
            (utt("m071506418gb9vo0w5xq3", 42, 0), 42, "TWO DOGS", "m071506418gb9vo0w5xq3"),
            (utt("b9", 42, 1), 42, "DOGS", "b9")]
    dd = DataDir()
    for u, img, text, spk in utts:
        dd.wav[u] = str(root / "SpokenCOCO" / "wavs" / "val" / "0" / f"{u}.wav")
        dd.utt2img[u] = f"COCO_val2014_{img:012d}"
        dd.img[f"COCO_val2014_{img:012d}"] = str(root / "val2014" / f"COCO_val2014_{img:012d}.jpg")
        dd.text[u] = text
        dd.utt2spk[u] = spk
    return dd


@pytest.mark.parametrize("variant", ["karpathy", "unrolled"])
def test_spokencoco_karpathy_variants(tmp_path, variant):
    root = _coco_root(tmp_path, variant)
    corpus = read_spokencoco(root)
    assert list(corpus.splits) == ["test"]
    assert corpus.splits["test"] == _expected_coco(root)


def test_spokencoco_original_json_with_root_at_the_spokencoco_dir(tmp_path):
    root = _coco_root(tmp_path, "original")
    corpus = read_spokencoco(root / "SpokenCOCO")  # image paths then resolve against its parent
    assert list(corpus.splits) == ["val"]
    assert corpus.splits["val"] == _expected_coco(root)


def test_spokencoco_prefers_unrolled_and_never_mixes_split_schemes(tmp_path):
    root = _coco_root(tmp_path, "unrolled")
    # A per-image Karpathy test file with other content, and an original val file: both must be ignored.
    write_json(root / "SpokenCOCO" / "SpokenCOCO_test_karpathy.json", {"data": []})
    write_json(root / "SpokenCOCO" / "SpokenCOCO_val.json", {"data": []})
    corpus = read_spokencoco(root)
    assert list(corpus.splits) == ["test"]
    assert corpus.sources["test"] == [root / "SpokenCOCO" / "SpokenCOCO_test_unrolled_karpathy.json"]
    assert len(corpus.splits["test"]) == 4


def test_spokencoco_nothing_found_lists_what_was_looked_for(tmp_path, capsys):
    with pytest.raises(CorpusError, match="SpokenCOCO_{train,val,test}_unrolled_karpathy.json") as e:
        read_spokencoco(tmp_path)
    assert str(tmp_path / "SpokenCOCO") in str(e.value)
    assert prepare_main(["--corpus", "spokencoco", "--root", str(tmp_path), "--out", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vgs-prepare: error: no SpokenCOCO JSON found") and err.count("\n") == 1


def test_spokencoco_bad_entries_are_all_named(tmp_path):
    js = tmp_path / "SpokenCOCO" / "SpokenCOCO_train_karpathy.json"
    cap = coco_caption("s1", 1, 0)
    write_json(js, {"data": [{"image": "train2014/COCO_train2014_000000000001.jpg", "captions": [cap, cap]},
                             {"image": "train2014/x y.jpg", "captions": [coco_caption("s1", 2, 0)]}]})
    with pytest.raises(CorpusError) as e:
        read_spokencoco(tmp_path)
    msg = str(e.value)
    assert "2 bad entries" in msg
    assert f"{js} data[0] caption 1: duplicate utterance id {cap['uttid']!r}" in msg
    assert f"{js} data[1] caption 0: image id 'x y' is empty or contains whitespace" in msg


def _places_root(root: Path, with_images_dir: bool = True) -> Path:
    image_base = root / "images" if with_images_dir else root / "elsewhere" / "imgs"
    entries = {
        "train": [("A2WQT33K6LD9Z5-GSUN_42132D45B3DF142544343E029936AC60", "A2WQT33K6LD9Z5",
                   "wavs/296/utterance_377328.wav", "r/runway/gsun_42132d45b3df142544343e029936ac60.jpg",
                   "photos of a white and red air plane")],
        "dev_seen": [("B1-GSUN_AAA", "B1", "wavs/1/utterance_1.wav", "k/kitchen/gsun_aaa.jpg", "a kitchen"),
                     ("B2-GSUN_BBB", "B2", "wavs/1/utterance_2.wav", "k/kitchen/gsun_aaa.jpg", "another kitchen")],
    }
    for split, rows in entries.items():
        data = []
        for uttid, spk, wav, image, text in rows:
            write_wav(root / wav)
            write_image(image_base / image)
            data.append({"uttid": uttid, "speaker": spk, "asr_text": text, "wav": wav, "image": image})
        write_json(root / "metadata" / f"{split}_2020.json",
                   {"image_base_path": str(image_base), "audio_base_path": "/home/harwath/nowhere", "data": data})
    return root


@pytest.mark.parametrize("with_images_dir", [True, False], ids=["root-images", "json-image-base-path"])
def test_places_reader(tmp_path, with_images_dir):
    root = _places_root(tmp_path, with_images_dir)
    image_base = root / "images" if with_images_dir else root / "elsewhere" / "imgs"
    corpus = read_places(root)
    assert sorted(corpus.splits) == ["dev_seen", "train"]
    dev = corpus.splits["dev_seen"]
    assert dev.utt2img == {"B1-GSUN_AAA": "k/kitchen/gsun_aaa.jpg", "B2-GSUN_BBB": "k/kitchen/gsun_aaa.jpg"}
    assert dev.img == {"k/kitchen/gsun_aaa.jpg": str(image_base / "k/kitchen/gsun_aaa.jpg")}
    assert dev.wav["B2-GSUN_BBB"] == str(root / "wavs/1/utterance_2.wav")
    assert dev.text == {"B1-GSUN_AAA": "a kitchen", "B2-GSUN_BBB": "another kitchen"}
    assert corpus.splits["train"].utt2spk == {"A2WQT33K6LD9Z5-GSUN_42132D45B3DF142544343E029936AC60": "A2WQT33K6LD9Z5"}


def test_places_without_images_says_where_it_looked(tmp_path):
    root = _places_root(tmp_path, with_images_dir=False)
    shutil.rmtree(root / "elsewhere")
    with pytest.raises(CorpusError, match="Places images not found .*images.*elsewhere/imgs; pass --image-root"):
        read_places(root)


def _flickr_root(root: Path) -> Path:
    audio = root / "flickr_audio"
    images = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg", "99999_nosplit.jpg"]
    capt, spk, tokens = [], [], []
    for img in images:
        write_image(root / "Flicker8k_Dataset" / img)
        stem = img[:-4]
        for k in range(2):
            write_wav(audio / "wavs" / f"{stem}_{k}.wav")
            capt.append(f"{stem}_{k}.wav {img} #{k}")
            spk.append(f"{stem}_{k}.wav {k + 40}")
            tokens.append(f"{img}#{k}\tCaption {k} of {stem} .")
    (audio / "wav2capt.txt").write_text("\n".join(capt) + "\n")
    (audio / "wav2spk.txt").write_text("\n".join(spk) + "\n")
    (root / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text(images[0] + "\n")
    (root / "Flickr_8k.testImages.txt").write_text(images[1] + "\n")
    return root


def test_flickr8k_reader(tmp_path):
    root = _flickr_root(tmp_path)
    corpus = read_flickr8k(root)
    assert sorted(corpus.splits) == ["test", "train"]
    train = corpus.splits["train"]
    assert train.wav == {f"1000268201_693b08cb0e_{k}": str(root / f"flickr_audio/wavs/1000268201_693b08cb0e_{k}.wav")
                         for k in range(2)}
    assert set(train.utt2img.values()) == {"1000268201_693b08cb0e.jpg"}
    assert train.img == {"1000268201_693b08cb0e.jpg": str(root / "Flicker8k_Dataset/1000268201_693b08cb0e.jpg")}
    assert train.text["1000268201_693b08cb0e_1"] == "Caption 1 of 1000268201_693b08cb0e ."
    assert train.utt2spk == {"1000268201_693b08cb0e_0": "40", "1000268201_693b08cb0e_1": "41"}
    assert any("2 captions" in n and "no split list" in n for n in corpus.notes)


def test_prepare_writes_valid_dirs_then_names_a_deleted_image(tmp_path, capsys):
    root = _flickr_root(tmp_path / "corpus")
    out = tmp_path / "data"
    args = ["--corpus", "flickr8k", "--root", str(root), "--out", str(out), "--quiet"]
    assert prepare_main(args) == 0
    assert DataDir.read(out / "test").utts == ["1001773457_577c3a7d70_0", "1001773457_577c3a7d70_1"]
    capsys.readouterr()
    os.remove(root / "Flicker8k_Dataset" / "1001773457_577c3a7d70.jpg")
    assert prepare_main(args) == 1
    captured = capsys.readouterr()
    assert f"{root / 'Flicker8k_Dataset' / '1001773457_577c3a7d70.jpg'}: missing image file" in captured.out
    assert f"{out / 'test'}: 1 problem(s)" in captured.err
