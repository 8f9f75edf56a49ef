"""vgs-evaluate on a tiny synthetic corpus: recall equals brute force from the model's own score matrices."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import s3prl_vgs
from s3prl_vgs.data.audio import load_audio
from s3prl_vgs.data.datadir import DataDir
from s3prl_vgs.data.image import load_image
from s3prl_vgs.data.prepare import prepare
from s3prl_vgs.data.synthetic import generate
from s3prl_vgs.evaluate import EvaluateError, evaluate, main, markdown_path
from s3prl_vgs.features.store import RoIFeatureStore, empty_record, write_records
from s3prl_vgs.retrieval import recall_at_k, retrieval_ranks

N_IMAGES = 4
FEAT_DIM = 32  # the tiny FaST-VGS preset's visual_feat_dim


def write_roi_store(path, image_ids, feat_dim=FEAT_DIM, seed=0):
    """A store with random features and valid boxes for ``image_ids``."""
    rng = np.random.default_rng(seed)
    records = []
    for img in image_ids:
        rec = empty_record(img, 224, 224, 36, feat_dim)
        rec["features"][:] = rng.standard_normal((36, feat_dim)).astype(np.float32)
        xy = rng.uniform(0.0, 0.5, (36, 2))
        rec["boxes"][:] = np.concatenate([xy, xy + rng.uniform(0.1, 0.5, (36, 2))], 1)
        rec["valid"][:] = True
        records.append(rec)
    return write_records(path, records, {"made_by": "test_evaluate"})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    generate(root / "synth", n_train=0, n_val=0, n_test=N_IMAGES, n_commands=3, seed=11, progress=False)
    prepare("spokencoco", root / "synth", root / "data", progress=False)
    data = root / "data" / "test"
    dd = DataDir.read(data)
    images = sorted(set(dd.utt2img.values()))
    write_roi_store(root / "roi.h5", images)
    torch.manual_seed(0)
    fast_vgs = s3prl_vgs.build_model("fast_vgs", preset="tiny")
    # At its init (std 0.02) the random cross encoder ranks the images the same way for every caption,
    # which would make fine recall blind to which caption is which; larger weights make it caption dependent.
    for module in fast_vgs.cross_encoder.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, 0.0, 0.3)
    fast_vgs.save(root / "fast_vgs")
    s3prl_vgs.build_model("vg_mim", preset="tiny").save(root / "vg_mim")
    return {"root": root, "data": data, "dd": dd, "images": images, "roi": root / "roi.h5"}


def reference_ids(dd):
    """Captions in wav.scp's key order and their image indices, worked out here independently of the CLI."""
    utts = sorted(dd.wav)
    images = sorted({dd.utt2img[u] for u in utts})
    return utts, torch.tensor([images.index(dd.utt2img[u]) for u in utts]), images


@torch.inference_mode()
def brute_force_scores(model_dir, dd, roi=None, crop=None):
    """(coarse, fine or None, audio_to_image): every caption and image encoded alone, every pair scored alone."""
    model = s3prl_vgs.load_model(model_dir).eval()
    utts, a2i, images = reference_ids(dd)
    audio = []
    for u in utts:
        wav = load_audio(dd.wav[u])[:crop]
        audio.append(model.encode_audio(wav[None], torch.tensor([wav.numel()])))
    if roi is not None:
        store = RoIFeatureStore(roi)
        image = [model.encode_image(torch.from_numpy(store[i]["features"])[None], torch.from_numpy(store[i]["boxes"])[None])
                 for i in images]
    else:
        tf = model.image_transform(train=False)
        image = [model.encode_image(tf(load_image(dd.img[i]))[None]) for i in images]
    coarse = torch.tensor([[float(model.coarse_scores(a, v)) for v in image] for a in audio])
    fine = None
    if roi is not None:
        fine = torch.tensor([[float(model.fine_scores(a, v)) for v in image] for a in audio])
    return coarse, fine, a2i


@pytest.fixture(scope="module")
def fast_vgs_reference(env):
    return brute_force_scores(env["root"] / "fast_vgs", env["dd"], env["roi"])


@pytest.fixture(scope="module")
def mim_reference(env):
    return brute_force_scores(env["root"] / "vg_mim", env["dd"])


def as_json_recalls(recalls):
    return {d: {str(k): v for k, v in r.items()} for d, r in recalls.items()}


def assert_recalls(got, expected):
    expected = as_json_recalls(expected)
    for d in ("A2I", "I2A"):
        assert got[d].keys() == expected[d].keys()
        for k in expected[d]:
            assert got[d][k] == pytest.approx(expected[d][k], abs=1e-9), (d, k, got, expected)


def check_well_formed(method):
    for d in ("A2I", "I2A"):
        vals = [method[d][k] for k in ("1", "5", "10")]
        assert all(0.0 <= v <= 100.0 for v in vals)
        assert vals == sorted(vals), f"{d} recall not monotone in k: {vals}"
    assert method["mean_R@1"] == pytest.approx((method["A2I"]["1"] + method["I2A"]["1"]) / 2)
    assert method["ms_per_query"] >= 0


def assert_can_tell_a_mixup(S, a2i):
    """The comparison has power: a caption -> image bookkeeping slip would change the numbers."""
    shifted = a2i[torch.roll(torch.arange(len(a2i)), 1)]  # captions paired with their neighbour's image
    assert as_json_recalls(recall_at_k(S, shifted)) != as_json_recalls(recall_at_k(S, a2i))


def assert_ranks_by_id(got, S, dd):
    """Per-query ranks of the CLI, keyed by caption / image id, equal brute force over this file's own ordering."""
    utts, a2i, images = reference_ids(dd)
    a2i_rank, i2a_rank, _ = retrieval_ranks(S, a2i)
    assert got["A2I"] == dict(zip(utts, a2i_rank.tolist()))
    assert got["I2A"] == dict(zip(images, i2a_rank.tolist()))
    assert len(set(a2i_rank.tolist())) > 1, "every caption ranks alike: the check could not see a mix-up"


def run_cli(args, capsys):
    rc = main([*map(str, args), "--quiet"])
    err = capsys.readouterr().err
    return rc, err


# ----------------------------------------------------------------------------- results


def test_fast_vgs_cli_equals_brute_force(env, fast_vgs_reference, tmp_path, capsys):
    out = tmp_path / "res" / "RESULTS.json"
    rc, err = run_cli(["--model", env["root"] / "fast_vgs", "--data", env["data"], "--roi", env["roi"], "--out", out,
                       "--per-query"], capsys)
    assert rc == 0, err
    r = json.loads(out.read_text())
    assert (r["model_name"], r["protocol"], r["n_audio"], r["n_image"]) == ("fast_vgs", "one-to-many", 5 * N_IMAGES, N_IMAGES)
    assert set(r["methods"]) == {"coarse", "fine", "coarse_to_fine"} and r["skipped"] == {}
    for m in r["methods"].values():
        check_well_formed(m)
    coarse, fine, a2i = fast_vgs_reference
    assert_can_tell_a_mixup(coarse, a2i)
    assert_can_tell_a_mixup(fine, a2i)
    assert_recalls(r["methods"]["coarse"], recall_at_k(coarse, a2i))
    assert_recalls(r["methods"]["fine"], recall_at_k(fine, a2i))
    # k_coarse 100 >= every gallery size: coarse-to-fine re-ranks everything, so it is the fine ranking.
    assert_recalls(r["methods"]["coarse_to_fine"], recall_at_k(fine, a2i))
    assert_ranks_by_id(r["per_query"]["coarse"], coarse, env["dd"])
    assert_ranks_by_id(r["per_query"]["fine"], fine, env["dd"])
    assert r["methods"]["fine"]["n_pairs"] == 5 * N_IMAGES * N_IMAGES
    assert r["methods"]["coarse_to_fine"]["n_pairs"] == 5 * N_IMAGES * N_IMAGES  # both directions, deduplicated
    assert r["encode"]["total_seconds"] > 0

    md = markdown_path(out).read_text()
    assert md == (tmp_path / "res" / "RESULTS.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ") and "---" not in line}
    for name, title in (("coarse", "coarse"), ("fine", "fine (all pairs)"), ("coarse_to_fine", "coarse-to-fine (k=100)")):
        m = r["methods"][name]
        cells = [c.strip() for c in rows[title].split("|")[2:-1]]
        expected = [f"{m[d][k]:.2f}" for d in ("A2I", "I2A") for k in ("1", "5", "10")] + [f"{m['mean_R@1']:.2f}"]
        assert cells[:7] == expected
        assert float(cells[7]) == pytest.approx(m["ms_per_query"], abs=1e-3)
    assert sorted(p.name for p in out.parent.iterdir()) == ["RESULTS.json", "RESULTS.md"]  # no temp files left


def test_mim_cli_equals_brute_force(env, mim_reference, tmp_path, capsys):
    out = tmp_path / "mim.json"
    rc, err = run_cli(["--model", env["root"] / "vg_mim", "--data", env["data"], "--out", out, "--batch-size", 3,
                       "--per-query"], capsys)
    assert rc == 0, err
    r = json.loads(out.read_text())
    assert r["model_name"] == "vg_mim" and set(r["methods"]) == {"coarse"}
    check_well_formed(r["methods"]["coarse"])
    coarse, _, a2i = mim_reference
    assert_can_tell_a_mixup(coarse, a2i)
    assert_recalls(r["methods"]["coarse"], recall_at_k(coarse, a2i))
    assert_ranks_by_id(r["per_query"]["coarse"], coarse, env["dd"])
    assert "| coarse |" in (tmp_path / "mim.md").read_text()


def test_max_audio_sec_scores_the_first_seconds_of_each_caption(env, tmp_path, capsys):
    out = tmp_path / "crop.json"
    rc, err = run_cli(["--model", env["root"] / "vg_mim", "--data", env["data"], "--out", out, "--batch-size", 3,
                       "--max-audio-sec", "0.8", "--quiet"], capsys)
    assert rc == 0, err
    r = json.loads(out.read_text())
    assert r["settings"]["max_audio_sec"] == 0.8
    coarse, _, a2i = brute_force_scores(env["root"] / "vg_mim", env["dd"], crop=12800)
    whole, _, _ = brute_force_scores(env["root"] / "vg_mim", env["dd"])
    assert not torch.allclose(coarse, whole, atol=1e-3)  # the crop changes the scores (captions are > 0.8 s)
    assert_recalls(r["methods"]["coarse"], recall_at_k(coarse, a2i))


def test_one_to_one_protocol(env, mim_reference, tmp_path):
    dd = env["dd"]
    one = DataDir(img=dict(dd.img))
    for u in sorted(dd.wav):
        if u.endswith("_0"):  # the first caption of each image
            one.wav[u], one.utt2img[u] = dd.wav[u], dd.utt2img[u]
    one.write(tmp_path / "one")
    r = evaluate(env["root"] / "vg_mim", tmp_path / "one", progress=False)
    assert r["protocol"] == "one-to-one" and (r["n_audio"], r["n_image"]) == (N_IMAGES, N_IMAGES)
    coarse, _, _ = mim_reference
    utts, _, images = reference_ids(dd)
    rows = [utts.index(u) for u in sorted(one.wav)]
    cols = [images.index(one.utt2img[u]) for u in sorted(one.wav)]
    S = coarse[rows][:, cols]  # caption i <-> image i
    assert_recalls(r["methods"]["coarse"], recall_at_k(S, torch.arange(N_IMAGES)))

    with pytest.raises(EvaluateError, match=r"utt2img: protocol one-to-one needs one caption per image.*'synth_test_000000': 5"):
        evaluate(env["root"] / "vg_mim", env["data"], protocol="one-to-one", progress=False)


def test_faiss_index_small_k_coarse_and_skipped_fine(env, fast_vgs_reference):
    r = evaluate(env["root"] / "fast_vgs", env["data"], roi=env["roi"], k_coarse=1, index="faiss", max_fine_pairs=0,
                 progress=False)
    coarse, _, a2i = fast_vgs_reference
    assert set(r["methods"]) == {"coarse", "coarse_to_fine"} and "--fine-all" in r["skipped"]["fine"]
    assert r["methods"]["coarse"]["index"] == "flat"
    assert_recalls(r["methods"]["coarse"], recall_at_k(coarse, a2i))
    # One coarse candidate per query: re-ranking cannot move it, and nothing else is listed.
    ctf, c = r["methods"]["coarse_to_fine"], r["methods"]["coarse"]
    for d in ("A2I", "I2A"):
        assert [ctf[d][k] for k in ("1", "5", "10")] == [c[d]["1"]] * 3
    assert ctf["n_pairs"] <= 5 * N_IMAGES + N_IMAGES


# ----------------------------------------------------------------------------- errors


def one_line_error(rc, err):
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vgs-evaluate: error: "), err
    return lines[0]


def test_missing_roi_row_names_image_and_file(env, tmp_path, capsys):
    store = write_roi_store(tmp_path / "partial.h5", env["images"][:-1])
    rc, err = run_cli(["--model", env["root"] / "fast_vgs", "--data", env["data"], "--roi", store,
                       "--out", tmp_path / "r.json"], capsys)
    line = one_line_error(rc, err)
    assert str(store) in line and repr(env["images"][-1]) in line
    assert not (tmp_path / "r.json").exists()


def test_roi_feature_width_mismatch(env, tmp_path, capsys):
    store = write_roi_store(tmp_path / "wide.h5", env["images"], feat_dim=48)
    rc, err = run_cli(["--model", env["root"] / "fast_vgs", "--data", env["data"], "--roi", store,
                       "--out", tmp_path / "r.json"], capsys)
    line = one_line_error(rc, err)
    assert str(store) in line and "48-d" in line and "32-d" in line


def test_model_and_roi_mismatch(env, tmp_path, capsys):
    rc, err = run_cli(["--model", env["root"] / "fast_vgs", "--data", env["data"], "--out", tmp_path / "r.json"], capsys)
    assert "--roi" in one_line_error(rc, err)
    rc, err = run_cli(["--model", env["root"] / "vg_mim", "--data", env["data"], "--roi", env["roi"],
                       "--out", tmp_path / "r.json"], capsys)
    assert "FaST-VGS models only" in one_line_error(rc, err)


def _copy_with_bad_wav(env, tmp_path, write_bad):
    dd = env["dd"]
    bad = DataDir(wav=dict(dd.wav), utt2img=dict(dd.utt2img), img=dict(dd.img))
    utt = sorted(bad.wav)[3]
    path = tmp_path / "bad.wav"
    write_bad(path, Path(dd.wav[utt]))
    bad.wav[utt] = str(path)
    return bad.write(tmp_path / "bad"), path


def test_corrupt_wav_is_named(env, tmp_path, capsys):
    data, path = _copy_with_bad_wav(env, tmp_path, lambda p, src: p.write_bytes(b"RIFF\x00\x00garbage" * 10))
    rc, err = run_cli(["--model", env["root"] / "vg_mim", "--data", data, "--out", tmp_path / "r.json"], capsys)
    line = one_line_error(rc, err)
    assert str(path) in line and "unreadable audio" in line


def test_wrong_sample_rate_is_refused_unless_resampling(env, tmp_path, capsys):
    def write_8k(p, src):
        wav, sr = sf.read(str(src))
        sf.write(str(p), wav[::2], sr // 2)

    data, path = _copy_with_bad_wav(env, tmp_path, write_8k)
    rc, err = run_cli(["--model", env["root"] / "vg_mim", "--data", data, "--out", tmp_path / "r.json"], capsys)
    line = one_line_error(rc, err)
    assert str(path) in line and "8000 Hz, expected 16000 Hz" in line and "--resample" in line


def test_missing_image_file_and_bad_out_name(env, tmp_path, capsys):
    dd = env["dd"]
    bad = DataDir(wav=dict(dd.wav), utt2img=dict(dd.utt2img), img=dict(dd.img))
    gone = tmp_path / "gone.png"
    bad.img[env["images"][1]] = str(gone)
    bad.write(tmp_path / "bad")
    rc, err = run_cli(["--model", env["root"] / "vg_mim", "--data", tmp_path / "bad", "--out", tmp_path / "r.json"], capsys)
    assert str(gone) in one_line_error(rc, err)
    rc, err = run_cli(["--model", env["root"] / "vg_mim", "--data", env["data"], "--out", tmp_path / "r.md"], capsys)
    assert "r.md" in one_line_error(rc, err)


def test_split_recall_on_an_in_memory_model_in_training_mode(env, fast_vgs_reference, mim_reference):
    from s3prl_vgs.evaluate import EvalSettings, split_recall

    for name, ref, roi in (("vg_mim", mim_reference, None), ("fast_vgs", fast_vgs_reference, env["roi"])):
        model = s3prl_vgs.load_model(env["root"] / name).train()
        coarse, fine, a2i = ref
        r = split_recall(model, env["data"], roi=roi)
        assert model.training  # its mode is given back
        expected = recall_at_k(coarse, a2i)
        assert r == pytest.approx({**{f"{d}_R@{k}": expected[d][k] for d in ("A2I", "I2A") for k in (1, 5, 10)},
                                   "mean_R@1": (expected["A2I"][1] + expected["I2A"][1]) / 2}, abs=1e-9)
        if fine is not None:
            assert split_recall(model, env["data"], roi=roi, method="fine")["mean_R@1"] == pytest.approx(
                (recall_at_k(fine, a2i)["A2I"][1] + recall_at_k(fine, a2i)["I2A"][1]) / 2, abs=1e-9)
    with pytest.raises(EvaluateError, match="no fine scorer"):
        split_recall(s3prl_vgs.load_model(env["root"] / "vg_mim"), env["data"], method="coarse_to_fine")
    with pytest.raises(EvaluateError, match="batch_size"):
        EvalSettings(batch_size=0)


# ----------------------------------------------------------------------------- --nj / --job


def _comparable(r):
    """What one job and merged jobs must share: every number except timings, dates and the job count."""
    methods = {name: {k: v for k, v in m.items() if k not in ("ms_per_query", "seconds", "coarse_seconds", "fine_seconds")}
               for name, m in r["methods"].items()}
    return methods, r["per_query"], r["skipped"], r["n_audio"], r["n_image"], r["protocol"]


@pytest.mark.parametrize("family", ["fast_vgs", "vg_mim"])
def test_sharded_jobs_merge_to_the_single_job_results(env, family, tmp_path, capsys):
    from s3prl_vgs.evaluate import EvalSettings, _merge_side, encode_captions, encode_images, parts_dir
    from s3prl_vgs.models.base import AudioOutput, ImageOutput

    roi = ["--roi", env["roi"]] if family == "fast_vgs" else []
    # batch size 3: 7 caption batches (job 2 gets 2 of them) and 2 image batches over 3 jobs (job 3 gets none).
    common = ["--model", env["root"] / family, "--data", env["data"], *roi, "--batch-size", 3, "--per-query"]
    single = tmp_path / "single.json"
    rc, err = run_cli([*common, "--out", single], capsys)
    assert rc == 0, err
    out = tmp_path / "sharded" / "RESULTS.json"
    jobs = [*common, "--out", out, "--nj", 3]
    for job in (1, 3):
        rc, err = run_cli([*jobs, "--job", job], capsys)
        assert rc == 0, err
    assert not out.exists()
    rc, err = run_cli([*jobs, "--merge"], capsys)
    assert rc == 1 and "1 of 3 job(s) not finished (job 2)" in err
    rc, err = run_cli([*jobs, "--job", 2], capsys)
    assert rc == 0 and "encoded 6 of 20 captions and 1 of 4 images" in err, err
    rc, err = run_cli([*jobs, "--job", 2], capsys)
    assert rc == 0 and "already encoded, nothing to do" in err

    # The merged encoder outputs are bitwise one job's.
    from safetensors.torch import load_file

    shards = [load_file(parts_dir(out) / f"encoded.{j}.safetensors") for j in (1, 2, 3)]
    assert "image.rows" not in shards[2]
    model = s3prl_vgs.load_model(env["root"] / family).eval()
    evalset = __import__("s3prl_vgs.data.evalset", fromlist=["EvalSet"]).EvalSet(env["data"])
    settings = EvalSettings(roi=env["roi"] if roi else None, batch_size=3, progress=False)
    device = torch.device("cpu")
    one_audio, _ = encode_captions(model, evalset, settings, device)
    one_image, _ = encode_images(model, evalset, settings, device)
    merged_audio = _merge_side(shards, "audio", len(evalset.utts), AudioOutput, out, device)
    merged_image = _merge_side(shards, "image", len(evalset.images), ImageOutput, out, device)
    for one, merged in ((one_audio, merged_audio), (one_image, merged_image)):
        for field in ("coarse", "tokens", "tokens_padding_mask"):
            a, b = getattr(one, field), getattr(merged, field)
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), field

    rc, err = run_cli([*jobs, "--merge"], capsys)
    assert rc == 0, err
    one, merged = json.loads(single.read_text()), json.loads(out.read_text())
    assert merged["jobs"] == 3 and "jobs" not in one
    assert _comparable(merged) == _comparable(one)
    assert len(set(merged["per_query"]["coarse"]["A2I"].values())) > 1  # the ranks can tell captions apart
    assert not parts_dir(out).exists() and (tmp_path / "sharded" / "RESULTS.md").exists()


def test_merge_refuses_jobs_of_other_settings(env, tmp_path, capsys):
    common = ["--model", env["root"] / "vg_mim", "--data", env["data"], "--out", tmp_path / "r.json", "--nj", 2]
    assert run_cli([*common, "--job", 1, "--batch-size", 4], capsys)[0] == 0
    assert run_cli([*common, "--job", 2, "--batch-size", 5], capsys)[0] == 0
    rc, err = run_cli([*common, "--merge", "--batch-size", 4], capsys)
    assert rc == 1 and "encoded.2.safetensors: written for another batch_size than this merge" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r.json").exists()
    rc, err = run_cli([*common, "--job", 3], capsys)
    assert rc == 1 and "--job in 1..nj" in err
