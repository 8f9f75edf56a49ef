"""vgs-validate: every kind of problem, triggered by a real bad file, is listed with its file; exit 1."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3prl_vgs.data.validate import main, validate_data_dir
from tests.unit.data_fixtures import make_data_dir, write_wav

UTT = "spk0-utt0"  # the first utterance of make_data_dir, using image img0


def _corrupt_wav(root, dd):
    Path(dd.wav[UTT]).write_bytes(b"RIFF\x00\x01junk that is not a wav file" * 3)
    return dd.wav[UTT], "unreadable audio"


def _zero_byte_wav(root, dd):
    Path(dd.wav[UTT]).write_bytes(b"")
    return dd.wav[UTT], "empty file (0 bytes)"


def _no_samples_wav(root, dd):
    write_wav(dd.wav[UTT], seconds=0)
    return dd.wav[UTT], "empty audio (0 samples)"


def _8khz_wav(root, dd):
    write_wav(dd.wav[UTT], sr=8000)
    return dd.wav[UTT], "sample rate 8000 Hz, expected 16000 Hz"


def _stereo_wav(root, dd):
    write_wav(dd.wav[UTT], channels=2)
    return dd.wav[UTT], "2 channels, expected mono"


def _missing_wav(root, dd):
    os.remove(dd.wav[UTT])
    return dd.wav[UTT], "missing audio file"


def _missing_image(root, dd):
    os.remove(dd.img["img0"])
    return dd.img["img0"], "missing image file"


def _corrupt_image(root, dd):
    Path(dd.img["img0"]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return dd.img["img0"], "unreadable image"


def _unknown_image_id(root, dd):
    lines = (root / "data" / "utt2img").read_text().replace(f"{UTT} img0", f"{UTT} COCO_val2014_000000999999")
    (root / "data" / "utt2img").write_text(lines)
    return str(root / "data" / "utt2img"), "image id 'COCO_val2014_000000999999' has no img.scp entry"


def _duplicate_id(root, dd):
    with open(root / "data" / "wav.scp", "a") as f:
        f.write(f"{UTT} {dd.wav['spk1-utt1']}\n")
    return str(root / "data" / "wav.scp") + ":4", f"duplicate id {UTT!r} (first at line 1)"


def _missing_img_scp(root, dd):
    os.remove(root / "data" / "img.scp")
    return str(root / "data" / "img.scp"), "missing (a data dir needs"


CASES = [_corrupt_wav, _zero_byte_wav, _no_samples_wav, _8khz_wav, _stereo_wav, _missing_wav, _missing_image,
         _corrupt_image, _unknown_image_id, _duplicate_id, _missing_img_scp]


def test_clean_dir_has_no_problems(tmp_path, capsys):
    d, _ = make_data_dir(tmp_path)
    assert validate_data_dir(d, progress=False) == []
    assert main([str(d), "--quiet"]) == 0
    assert "OK (3 utterances, 2 images)" in capsys.readouterr().err


@pytest.mark.parametrize("breaker", CASES, ids=[c.__name__.lstrip("_") for c in CASES])
def test_each_problem_is_reported_with_its_file(tmp_path, capsys, breaker):
    d, dd = make_data_dir(tmp_path)
    bad_file, reason = breaker(tmp_path, dd)
    problems = validate_data_dir(d, progress=False)
    assert [p.file for p in problems] == [bad_file], problems
    assert reason in problems[0].reason
    assert main([str(d), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{bad_file}: ") and reason in out


def test_every_problem_is_listed_not_only_the_first(tmp_path):
    d, dd = make_data_dir(tmp_path, n_utts=4)
    write_wav(dd.wav["spk0-utt0"], sr=8000)
    write_wav(dd.wav["spk1-utt1"], channels=2)
    os.remove(dd.wav["spk0-utt2"])
    os.remove(dd.img["img1"])
    problems = validate_data_dir(d, progress=False)
    assert sorted(p.file for p in problems) == sorted(
        [dd.wav["spk0-utt0"], dd.wav["spk1-utt1"], dd.wav["spk0-utt2"], dd.img["img1"]]
    )


def test_inconsistent_optional_files_are_reported(tmp_path):
    d, dd = make_data_dir(tmp_path)
    (d / "text").write_text("spk0-utt0 only one caption\nghost-utt a caption without audio\n")
    problems = {str(p) for p in validate_data_dir(d, progress=False)}
    assert problems == {
        f"{d / 'text'}: utterance 'ghost-utt' is not in wav.scp",
        f"{d / 'text'}: utterance 'spk1-utt1' of wav.scp is missing",
        f"{d / 'text'}: utterance 'spk0-utt2' of wav.scp is missing",
    }


def test_missing_dir_is_a_problem(tmp_path):
    problems = validate_data_dir(tmp_path / "nope", progress=False)
    assert [str(p) for p in problems] == [f"{tmp_path / 'nope'}: not a directory"]


def test_console_script_exit_status_and_no_traceback(tmp_path):
    d, dd = make_data_dir(tmp_path)
    Path(dd.wav[UTT]).write_bytes(b"garbage")
    exe = Path(sys.executable).with_name("vgs-validate")
    proc = subprocess.run([str(exe), str(d), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"{dd.wav[UTT]}: unreadable audio" in proc.stdout
    assert "Traceback" not in proc.stderr and "1 problem(s)" in proc.stderr
