"""ZeroSpeech 2021 pieces on hand-made inputs: ABX through the real zerospeech-libriabx2
package, frame slicing per layer, sSIMI against scipy, the submission layout rules,
and the dataset checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.spatial.distance import cosine
from scipy.stats import spearmanr

from s3prl_vgs.zerospeech.abx import ABXError, frame_slice, score_abx
from s3prl_vgs.zerospeech.dataset import (GoldToken, WordPair, ZR2021DatasetError, read_dataset, read_item_file)
from s3prl_vgs.zerospeech.features import frames_to_text
from s3prl_vgs.zerospeech.layers import LayerError, LayerInventory, default_layers
from s3prl_vgs.zerospeech.ssimi import pair_distances, pool, ssimi
from s3prl_vgs.zerospeech.submission import (SubmissionError, build_meta, check_feature_file, check_meta,
                                             check_submission, meta_yaml)

SPEAKERS, PHONES, TOKENS = ("s1", "s2", "s3"), ("a", "b"), 3
ONSET, OFFSET = 0.20, 0.36  # seconds; the phone's frames are the ones libri-light slices for this span


def _item_file(path, contexts=(("x", "y"),)):
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    for spk in SPEAKERS:
        for prev, nxt in contexts:
            for ph in PHONES:
                for t in range(TOKENS):
                    lines.append(f"{spk}-{ph}{prev}{nxt}-{t} {ONSET} {OFFSET} {ph} {prev} {nxt} {spk}")
    path.write_text("\n".join(lines) + "\n")
    return read_item_file(path)


def _write_features(folder, items, frame_shift, kind, dim=16, seed=0):
    """One (T, D) text file per item file: 'separable' puts a phone prototype on the frames
    of the item's span (at this frame shift) and noise elsewhere; 'random' is noise only."""
    rng = np.random.default_rng(seed)
    proto = {ph: rng.normal(size=dim) * 3 for ph in PHONES}
    folder.mkdir(parents=True, exist_ok=True)
    n_frames = int(math.ceil(0.6 / frame_shift))
    for it in items:
        x = rng.normal(size=(n_frames, dim))
        if kind == "separable":
            start, end = frame_slice(it.onset, it.offset, n_frames, frame_shift)
            x[start:end] = proto[it.phone] + 0.1 * rng.normal(size=(end - start, dim))
        (folder / f"{it.file}.txt").write_text(frames_to_text(x))


def test_abx_separable_features_score_zero_and_random_features_chance(tmp_path):
    items = _item_file(tmp_path / "dev-clean.item")
    _write_features(tmp_path / "good", items, 0.02, "separable")
    _write_features(tmp_path / "random", items, 0.02, "random")
    good = score_abx(tmp_path / "good", tmp_path / "dev-clean.item", items, 0.02)
    rand = score_abx(tmp_path / "random", tmp_path / "dev-clean.item", items, 0.02)
    assert good["within"] == 0.0 and good["across"] == 0.0
    assert good["items"] == good["items_scored"] == len(SPEAKERS) * len(PHONES) * TOKENS
    for mode in ("within", "across"):
        assert 0.3 < rand[mode] < 0.7, rand


def test_frame_slicing_follows_the_layer_frame_shift(tmp_path):
    # libri-light's rule: start ceil(on/shift - .5), end floor(off/shift - .5) exclusive.
    assert frame_slice(0.1, 0.18, 100, 0.01) == (10, 17)
    assert frame_slice(0.20, 0.36, 100, 0.02) == (10, 17)
    assert frame_slice(0.20, 0.36, 100, 0.32) == (1, 0)  # empty: a 320 ms layer has no whole frame in a 160 ms item
    items = _item_file(tmp_path / "dev-clean.item")
    # Features laid out at 10 ms frames score 0 when scored at 10 ms, and not when read as 20 ms frames.
    _write_features(tmp_path / "f10", items, 0.01, "separable")
    assert score_abx(tmp_path / "f10", tmp_path / "dev-clean.item", items, 0.01)["within"] == 0.0
    wrong = score_abx(tmp_path / "f10", tmp_path / "dev-clean.item", items, 0.02)
    assert wrong["within"] + wrong["across"] > 0.2
    # Every slice empty (an item shorter than one frame): a one-line error naming the item file.
    _write_features(tmp_path / "f320", items, 0.32, "random")
    with pytest.raises(ABXError, match=r"dev-clean.item: no item spans a whole frame at frame shift 0.32"):
        score_abx(tmp_path / "f320", tmp_path / "dev-clean.item", items, 0.32)


@pytest.mark.parametrize("name,preset", [("fast_vgs", "tiny"), ("vg_mim", "tiny")])
def test_layer_frame_shifts_match_the_model_frames_and_the_s3prl_expert(tmp_path, name, preset):
    import s3prl_vgs
    from s3prl_vgs.upstream.expert import UpstreamExpert

    model = s3prl_vgs.build_model(name, preset=preset).eval()
    inv = LayerInventory.of(model)
    model.save(tmp_path / "m")
    expert = UpstreamExpert(str(tmp_path / "m"))
    n = 16000 * 3 + 123
    with torch.no_grad():
        sets = model.encode_audio(torch.randn(1, n), torch.tensor([n])).hidden_state_sets()
    assert set(sets) == set(inv.streams)
    for stream, (depth, rate) in inv.streams.items():
        assert len(sets[stream]) == depth
        assert rate == expert.get_downsample_rates(stream)
        layer = inv.layer(stream, depth - 1)
        assert layer.frame_shift == rate / 16000
        # The frames cover the audio at that shift (conv receptive field: one frame short at most).
        assert abs(sets[stream][-1].shape[1] - n / rate) <= 1.5
    ph, se = default_layers(model, inv)
    if name == "fast_vgs":
        assert (ph.name, ph.frame_shift, se.name, se.frame_shift) == ("hidden_states:2", 0.02, "trm2_hidden_states:1", 0.32)
        assert inv.parse("trm2:1") == se and inv.parse("2") == ph == inv.parse("trm1:2")
        assert (ph.short_name, se.short_name) == ("trm1:2", "trm2:1")
    else:
        assert (ph.name, se.name) == ("hidden_states:1", "hidden_states:2")
        assert (ph.short_name, inv.parse("layer:1")) == ("layer:1", ph)
    with pytest.raises(LayerError, match=r"--phonetic-layer '9': layer index out of range; this model has hidden_states:0..2"):
        inv.parse("9", "phonetic-layer")
    with pytest.raises(LayerError, match="no stream 'conv'"):
        inv.parse("conv:1")


def test_ssimi_is_100_times_scipy_spearman_with_same_voice_pairs_for_synthetic():
    rng = np.random.default_rng(3)
    words = ["cat", "dog", "car", "bus", "tree"]
    gold, vectors = [], {}
    for w in words:
        for k in range(2):
            gold.append(GoldToken("librispeech", f"l-{w}-{k}", "", w))
            vectors[("librispeech", f"l-{w}-{k}")] = rng.normal(size=8)
        for v in ("v0", "v1"):
            gold.append(GoldToken("synthetic", f"s-{w}-{v}", v, w))
            vectors[("synthetic", f"s-{w}-{v}")] = rng.normal(size=8)
    human = [("cat", "dog", 8.0), ("car", "bus", 7.5), ("cat", "car", 2.0), ("dog", "tree", 1.0),
             ("bus", "tree", 0.5), ("cat", "tree", 3.0)]
    pairs = [WordPair(t, "toy", a, b, s) for t in ("librispeech", "synthetic") for a, b, s in human]
    got = ssimi(gold, pairs, vectors)

    def expected(typ):
        dists = []
        for a, b, _ in human:
            ta = [g for g in gold if g.type == typ and g.word == a]
            tb = [g for g in gold if g.type == typ and g.word == b]
            d = [cosine(vectors[(typ, x.filename)], vectors[(typ, y.filename)]) for x in ta for y in tb
                 if typ == "librispeech" or x.voice == y.voice]
            dists.append(np.mean(d))
        return 100 * spearmanr([-s for _, _, s in human], dists).statistic

    for typ in ("librispeech", "synthetic"):
        assert got[typ]["datasets"]["toy"]["pairs"] == len(human)
        assert got[typ]["datasets"]["toy"]["score"] == pytest.approx(expected(typ), abs=1e-9)
        assert got[typ]["mean"] == got[typ]["weighted"] == got[typ]["datasets"]["toy"]["score"]
    # Synthetic: the distance of a pair averages over same-voice token pairs only.
    d = pair_distances(gold, pairs[6:7], vectors)[0]
    same = np.mean([cosine(vectors[("synthetic", f"s-cat-{v}")], vectors[("synthetic", f"s-dog-{v}")]) for v in ("v0", "v1")])
    assert d == pytest.approx(same, abs=1e-12)
    x = np.array([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]])
    assert pool(x, "max").tolist() == [3.0, 4.0] and pool(x, "mean").tolist() == pytest.approx([1.0, 2.5 / 3])
    assert pool(x, "lastlast").tolist() == [3.0, 0.5]


def test_feature_text_is_2d_even_for_one_frame(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text(frames_to_text(np.arange(5, dtype=np.float32)[None]))
    assert np.loadtxt(f).shape == (2, 5)  # the validator's np.loadtxt sees a 2-D array
    assert check_feature_file(f) == 5 and check_feature_file(f, full=False) == 5
    with pytest.raises(ValueError, match="D >= 2"):
        frames_to_text(np.zeros((4, 1)))
    (tmp_path / "flat.txt").write_text("1 2 3\n")
    with pytest.raises(SubmissionError, match="flat.txt: not a 2D array"):
        check_feature_file(tmp_path / "flat.txt", full=False)


def _tiny_dataset(root, rate=16000):
    """A minimal ZR2021 tree: two phonetic subsets with an item file, semantic dev with gold/pairs."""
    for subset in ("dev-clean", "dev-other"):
        d = root / "phonetic" / subset
        d.mkdir(parents=True)
        for u in ("u1", "u2"):
            sf.write(str(d / f"{u}.wav"), np.zeros(rate // 2), rate)
        (d / f"{subset}.item").write_text("#file onset offset #phone prev-phone next-phone speaker\n"
                                          "u1 0.1 0.3 a x y s1\nu2 0.1 0.3 b x y s1\n")
    base = root / "semantic" / "dev"
    for sub in ("librispeech", "synthetic"):
        (base / sub).mkdir(parents=True)
        for w in ("cat", "dog"):
            sf.write(str(base / sub / f"{sub[:3]}-{w}.wav"), np.zeros(rate // 4), rate)
    (base / "gold.csv").write_text("type,filename,voice,word\nlibrispeech,lib-cat,,cat\nlibrispeech,lib-dog,,dog\n"
                                   "synthetic,syn-cat,v0,cat\nsynthetic,syn-dog,v0,dog\n")
    (base / "pairs.csv").write_text("type,dataset,word_1,word_2,similarity,relatedness\n"
                                    "librispeech,toy,cat,dog,8.0,\nsynthetic,toy,cat,dog,8.0,\n")
    return root


def test_dataset_reader_names_the_missing_part_and_the_bad_wav(tmp_path):
    ds = read_dataset(_tiny_dataset(tmp_path / "ok"))
    assert sorted(ds.phonetic) == ["dev-clean", "dev-other"] and len(ds.wav_jobs()) == 8
    assert ds.semantic["dev"].pairs[0].score == 8.0
    import shutil

    bad = _tiny_dataset(tmp_path / "noother")
    shutil.rmtree(bad / "phonetic" / "dev-other")
    with pytest.raises(ZR2021DatasetError, match=r"phonetic/dev-other: missing folder"):
        read_dataset(bad)
    assert read_dataset(bad, tasks=["semantic"]).phonetic == {}  # a part the tasks do not need may be absent
    bad = _tiny_dataset(tmp_path / "nopairs")
    (bad / "semantic" / "dev" / "pairs.csv").unlink()
    with pytest.raises(ZR2021DatasetError, match=r"semantic/dev/pairs.csv: missing file"):
        read_dataset(bad)
    bad = _tiny_dataset(tmp_path / "rate")
    sf.write(str(bad / "phonetic" / "dev-other" / "u2.wav"), np.zeros(11025), 22050)
    with pytest.raises(ZR2021DatasetError, match=r"dev-other/u2.wav: sample rate 22050 Hz; ZeroSpeech 2021 audio is 16000 Hz"):
        read_dataset(bad)
    bad = _tiny_dataset(tmp_path / "item")
    (bad / "phonetic" / "dev-clean" / "dev-clean.item").write_text("#header\nu1 0.1 0.3 a x s1\n")
    with pytest.raises(ZR2021DatasetError, match=r"dev-clean.item:2: expected 7 fields"):
        read_dataset(bad)
    bad = _tiny_dataset(tmp_path / "gold")
    (bad / "semantic" / "dev" / "gold.csv").write_text("type,filename,voice,word\nsynthetic,syn-cow,v0,cow\n")
    with pytest.raises(ZR2021DatasetError, match=r"gold.csv:2: synthetic/syn-cow.wav does not exist"):
        read_dataset(bad)


def test_meta_and_submission_layout_rules(tmp_path):
    inv = LayerInventory({"hidden_states": (13, 320), "trm2_hidden_states": (2, 5120)})
    meta = build_meta(inv.layer("hidden_states", 6), inv.layer("trm2_hidden_states", 1), "max", "d", {"author": "me"})
    assert list(meta) == ["author", "affiliation", "description", "open_source", "train_set", "visually_grounded",
                          "gpu_budget", "parameters"]
    assert meta["visually_grounded"] is True and meta["author"] == "me"
    assert meta["parameters"] == {"phonetic": {"metric": "cosine", "frame_shift": 0.02},
                                  "semantic": {"metric": "cosine", "pooling": "max"}}
    check_meta(meta, "meta.yaml")
    with pytest.raises(SubmissionError, match="keys must be exactly"):
        check_meta({k: v for k, v in meta.items() if k != "gpu_budget"}, "meta.yaml")
    with pytest.raises(SubmissionError, match="not a settable"):
        build_meta(None, None, "max", "d", {"parameters": 1})

    ds = read_dataset(_tiny_dataset(tmp_path / "ds"))
    sub = tmp_path / "sub"
    for part, stem, _ in ds.wav_jobs():
        (sub / part).mkdir(parents=True, exist_ok=True)
        (sub / part / f"{stem}.txt").write_text(frames_to_text(np.ones((3, 4))))
    for name in ("lexical", "syntactic", "code"):
        (sub / name).mkdir()
    (sub / "code" / "README.md").write_text("x")
    (sub / "meta.yaml").write_text(meta_yaml(meta))
    assert check_submission(sub, ds) == {"phonetic": 4, "semantic": 4}
    (sub / "scores.json").write_text("{}")
    with pytest.raises(SubmissionError, match=r"root must hold exactly .*extra \['scores.json'\]"):
        check_submission(sub, ds)
    (sub / "scores.json").unlink()
    (sub / "semantic/dev/synthetic/syn-dog.txt").write_text(frames_to_text(np.ones((3, 5))))
    with pytest.raises(SubmissionError, match=r"syn-dog.txt: 5 columns; the other semantic files have 4"):
        check_submission(sub, ds)
    (sub / "semantic/dev/synthetic/syn-dog.txt").write_text(frames_to_text(np.ones((3, 4))))
    (sub / "phonetic/dev-clean/u1.npy").write_text("")
    with pytest.raises(SubmissionError, match=r"u1.npy: not a feature file of this dataset"):
        check_submission(sub, ds)
