"""Data-dir files: round trip, tab-separated input, whitespace-free keys, no stale files after a rewrite."""

import pytest

from s3prl_vgs.data.datadir import DataDir, DataDirError, read_scp, write_scp


def test_round_trip_with_slashes_in_image_ids_and_spaces_in_text(tmp_path):
    dd = DataDir(
        wav={"u2": "/a/u2.wav", "u1": "/a b/u1.wav"},
        utt2img={"u1": "r/runway/gsun_42.jpg", "u2": "k/kitchen/gsun_1.jpg"},
        img={"r/runway/gsun_42.jpg": "/img/r/runway/gsun_42.jpg", "k/kitchen/gsun_1.jpg": "/img/k/kitchen/gsun_1.jpg"},
        text={"u1": "A  PLANE\nON A RUNWAY", "u2": "a kitchen"},
    )
    d = dd.write(tmp_path / "d")
    back = DataDir.read(d)
    assert back.wav == dd.wav and back.img == dd.img and back.utt2img == dd.utt2img
    assert back.text == {"u1": "A  PLANE ON A RUNWAY", "u2": "a kitchen"}  # a newline would split the entry
    assert (d / "wav.scp").read_text() == "u1 /a b/u1.wav\nu2 /a/u2.wav\n"


def test_tab_separated_lines_are_read(tmp_path):
    (tmp_path / "wav.scp").write_text("u1\t/x/u1.wav\nu2 \t /x/u2.wav\n")
    assert read_scp(tmp_path / "wav.scp") == {"u1": "/x/u1.wav", "u2": "/x/u2.wav"}


@pytest.mark.parametrize("mapping, message", [({"bad key": "v"}, "contains whitespace"), ({"k": "  "}, "empty value")])
def test_bad_entries_are_rejected_without_touching_the_file(tmp_path, mapping, message):
    path = tmp_path / "utt2img"
    path.write_text("old entry\n")
    with pytest.raises(DataDirError, match=message):
        write_scp(path, {"ok": "1", **mapping})
    assert path.read_text() == "old entry\n"
    assert [p.name for p in tmp_path.iterdir()] == ["utt2img"]


def test_rewrite_removes_optional_files_the_new_data_lacks(tmp_path):
    full = DataDir(wav={"u": "/u.wav"}, utt2img={"u": "i"}, img={"i": "/i.png"}, text={"u": "hi"}, utt2spk={"u": "s"})
    d = full.write(tmp_path / "d")
    DataDir(wav={"u": "/u.wav"}, utt2img={"u": "i"}, img={"i": "/i.png"}).write(d)
    assert sorted(p.name for p in d.iterdir()) == ["img.scp", "utt2img", "wav.scp"]
