"""Converter pieces that need no fixture: safe parsing of args, conv specs, padding."""

import argparse
import os
import pickle

import pytest
import torch

from s3prl_vgs.convert import (
    ConversionError,
    convert_official,
    load_official_args,
    load_official_bundle,
    pad_like_official,
    parse_conv_feature_layers,
)

OFFICIAL_CONV = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"


def test_parse_conv_feature_layers_official_string():
    layers = parse_conv_feature_layers(OFFICIAL_CONV)
    assert layers == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert parse_conv_feature_layers("4 * [(32, 3, 2)]") == [(32, 3, 2)] * 4


@pytest.mark.parametrize("spec", [
    "__import__('os').system('true')",
    "[(512, 10, 5)] + x",
    "[(512, 10, 5)] * 10**9",
    "[(512.0, 10, 5)]",
    "[(512, 10)]",
    "[]",
    "[(512, 10, 5)] - [(512, 10, 5)]",
    "[(512, 10, 5)",
])
def test_parse_conv_feature_layers_rejects_anything_but_literals(spec):
    with pytest.raises(ConversionError, match="conv_feature_layers"):
        parse_conv_feature_layers(spec)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_args_pkl_namespace_round_trip(tmp_path, protocol):
    ns = argparse.Namespace(layer_use=7, lr=1e-4, conv_feature_layers=OFFICIAL_CONV, caption_w2v2_weight=None,
                            normalize=False, img_ids=["a", "b"], sizes=(1, 2), nested={"k": [1.5]})
    path = tmp_path / "args.pkl"
    path.write_bytes(pickle.dumps(ns, protocol=protocol))
    assert load_official_args(path) == vars(ns)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_args_pkl_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "args.pkl"
    path.write_bytes(pickle.dumps(argparse.Namespace(lr=1.0, evil=_RunsCode(marker))))
    with pytest.raises(ConversionError, match=r"args\.pkl.*refusing to load global (posix|os|nt)\.system"):
        load_official_args(path)
    assert not marker.exists()


def test_args_pkl_other_globals_and_junk_are_refused(tmp_path):
    path = tmp_path / "args.pkl"
    path.write_bytes(pickle.dumps(torch.nn.Linear))  # any class other than Namespace
    with pytest.raises(ConversionError, match="torch.nn.modules.linear.Linear"):
        load_official_args(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ConversionError, match="expected an argparse.Namespace, got list"):
        load_official_args(path)
    path.write_bytes(pickle.dumps(argparse.Namespace(a=1))[:-5])
    with pytest.raises(ConversionError, match="args.pkl: unreadable pickle"):
        load_official_args(path)
    with pytest.raises(ConversionError, match="missing.pkl: cannot read"):
        load_official_args(tmp_path / "missing.pkl")


def test_bundle_errors_name_the_file(tmp_path):
    with pytest.raises(ConversionError, match="nothere.pth: no such file"):
        load_official_bundle(tmp_path / "nothere.pth", "fast_vgs")
    torch.save({"dual_encoder": {"a": torch.zeros(1)}, "optimizer": {}}, tmp_path / "b.pth")
    with pytest.raises(ConversionError, match=r"b\.pth: no cross_encoder state dict"):
        load_official_bundle(tmp_path / "b.pth", "fast_vgs")
    state = load_official_bundle(tmp_path / "b.pth", "vg_hubert")
    assert list(state) == ["dual_encoder.a"]
    torch.save({"dual_encoder": {"module.x": torch.ones(2)}, "optimizer": {}}, tmp_path / "c.pth")
    assert list(load_official_bundle(tmp_path / "c.pth", "vg_hubert")) == ["dual_encoder.x"]


def test_convert_official_rejects_bad_inputs():
    with pytest.raises(ConversionError, match="kind must be one of"):
        convert_official({"dual_encoder.x": torch.zeros(1)}, {}, "fastvgs")
    with pytest.raises(ConversionError, match="must start with dual_encoder."):
        convert_official({"trunk.x": torch.zeros(1)}, {}, "vg_hubert")
    with pytest.raises(ConversionError, match="not tensors"):
        convert_official({"dual_encoder.x": [1.0]}, {}, "vg_hubert")


def test_pad_like_official_crops_normalises_and_pads():
    g = torch.Generator().manual_seed(0)
    short, long = 3 * torch.randn(100, generator=g) + 1, torch.randn(400, generator=g)
    wavs, lengths = pad_like_official([short, long], 300, normalize=True)
    assert wavs.shape == (2, 300) and lengths.tolist() == [100, 300]
    assert torch.all(wavs[0, 100:] == 0)
    # normalised over the cropped, unpadded clip (population std), as the official loader does
    torch.testing.assert_close(wavs[0, :100], (short - short.mean()) / short.std(unbiased=False))
    cropped = long[:300]
    torch.testing.assert_close(wavs[1], (cropped - cropped.mean()) / cropped.std(unbiased=False))
    raw, _ = pad_like_official([short], 300)
    assert torch.equal(raw[0, :100], short)
