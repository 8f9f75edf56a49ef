"""The demo's RoI backbone (``vgs-pretrain-roi``): it learns the attributes, saves and loads exactly,
the packaged one decodes shape / colour / size, and bad files get one line naming them."""

import random

import pytest
import torch

from s3prl_vgs.errors import FileProblem
from s3prl_vgs.pretrain_roi import (RoIPretrainConfig, SynthRoIBody, _scenes, load_body, pool_boxes, pretrain,
                                    save)


def test_pretraining_learns_colour_and_size_quickly():
    body, curve = pretrain(RoIPretrainConfig(steps=20), log=lambda s: None)
    # chance: colour 1/8, size ~1/2; measured after these 20 steps: colour 1.00, size 0.95
    assert curve["start_color_acc"] < 0.4
    assert curve["color_acc"] > 0.8 and curve["size_acc"] > 0.8
    assert body.stride == 16 and body.out_channels == 128


def test_packaged_backbone_decodes_every_attribute():
    body, meta = load_body("synth_roi128")
    assert "shape" in meta["task"] and body.stride == 16 and body.out_channels == 128
    # a held-out draw from another seed than the training scenes
    x, boxes, labels = _scenes(random.Random("test-roi-probe"), 24)
    with torch.no_grad():
        feats = pool_boxes(body(x)["3"], boxes, body.stride)
    assert feats.shape == (len(labels), 128) and torch.isfinite(feats).all()
    # the heads were dropped; measured accuracies of the shipped file are in its metadata
    for name in ("shape_acc", "color_acc", "size_acc"):
        assert float(meta[name]) > 0.9, (name, meta[name])


def test_save_load_round_trip_and_bad_files(tmp_path):
    body = SynthRoIBody((4, 8), (4, 4)).eval()
    out = tmp_path / "b.safetensors"
    import json
    from dataclasses import asdict

    save(body, out, {"task": "t", "config": json.dumps(asdict(RoIPretrainConfig(widths=(4, 8), strides=(4, 4))))})
    loaded, _ = load_body(str(out))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["3"], body(x)["3"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(FileProblem, match=r"bad\.safetensors: not a vgs-pretrain-roi safetensors file"):
        load_body(str(bad))
    with pytest.raises(FileProblem, match=r"no packaged RoI backbone 'synth_roi7'.*synth_roi128"):
        load_body("synth_roi7")
