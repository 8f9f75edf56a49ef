"""Property-based fuzzing of the readers of user files: any bytes give a result or our error.

"Our error" is :class:`s3prl_vgs.errors.VGSError`, the base of every
bad-input error, which the console-script wrapper prints as one line. Any
other exception (UnicodeDecodeError, TypeError, RecursionError ...) fails the
test. The runs are derandomized, so CI sees the same examples every time;
together they take well under a minute.
"""

from __future__ import annotations

import json
import pickle
import string

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from s3prl_vgs.errors import VGSError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# JSON values of every type, a few levels deep: what a corpus file may hold where we expect a string.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Bytes that are often almost valid: mutations of real lines, mixed with noise.
scp_like = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"utt1 /a/b.wav", b"utt1", b" ", b"\t", b"\r", b"\xff\xfe", b"caf\xc3\xa9 x", b"\x00",
                              b"utt2 a b c", b"\xe9"]), max_size=12).map(b"\n".join),
)


def _outcome(fn, *args):
    """``fn(*args)``, or None when it raised one of our errors (any other exception propagates)."""
    try:
        return fn(*args)
    except VGSError:
        return None


@FUZZ
@given(data=scp_like)
@example(data=b"utt1 /a.wav\nutt1 /b.wav\n")
@example(data=b"utt1 caf\xe9.wav\n")
def test_scp_reader(tmp_path, data):
    from s3prl_vgs.data.datadir import read_scp

    f = tmp_path / "wav.scp"
    f.write_bytes(data)
    out = _outcome(read_scp, f)
    assert out is None or all(k and not any(c.isspace() for c in k) and v for k, v in out.items())


def _spokencoco(tmp_path, data: bytes):
    from s3prl_vgs.data.corpora import read_spokencoco

    d = tmp_path / "SpokenCOCO"
    d.mkdir(exist_ok=True)
    (d / "SpokenCOCO_val_karpathy.json").write_bytes(data)
    return _outcome(read_spokencoco, tmp_path)


@FUZZ
@given(data=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
@example(data=b'{"data": [{"image": "a.jpg", "captions": [{"uttid": "u", "wav": "u.wav"}]}]}\xff')
@example(data=b"[" * 100000)
def test_corpus_json_reader_bytes(tmp_path, data):
    _spokencoco(tmp_path, data)


@FUZZ
@given(image=json_values, captions=json_values, uttid=json_values, wav=json_values, text=json_values)
def test_corpus_json_reader_wrong_types(tmp_path, image, captions, uttid, wav, text):
    """Valid JSON, every field of any type: a data dir or a CorpusError, never a TypeError."""
    from s3prl_vgs.data.corpora import read_places

    entry = {"image": image, "captions": [{"uttid": uttid, "wav": wav, "text": text}] if captions is None else captions}
    corpus = _spokencoco(tmp_path, json.dumps({"data": [entry]}).encode())
    if corpus is not None:
        for dd in corpus.splits.values():
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in dd.wav.items())
    meta = tmp_path / "places" / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    (tmp_path / "places" / "images").mkdir(exist_ok=True)
    (meta / "train_2020.json").write_text(json.dumps({"data": [{"uttid": uttid, "wav": wav, "image": image,
                                                               "asr_text": text, "speaker": captions}]}))
    _outcome(read_places, tmp_path / "places")


yaml_texts = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(st.sampled_from(["format_version", "model", "config", "extra", "colour"]), json_values,
                    max_size=5).map(lambda d: yaml.safe_dump(d).encode()),
    st.text(alphabet=string.printable + "é\u2028", max_size=120).map(lambda t: t.encode("utf-8")),
)


@FUZZ
@given(data=yaml_texts)
@example(data=b"model: vg_mim\nconfig: {}\n# caf\xe9\n")
@example(data=b"&a [*a, *a]")
def test_model_config_yaml_reader(tmp_path, data):
    from s3prl_vgs.checkpoint import read_model_config

    (tmp_path / "config.yaml").write_bytes(data)
    meta = _outcome(read_model_config, tmp_path)
    assert meta is None or isinstance(meta["config"], dict)


_FIELDS = ["hidden_size", "layer_use", "margin", "speech", "resdavenet_widths", "keep_dead_params", "trm_layers"]


@FUZZ
@given(conf=st.dictionaries(st.sampled_from(_FIELDS + ["colour"]), json_values, max_size=4))
@example(conf={"speech": {"num_heads": 0}})
@example(conf={"hidden_size": True})
def test_model_config_values(conf):
    """Any mapping as a model config: a FaSTVGSConfig or a ConfigError (what load_model turns into one line)."""
    from s3prl_vgs.models import get_model_class

    cls = get_model_class("fast_vgs").config_class
    base = cls.preset("tiny").to_dict()
    _outcome(cls.from_dict, {**base, **conf})
    text = yaml.safe_dump(conf)
    _outcome(cls.from_yaml, text + "\n")


@FUZZ
@given(data=yaml_texts | st.dictionaries(st.sampled_from(["model", "model_conf", "optim"]), json_values, max_size=3)
       .map(lambda d: yaml.safe_dump(d).encode()))
@example(data=b"model: vg_mim\nmodel_conf: {preset: tiny, colour: 1}\n")
def test_training_config_check(tmp_path, data):
    from espnet_recipes.bin.vgs_train import check_train_config

    (tmp_path / "train.yaml").write_bytes(data)
    _outcome(check_train_config, tmp_path / "train.yaml")


@FUZZ
@given(data=st.binary(max_size=200) | json_values.map(lambda v: pickle.dumps(v, protocol=2)))
@example(data=b"\x80\x02cargparse\nNamespace\nN}X\x01\x00\x00\x00xK\x01s\x86b.")
@example(data=b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x85R.")
def test_official_args_reader(tmp_path, data):
    import argparse

    from s3prl_vgs.convert import load_official_args

    (tmp_path / "args.pkl").write_bytes(data)
    before = dict(vars(argparse.Namespace))
    out = _outcome(load_official_args, tmp_path / "args.pkl")
    assert out is None or type(out) is dict
    assert dict(vars(argparse.Namespace)) == before


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"a: [", b"- 1\n- 2\n"])
def test_text_file_errors_name_file_and_line(tmp_path, payload):
    from s3prl_vgs.io import TextFileError, load_yaml

    f = tmp_path / "c.yaml"
    f.write_bytes(b"ok: 1\n" + payload)
    try:
        load_yaml(f)
    except TextFileError as e:
        assert str(e).startswith(f"{f}:2: ") and e.line == 2
    else:
        pytest.fail("no error")
