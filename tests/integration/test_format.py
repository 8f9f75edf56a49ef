"""Stage 2 (espnet_recipes.bin.vgs_format): an 8 kHz stereo copy of a synthetic corpus becomes 16 kHz mono."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torchaudio.functional as AF

from espnet_recipes.bin import vgs_format
from s3prl_vgs.data.audio import load_audio
from s3prl_vgs.data.datadir import DataDir, read_scp
from s3prl_vgs.data.prepare import main as prepare_main
from s3prl_vgs.data.synthetic import generate
from s3prl_vgs.data.validate import validate_data_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synthetic_train(tmp_path_factory) -> Path:
    """A 2-image synthetic corpus (10 spoken captions, 16 kHz mono) prepared into data/train."""
    root = tmp_path_factory.mktemp("synth")
    generate(root / "corpus", n_train=2, n_val=0, n_test=0, n_commands=3, jobs=2, progress=False)
    assert prepare_main(["--corpus", "spokencoco", "--root", str(root / "corpus"), "--out", str(root / "data"),
                         "--quiet"]) == 0
    return root / "data" / "train"


def make_8k_stereo(src: Path, dst: Path) -> dict:
    """``dst``: ``src`` at 8 kHz, two different channels; one entry a flac behind a shell pipe, one cut to 0.2 s."""
    dd = DataDir.read(src)
    new = {}
    utts = dd.utts
    for i, utt in enumerate(utts):
        wav = load_audio(dd.wav[utt])
        low = AF.resample(wav, 16000, 8000).numpy()
        stereo = np.stack([low, 0.5 * low], axis=1)  # mono mix = 0.75 x the original
        if i == 1:
            stereo = stereo[:1600]  # 0.2 s: below --min_wav_sec
        if i == 0:
            path = dst / "audio" / f"{utt}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, stereo, 8000, subtype="PCM_16")
            new[utt] = f"cat {path} |"
        else:
            path = dst / "audio" / f"{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, stereo, 8000, subtype="PCM_16")
            new[utt] = str(path)
    DataDir(wav=new, utt2img=dd.utt2img, img=dd.img, text=dd.text, utt2spk=dd.utt2spk).write(dst / "data")
    return {"short": utts[1], "pipe": utts[0]}


def test_8k_stereo_corpus_formats_to_valid_16k_mono(synthetic_train, tmp_path):
    special = make_8k_stereo(synthetic_train, tmp_path)
    data = tmp_path / "data"
    problems = validate_data_dir(data, progress=False)
    assert problems and all(("8000 Hz" in p.reason or "pipe" in p.reason) for p in problems)  # not usable as is

    out = tmp_path / "dump" / "formatted" / "train"
    proc = subprocess.run([sys.executable, "-m", "espnet_recipes.bin.vgs_format", "--data", str(data), "--out", str(out),
                           "--min_wav_sec", "0.5", "--nj", "2", "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    n = len(DataDir.read(synthetic_train))
    assert f"{n - 1} of {n} utterances kept ({n - 1} converted to 16000 Hz mono, 1 dropped" in proc.stderr

    assert validate_data_dir(out, progress=False) == []
    formatted = DataDir.read(out)
    assert special["short"] not in formatted.wav and set(formatted.wav) == set(DataDir.read(data).wav) - {special["short"]}
    assert read_scp(out / "dropped").keys() == {special["short"]} and "--min_wav_sec" in read_scp(out / "dropped")[special["short"]]
    assert set(formatted.utt2img) == set(formatted.wav) and set(formatted.text) == set(formatted.wav)
    num_samples = read_scp(out / "utt2num_samples")
    for utt, path in formatted.wav.items():
        assert Path(path).is_relative_to(out / "wav")
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, int(num_samples[utt]))
        # the mono mix of the two channels (0.75 x the original) back at 16 kHz, up to PCM rounding
        orig = load_audio(DataDir.read(synthetic_train).wav[utt])
        expected = 0.75 * AF.resample(AF.resample(orig, 16000, 8000), 8000, 16000)
        got = load_audio(path)
        assert got.numel() == expected.numel() and abs(got.numel() - orig.numel()) <= 1  # odd lengths gain one
        assert float((got - expected).abs().max()) < 3e-4, utt
        m = orig.numel() - 1
        assert float((got[:m] - 0.75 * orig[:m]).abs().max()) > 1e-3  # it was really resampled (band-limited)


def test_already_16k_mono_is_kept_and_errors_name_the_utterance(synthetic_train, tmp_path):
    out = tmp_path / "formatted"
    counts = vgs_format.format_data_dir(synthetic_train, out, progress=False)
    assert counts["converted"] == 0 and counts["kept"] == counts["utterances"]
    assert DataDir.read(out).wav == DataDir.read(synthetic_train).wav  # nothing copied
    assert validate_data_dir(out, progress=False) == []

    bad = DataDir.read(synthetic_train)
    utt = bad.utts[0]
    bad.wav[utt] = "false |"
    bad.write(tmp_path / "bad")
    target = tmp_path / "bad_out"
    rc = vgs_format.main(["--data", str(tmp_path / "bad"), "--out", str(target), "--quiet", "--copy_all"])
    assert rc == 1 and not target.exists()  # nothing half-written
    with pytest.raises(vgs_format.FormatError, match=f"utterance {utt}: pipe 'false' failed"):
        vgs_format.format_data_dir(tmp_path / "bad", target, progress=False)


@pytest.mark.slow
def test_recipe_stage2_formats_into_dump(synthetic_train, tmp_path):
    """vgs.sh stage 2 on the 8 kHz stereo copy: dump/formatted/<set> is valid; the short caption only leaves train."""
    special = make_8k_stereo(synthetic_train, tmp_path)
    datadir = tmp_path / "datadirs"
    datadir.mkdir()
    (datadir / "train").symlink_to(tmp_path / "data")
    (datadir / "test").symlink_to(tmp_path / "data")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["bash", str(ROOT / "espnet_recipes/TEMPLATE/vgs1/vgs.sh"), "--stage", "2", "--stop_stage", "2",
         "--datadir", str(datadir), "--dumpdir", str(tmp_path / "dump"), "--train_set", "train", "--valid_set", "train",
         "--test_sets", "test", "--min_wav_sec", "0.5", "--nj", "2", "--python", sys.executable],
        capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train, test = tmp_path / "dump/formatted/train", tmp_path / "dump/formatted/test"
    assert validate_data_dir(train, progress=False) == [] and validate_data_dir(test, progress=False) == []
    assert special["short"] not in DataDir.read(train).wav and special["short"] in DataDir.read(test).wav
    assert sf.info(DataDir.read(test).wav[special["pipe"]]).samplerate == 16000
