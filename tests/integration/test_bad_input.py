"""Bad input through the real console scripts: one error line naming the file, exit status 1,
no traceback, no code run from a pickle, nothing half-written.

Each case builds one bad input from a valid base (real wavs, images, an RoI
store and a tiny model saved with ``save_model``) and runs the console
script's ``main``, which is the function the installed script calls (the
``@console_script`` wrapper is part of it). A few cases run the installed
scripts as subprocesses, for what only a new process shows: the exit status,
the whole stderr, ``--debug`` and a SIGKILL.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.unit.data_fixtures import coco_caption, coco_image_entry, make_data_dir, write_json, write_wav

BIN = Path(sys.executable).parent
NL = b"\n"
MAINS = {
    "vgs-prepare": "s3prl_vgs.data.prepare",
    "vgs-validate": "s3prl_vgs.data.validate",
    "vgs-extract-roi": "s3prl_vgs.features.extract",
    "vgs-import-tsv": "s3prl_vgs.features.tsv",
    "vgs-convert": "s3prl_vgs.convert",
    "vgs-evaluate": "s3prl_vgs.evaluate",
    "vgs-export": "espnet_recipes.bin.vgs_export",
    "vgs_dump": "espnet_recipes.bin.vgs_dump",
    "vgs_train": "espnet_recipes.bin.vgs_train",
}


# ----------------------------------------------------------------------------- the valid base


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Dict[str, Path]:
    """A valid data dir, an RoI store of its images and a tiny MIM model dir."""
    import s3prl_vgs
    from s3prl_vgs.features.store import empty_record, write_records

    root = tmp_path_factory.mktemp("base")
    data, dd = make_data_dir(root, n_utts=3, n_images=2)
    records = []
    for i, img in enumerate(sorted(dd.img)):
        rec = empty_record(img, 16, 20, num_boxes=4, feat_dim=8)
        rec["features"][:2] = np.arange(16, dtype=np.float32).reshape(2, 8) + i
        rec["boxes"][:2] = [[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]]
        rec["valid"][:2] = True
        records.append(rec)
    store = write_records(root / "roi.h5", records, {"mode": "test"})
    torch.manual_seed(0)
    model = s3prl_vgs.build_model("vg_mim", preset="tiny").eval()
    model.save(root / "model")
    return {"root": root, "data": data, "store": store, "model": root / "model"}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return dst


def _edit_yaml(path: Path, edit: Callable[[dict], None]) -> None:
    meta = yaml.safe_load(path.read_text())
    edit(meta)
    path.write_text(yaml.safe_dump(meta))


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` (the pixels are never needed to refuse it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _tsv_line(img_id: str, features: np.ndarray) -> bytes:
    nb = features.shape[0]
    b64 = lambda a: base64.b64encode(np.ascontiguousarray(a).tobytes())  # noqa: E731
    boxes = np.tile(np.array([[1, 1, 10, 10]], np.float32), (nb, 1))
    fields = [img_id.encode(), b"20", b"20", b64(np.zeros(nb, np.int64)), b64(np.linspace(1, 0.5, nb).astype(np.float32)),
              b64(np.zeros(nb, np.int64)), b64(np.zeros(nb, np.float32)), str(nb).encode(), b64(boxes),
              b64(features.astype(np.float32))]
    return b"\t".join(fields) + b"\n"


def _coco_root(root: Path, second_text: str = "A DOG", image=None) -> Path:
    caps = [coco_caption("A", 1, 0), coco_caption("B", 1, 1, text=second_text)]
    entry = coco_image_entry(root, "val2014", 1, caps)
    if image is not None:
        entry["image"] = image
    write_json(root / "SpokenCOCO" / "SpokenCOCO_val_karpathy.json", {"data": [entry]})
    return root


class Evil:
    """Unpickling this runs code: it makes the directory ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _namespace_rebinding_pickle() -> bytes:
    """GLOBAL argparse.Namespace, then BUILD on the class itself with slot state {'h13_marker': 1}."""
    return (b"\x80\x02cargparse\nNamespace\nN}X\x0a\x00\x00\x00h13_markerK\x01s\x86b.")


def _bundle(path: Path) -> Path:
    torch.save({"dual_encoder": {"w": torch.zeros(2)}, "cross_encoder": {"w": torch.zeros(2)}}, path)
    return path


def _bad_store(base, t: Path, corrupt: Callable[[h5py.File], None]) -> List[str]:
    store = _copy(base["store"], t / "bad.h5")
    with h5py.File(store, "r+") as f:
        corrupt(f)
    return ["--data", str(base["data"]), "--roi", str(store), "--out", str(t / "dump")]


def _latin1_ids(f: h5py.File) -> None:
    del f["img_id"]
    f.create_dataset("img_id", data=np.array([b"img\xe90", b"img1"], dtype="S5"))


def _short_img_h(f: h5py.File) -> None:
    del f["img_h"]
    f.create_dataset("img_h", (1,), dtype=np.int64)


# ----------------------------------------------------------------------------- the cases


class Case(NamedTuple):
    tool: str
    build: Callable  # (base, tmp) -> (argv, the file the message must name, what it must say)
    listed: bool = False  # a validator problem listed on stdout, instead of one error line on stderr


def _data_with(base, t: Path, name: str, content: bytes) -> Path:
    d = _copy(base["data"], t / "data")
    (d / name).write_bytes(content)
    return d


def _stereo(base, t):
    d = _copy(base["data"], t / "data")
    lines = (d / "wav.scp").read_text().splitlines()
    utt = lines[0].split()[0]
    wav = write_wav(t / "stereo.wav", channels=2)
    (d / "wav.scp").write_text("\n".join([f"{utt} {wav}"] + lines[1:]) + "\n")
    return ["--model", str(base["model"]), "--data", str(d), "--out", str(t / "r.json"), "--quiet"], wav, "2 channels"


def _model_with(base, t, edit):
    m = _copy(base["model"], t / "model")
    _edit_yaml(m / "config.yaml", edit)
    return ["--model", str(m), "--data", str(base["data"]), "--out", str(t / "r.json"), "--quiet"], m / "config.yaml"


def _truncated_jpeg(base, t):
    d = _copy(base["data"], t / "data")
    img = t / "cut.jpg"
    Image.effect_noise((64, 64), 40).convert("RGB").save(img, quality=90)
    img.write_bytes(img.read_bytes()[:-300])
    first = (d / "img.scp").read_text().splitlines()[0].split()[0]
    (d / "img.scp").write_text("\n".join([f"{first} {img}"] + (d / "img.scp").read_text().splitlines()[1:]) + "\n")
    return [str(d), "--quiet"], img, "truncated JPEG"


def _bomb(base, t):
    d = _copy(base["data"], t / "data")
    img = _png_header_only(t / "bomb.png", 30000, 30000)
    first = (d / "img.scp").read_text().splitlines()[0].split()[0]
    (d / "img.scp").write_text("\n".join([f"{first} {img}"] + (d / "img.scp").read_text().splitlines()[1:]) + "\n")
    return [str(d), "--quiet"], img, "decompression bomb"


def _evil_hub_cache(base, t):
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    name = os.path.basename(FasterRCNN_ResNet50_FPN_Weights.DEFAULT.url)
    cached = t / "torch" / "hub" / "checkpoints" / name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(pickle.dumps(Evil(str(t / "PWNED"))))
    os.environ["TORCH_HOME"] = str(t / "torch")  # restored by the test
    return ["--data", str(base["data"]), "--out", str(t / "f.h5"), "--device", "cpu", "--no-progress"], cached, "sha256"


def _nan_tsv(base, t):
    tsv = t / "f.tsv"
    feats = np.ones((3, 8), np.float32)
    feats[1, 2] = np.nan
    tsv.write_bytes(_tsv_line("img0", np.ones((3, 8))) + _tsv_line("img1", feats))
    return ["--tsv", str(tsv), "--out", str(t / "f.h5"), "--no-progress"], f"{tsv}:2", "NaN"


def _convert_args(base, t, args: bytes, says: str):
    pkl = t / "args.pkl"
    pkl.write_bytes(args)
    return ["--kind", "fast_vgs", "--bundle", str(_bundle(t / "b.pth")), "--args", str(pkl), "--out", str(t / "m")], \
        pkl, says


def _export_exp(base, t):
    exp = t / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_bytes(b"model: vg_mim\n# caf\xe9\nmodel_conf: {preset: tiny}\n")
    return ["--exp", str(exp), "--out", str(t / "m")], f"{exp / 'config.yaml'}:2", "not UTF-8"


def _train_config(base, t, text: str, says: str):
    cfg = t / "train.yaml"
    cfg.write_text(text)
    return ["--config", str(cfg), "--print_config"], cfg, says


def _empty_transcript(base, t):
    root = _coco_root(t / "corpus", second_text="  ")
    json_file = root / "SpokenCOCO" / "SpokenCOCO_val_karpathy.json"
    return ["--corpus", "spokencoco", "--root", str(root), "--out", str(t / "out"), "--quiet"], \
        f"{json_file} data[0] caption 1", "empty or missing transcript"


def _prepare(base, t, content: bytes = None, image=None):
    root = _coco_root(t / "corpus", image=image)
    json_file = root / "SpokenCOCO" / "SpokenCOCO_val_karpathy.json"
    if content is not None:
        json_file.write_bytes(content)
    return ["--corpus", "spokencoco", "--root", str(root), "--out", str(t / "out"), "--quiet"], json_file


CASES = {
    # code runs from a pickle / the unpickler changes global state / its values are trusted
    "extract-roi-evil-hub-cache": Case("vgs-extract-roi", _evil_hub_cache),
    "convert-namespace-rebinding": Case("vgs-convert", lambda b, t: _convert_args(b, t, _namespace_rebinding_pickle(), "refusing to set attribute")),
    "convert-wrong-typed-arg": Case("vgs-convert", lambda b, t: _convert_args(b, t, pickle.dumps(argparse.Namespace(encoder_attention_heads="12")), "encoder_attention_heads")),
    "convert-huge-conv-layers": Case("vgs-convert", lambda b, t: _convert_args(b, t, pickle.dumps(argparse.Namespace(conv_feature_layers="x" * 5000)), "longer than")),
    # silently accepted
    "evaluate-stereo-wav": Case("vgs-evaluate", _stereo),
    "validate-truncated-jpeg": Case("vgs-validate", _truncated_jpeg, listed=True),
    "import-tsv-nan-features": Case("vgs-import-tsv", _nan_tsv),
    "dump-nan-features": Case("vgs_dump", lambda b, t: (_bad_store(b, t, lambda f: f["features"].__setitem__((1, 0, 3), np.inf)), t / "bad.h5", "NaN or infinite")),
    "dump-header-disagrees": Case("vgs_dump", lambda b, t: (_bad_store(b, t, lambda f: f.attrs.__setitem__("num_boxes", 7)), t / "bad.h5", "header")),
    "evaluate-unknown-top-level-key": Case("vgs-evaluate", lambda b, t: (*_model_with(b, t, lambda m: m.update(colour=1)), "unknown top-level key")),
    # tracebacks instead of a message
    "validate-decompression-bomb": Case("vgs-validate", _bomb, listed=True),
    "extract-roi-non-utf8-scp": Case("vgs-extract-roi", lambda b, t: (["--data", str(_data_with(b, t, "img.scp", b"img0 /x/caf\xe9.png\n")), "--out", str(t / "f.h5")], t / "data" / "img.scp:1", "not UTF-8")),
    "prepare-non-utf8-corpus-json": Case("vgs-prepare", lambda b, t: (*_prepare(b, t, content=b'{"data": []}\n\xff\n'), "not UTF-8")),
    "prepare-wrong-typed-json-value": Case("vgs-prepare", lambda b, t: (*_prepare(b, t, image=5), "'image' must be a non-empty path string")),
    "evaluate-non-utf8-config": Case("vgs-evaluate", lambda b, t: (*_model_with(b, t, lambda m: None), "not UTF-8")),
    "evaluate-wrong-typed-config": Case("vgs-evaluate", lambda b, t: (*_model_with(b, t, lambda m: m["config"].update(embed_dim="big")), "expected an integer")),
    "export-non-utf8-experiment-config": Case("vgs-export", _export_exp),
    "dump-non-utf8-image-id": Case("vgs_dump", lambda b, t: (_bad_store(b, t, _latin1_ids), t / "bad.h5", "not UTF-8")),
    "dump-short-dataset": Case("vgs_dump", lambda b, t: (_bad_store(b, t, _short_img_h), t / "bad.h5", "img_h has shape (1,)")),
    "train-unknown-model-conf-key": Case("vgs_train", lambda b, t: _train_config(b, t, "model: vg_mim\nmodel_conf: {preset: tiny, colour: 3}\n", "unknown key(s) ['colour']")),
    "train-non-mapping-model-conf": Case("vgs_train", lambda b, t: _train_config(b, t, "model: vg_mim\nmodel_conf: [1, 2]\n", "model_conf must be a mapping")),
    # half-written output
    "prepare-empty-transcript": Case("vgs-prepare", _empty_transcript),
}


def _run_main(tool: str, argv: List[str], capsys):
    main = importlib.import_module(MAINS[tool]).main
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_naming_the_file(name, base, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    monkeypatch.setenv("TORCH_HOME", os.environ.get("TORCH_HOME", str(tmp_path / "no-torch-home")))
    monkeypatch.delenv("S3PRL_VGS_DEBUG", raising=False)
    try:
        argv, named, says = case.build(base, tmp_path)
        if name == "evaluate-non-utf8-config":  # a comment line the YAML parser would skip, in Latin-1
            cfg = Path(named)
            cfg.write_bytes(cfg.read_bytes() + b"# \xe9t\xe9\n")
            named = f"{cfg}:{cfg.read_bytes().count(NL)}"
        rc, out, err = _run_main(case.tool, argv, capsys)
    finally:
        if hasattr(argparse.Namespace, "h13_marker"):  # the old unpickler let the pickle set it
            marker_was_set = True
            delattr(argparse.Namespace, "h13_marker")
        else:
            marker_was_set = False
    assert rc not in (0, None), (out, err)
    assert "Traceback" not in err + out
    if case.listed:
        assert any(line.startswith(f"{named}: ") and says in line for line in out.splitlines()), out
    else:
        lines = [ln for ln in err.splitlines() if ln.startswith(f"{case.tool}: error: ")]
        assert len(lines) == 1, err
        assert str(named) in lines[0] and says in lines[0], lines[0]
        assert lines[0].index(str(named)) < lines[0].index(says)
    assert not marker_was_set and not (tmp_path / "PWNED").exists()
    for leftover in ("out", "dump", "m", "f.h5", "r.json"):  # no output that looks complete
        assert not (tmp_path / leftover).exists(), leftover


# ----------------------------------------------------------------------------- the real processes


def _script(tool: str, *args: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "S3PRL_VGS_DEBUG"}
    full.update(env or {})
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, env=full, timeout=timeout)


def test_installed_script_one_line_and_debug_traceback(tmp_path):
    argv = _prepare(None, tmp_path, image=["not", "a", "path"])[0]
    plain = _script("vgs-prepare", *argv)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.strip().count("\n") == 0 and plain.stderr.startswith("vgs-prepare: error: ")
    assert "SpokenCOCO_val_karpathy.json data[0]: 'image' must be a non-empty path string" in plain.stderr
    debug = _script("vgs-prepare", *argv, "--debug")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "CorpusError" in debug.stderr
    assert not (tmp_path / "out").exists()


def test_debug_environment_variable_lets_the_error_through(tmp_path, monkeypatch):
    from s3prl_vgs.data.corpora import CorpusError
    from s3prl_vgs.data.prepare import main

    argv = _prepare(None, tmp_path, image=["not", "a", "path"])[0]
    monkeypatch.setenv("S3PRL_VGS_DEBUG", "1")
    with pytest.raises(CorpusError, match="'image' must be a non-empty path string"):
        main(argv)


def test_validate_rejects_what_evaluate_rejects(base, tmp_path, capsys):
    """One audio rule: the stereo wav that vgs-evaluate refuses (above) is a problem for vgs-validate too."""
    argv, wav, says = _stereo(base, tmp_path)
    rc, out, err = _run_main("vgs-validate", [str(tmp_path / "data"), "--quiet"], capsys)
    assert rc == 1 and "Traceback" not in err
    assert f"{wav}: 2 channels, expected mono" in out


def test_recipe_config_check_is_one_line(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("- model\n- vg_mim\n")
    r = subprocess.run([sys.executable, "-m", "espnet_recipes.bin.vgs_train", "--check_config", str(cfg)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == f"vgs_train: error: {cfg}: expected a mapping of ESPnet options, got list"


def test_killed_vgs_synth_can_be_rerun_into_the_same_dir(tmp_path):
    out = tmp_path / "synth"
    args = ["--out", str(out), "--n-train", "2", "--n-val", "1", "--n-test", "1", "--n-commands", "3",
            "--jobs", "1", "--quiet"]
    proc = subprocess.Popen([str(BIN / "vgs-synth"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("SpokenCOCO/wavs/*/*.wav")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert out.is_dir() and not (out / "synth_info.json").exists()  # killed: nothing says it is complete
    rerun = _script("vgs-synth", *args, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "synth_info.json").is_file() and not (out / ".vgs-synth-incomplete").exists()
    assert len(list(out.glob("SpokenCOCO/wavs/*/*.wav"))) == 4 * 5


# ----------------------------------------------------------------------------- the mechanisms, one by one


def test_conv_feature_layers_bounded():
    from s3prl_vgs.convert import ConversionError, parse_conv_feature_layers

    assert parse_conv_feature_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2")[-1] == (512, 2, 2)
    for spec, says in [("[(1,1,1)]*1000*1000", "more than 64 layers"),  # 20 characters, a million layers
                       ("+".join(["[(1,1,1)]"] * 100), "nested deeper"),
                       ("+".join(["[(1,1,1)]"] * 5000), "longer than"),
                       ("(" * 250 + "[(1,1,1)]" + ")" * 250, "not a valid expression"),
                       ("[(1,1,1)] * True", "only list literals"),
                       ("[(1,1,1)] * [(1,1,1)]", "non-negative integer"),
                       ("__import__('os').getcwd()", "only list literals")]:
        with pytest.raises(ConversionError, match=says):
            parse_conv_feature_layers(spec)


def test_args_unpickler_reads_a_real_namespace_as_plain_data(tmp_path):
    from s3prl_vgs.convert import load_official_args

    ns = argparse.Namespace(layer_use=7, conv_feature_layers="[(512, 10, 5)]", dropout=0.1, data_root=None)
    (tmp_path / "args.pkl").write_bytes(pickle.dumps(ns))
    args = load_official_args(tmp_path / "args.pkl")
    assert args == vars(ns) and type(args) is dict


@pytest.mark.parametrize("dies_at", ["write", "second move"])
def test_save_model_replaces_the_directory_as_a_whole(base, tmp_path, monkeypatch, dies_at):
    """A save killed while writing, or between moving files into place, leaves the old model dir as it was."""
    import safetensors.torch

    import s3prl_vgs
    from s3prl_vgs.checkpoint import load_model, save_model

    target = _copy(base["model"], tmp_path / "model")
    (target / "README.txt").write_text("mine")  # not ours: carried over
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    torch.manual_seed(1)
    new = s3prl_vgs.build_model("vg_mim", preset="tiny", embed_dim=32).eval()

    def killed(*a, **k):
        raise KeyboardInterrupt  # like a kill: none of our code runs after this point

    if dies_at == "write":
        monkeypatch.setattr(safetensors.torch, "save_file", killed)
    else:  # the second rename-into-place of this save (the weights, after the config, in a file-by-file save)
        moves = []
        for name in ("replace", "rename"):
            real = getattr(os, name)

            def move(src, dst, *a, _real=real, **k):
                moves.append(dst)
                if len(moves) == 2:
                    killed()
                return _real(src, dst, *a, **k)

            monkeypatch.setattr(os, name, move)
    try:
        save_model(new, target)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in target.iterdir()} if target.is_dir() else {}
    if after != before:  # only the complete new directory may stand in for the old one
        assert load_model(target).config.embed_dim == 32
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["model"]
    save_model(new, target)
    assert load_model(target).config.embed_dim == 32 and (target / "README.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary sibling left


def test_store_writer_and_reader_check_every_row(base, tmp_path):
    from s3prl_vgs.features.store import RoIFeatureStore, StoreError, empty_record, write_records

    rec = empty_record("x", 10, 10, num_boxes=4, feat_dim=8)
    rec["features"][0, 0] = np.nan
    with pytest.raises(StoreError, match=r"image 'x': features holds NaN"):
        write_records(tmp_path / "w.h5", [rec], {})
    assert not (tmp_path / "w.h5").exists()
    store = _copy(base["store"], tmp_path / "r.h5")
    with h5py.File(store, "r+") as f:
        f["boxes"][0, 0] = [0.5, 0.5, 0.2, np.nan]
    with pytest.raises(StoreError, match=r"r\.h5: image 'img0': boxes holds NaN"):
        RoIFeatureStore(store)["img0"]
    assert RoIFeatureStore(store)["img1"]["features"].shape == (4, 8)
