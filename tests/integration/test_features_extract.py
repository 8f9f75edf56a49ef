"""``vgs-extract-roi``: random-weight detector, given boxes, resume after a kill, bad input."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d, roi_align

from s3prl_vgs.data.datadir import write_scp
from s3prl_vgs.features.extract import KILL_ENV, RoIExtractor, build_detector, main, select_detections
from s3prl_vgs.features.store import RoIFeatureStore

SMALL = ["--min-size", "64", "--max-size", "96", "--no-progress"]
# (width, height): 64x64 and 96x64 keep scale 1 under SMALL; 128x128 is halved.
SIZES = {"img_a": (64, 64), "img_b": (96, 64), "img_c": (128, 128)}


def _data_dir(tmp_path, sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    (tmp_path / "img").mkdir(exist_ok=True)
    scp = {}
    for img_id, (w, h) in sizes.items():
        path = tmp_path / "img" / f"{img_id}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        scp[img_id] = str(path)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    write_scp(data / "img.scp", scp)
    return data


def _random_detector(path, seed=0, background_bias=None):
    """A torchvision Faster R-CNN with seeded random weights, saved as a checkpoint."""
    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=0)
    model = FasterRCNN(backbone, num_classes=91).eval()
    if background_bias is not None:  # every proposal is background: no confident detection
        cls = model.roi_heads.box_predictor.cls_score
        torch.nn.init.zeros_(cls.weight)
        with torch.no_grad():
            cls.bias.zero_()
            cls.bias[0] = background_bias
    torch.save(model.state_dict(), path)
    return model


def test_random_detector_end_to_end(tmp_path):
    data = _data_dir(tmp_path)
    out = tmp_path / "feats.h5"
    assert main(["--data", str(data), "--out", str(out), "--weights", "random", "--batch-size", "2", *SMALL]) == 0
    store = RoIFeatureStore(out)
    assert sorted(store.keys()) == sorted(SIZES)
    assert store.settings["mode"] == "detector" and store.settings["weights"] == "random(seed=0)"
    for img_id, (w, h) in SIZES.items():
        item = store[img_id]
        assert item["features"].shape == (36, 2048) and item["features"].dtype == np.float32
        assert item["boxes"].shape == (36, 4) and item["boxes"].dtype == np.float32
        assert item["objects_conf"].shape == (36,) and item["objects_conf"].dtype == np.float32
        assert (item["img_h"], item["img_w"]) == (h, w)
        b = item["boxes"]
        assert b.min() >= 0 and b.max() <= 1 and np.all(b[:, 2] >= b[:, 0]) and np.all(b[:, 3] >= b[:, 1])
        assert np.all(np.diff(item["objects_conf"]) <= 0)
        assert item["valid"].all() and np.isfinite(item["features"]).all() and np.abs(item["features"]).sum(1).min() > 0
        assert ((item["objects_id"] >= 1) & (item["objects_id"] <= 90)).all()
    assert not (tmp_path / "feats.h5.parts").exists()


def test_no_confident_detection_still_gives_36_proposals(tmp_path):
    data = _data_dir(tmp_path, {"img_a": (64, 64)})
    _random_detector(tmp_path / "bg.pth", background_bias=10.0)
    out = tmp_path / "feats.h5"
    assert main(["--data", str(data), "--out", str(out), "--weights", str(tmp_path / "bg.pth"), *SMALL]) == 0
    item = RoIFeatureStore(out)["img_a"]
    # Nothing reaches the 0.2 threshold: the rows are the best remaining proposals.
    assert item["valid"].all() and item["objects_conf"].max() < 0.2 and item["objects_conf"].min() > 0
    assert np.all(np.diff(item["objects_conf"]) <= 0)
    assert len(np.unique(item["boxes"], axis=0)) == 36


def test_few_proposals_are_filled_with_whole_image_then_padding():
    model, _ = build_detector("random", min_size=64, max_size=96)
    model.rpn._post_nms_top_n["testing"] = 10  # a detector that proposes only 10 regions
    rec = RoIExtractor(model)(["x"], [torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)])[0]
    assert rec["features"].shape == (36, 2048)
    assert rec["valid"][:11].all() and not rec["valid"][11:].any()
    np.testing.assert_array_equal(rec["boxes"][10], [0, 0, 1, 1])
    assert rec["objects_conf"][10] == 0 and rec["objects_id"][10] == -1
    assert not rec["features"][11:].any() and not rec["boxes"][11:].any()


def test_select_detections_follows_the_original_rule():
    # A and B overlap (IoU 0.6), C is apart. Class 1: A 0.9 suppresses B 0.8.
    # Class 2: B 0.5 suppresses A 0.05; C 0.3. So A=0.9, B=0.5, C=0.3.
    boxes = torch.tensor([[0, 0, 10, 10], [0, 2.5, 10, 12.5], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([[0.05, 0.9, 0.05], [0.1, 0.8, 0.5], [0.6, 0.1, 0.3]])
    index, conf, cls = select_detections(scores, boxes, conf_thresh=0.2, min_boxes=3, max_boxes=3)
    assert index.tolist() == [0, 1, 2] and cls.tolist() == [1, 1, 2]
    np.testing.assert_allclose(conf.numpy(), [0.9, 0.5, 0.3])
    index, _, _ = select_detections(scores, boxes, conf_thresh=0.4, min_boxes=1, max_boxes=3)
    assert index.tolist() == [0, 1]  # C falls under the threshold
    index, conf, _ = select_detections(scores, boxes, conf_thresh=0.95, min_boxes=2, max_boxes=3)
    assert index.tolist() == [0, 1]  # none survive: padded with the best remaining
    index, _, _ = select_detections(scores, boxes, conf_thresh=0.0, min_boxes=1, max_boxes=1)
    assert index.tolist() == [0]


def _pool_by_hand(model, path, boxes_px, min_size=64, max_size=96):
    """Normalize, resize like the detector, run ResNet C5, RoIAlign 7x7 and average."""
    x = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
    h, w = x.shape[1:]
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    scale = min(min_size / min(h, w), max_size / max(h, w))
    x = F.interpolate(x[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False)
    rh, rw = x.shape[2:]
    x = F.pad(x, (0, -rw % 32, 0, -rh % 32))
    with torch.no_grad():
        c5 = model.backbone.body(x)["3"]
    rois = torch.tensor(boxes_px, dtype=torch.float32) * torch.tensor([rw / w, rh / h, rw / w, rh / h])
    pooled = roi_align(c5, [rois], output_size=7, spatial_scale=1 / 32, sampling_ratio=2, aligned=True)
    return pooled.mean((2, 3)).numpy()


def test_given_boxes_equal_features_pooled_by_hand(tmp_path):
    data = _data_dir(tmp_path)
    boxes = {"img_a": [[2, 3, 30, 40], [10, 10, 64, 64]], "img_b": [], "img_c": [[0, 0, 50, 20], [60, 60, 127, 120],
                                                                               [5, 70, 40, 128]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    model = _random_detector(tmp_path / "rand.pth", seed=3)
    out = tmp_path / "feats.h5"
    assert main(["--data", str(data), "--out", str(out), "--weights", str(tmp_path / "rand.pth"),
                 "--boxes", str(tmp_path / "boxes.json"), *SMALL]) == 0
    store = RoIFeatureStore(out)
    assert store.settings["mode"] == "boxes"
    for img_id, given in boxes.items():
        w, h = SIZES[img_id]
        item = store[img_id]
        n = len(given)
        expected = _pool_by_hand(model, tmp_path / "img" / f"{img_id}.png", given + [[0, 0, w, h]])
        np.testing.assert_allclose(item["features"][: n + 1], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(item["boxes"][:n].reshape(-1, 4), np.reshape(given, (-1, 4)) / [w, h, w, h],
                                   rtol=1e-6)
        np.testing.assert_array_equal(item["boxes"][n], [0, 0, 1, 1])  # the whole-image row
        np.testing.assert_array_equal(item["objects_conf"][: n + 1], [1.0] * n + [0.0])
        assert item["valid"][: n + 1].all() and not item["valid"][n + 1 :].any()
        assert not item["features"][n + 1 :].any() and not item["boxes"][n + 1 :].any()


def _read_all(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, capsys):
    sizes = {f"im{i}": (64, 64) for i in range(5)}
    data = _data_dir(tmp_path, sizes, seed=5)
    (tmp_path / "boxes.json").write_text(json.dumps({i: [[4, 4, 40, 30]] for i in sizes}))
    args = ["--data", str(data), "--weights", "random", "--boxes", str(tmp_path / "boxes.json"),
            "--chunk-size", "2", "--batch-size", "1", *SMALL]
    out = tmp_path / "resumed.h5"
    # Killed for real (SIGKILL, no cleanup) after its 3rd image: chunk 0 is done, chunk 1 half done.
    # Same intra-op thread count as the in-process runs below: conv sums are reduced in another order with
    # another count (other tests, or a CLI's --threads, may have changed this process's count).
    env = {**os.environ, KILL_ENV: "3", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-m", "s3prl_vgs.features.extract", *args, "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    parts = tmp_path / "resumed.h5.parts"
    assert not out.exists() and sorted(p.name for p in parts.glob("chunk-*")) == ["chunk-000000.h5"]
    chunk0 = (parts / "chunk-000000.h5").stat()
    assert main([*args, "--out", str(out)]) == 0
    log = capsys.readouterr().err
    assert "3 of 5 images to extract (1 of 3 chunks already done)" in log
    assert main([*args, "--out", str(tmp_path / "straight.h5")]) == 0
    resumed, attrs_r = _read_all(out)
    straight, attrs_s = _read_all(tmp_path / "straight.h5")
    assert attrs_r == attrs_s and resumed.keys() == straight.keys()
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
    assert out.read_bytes() == (tmp_path / "straight.h5").read_bytes()
    assert chunk0.st_size > 0 and not parts.exists()
    # A finished store is not recomputed; other settings are refused.
    assert main([*args, "--out", str(out)]) == 0
    assert "already complete" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--num-boxes", "10"]) == 1
    assert "exists but holds other images or settings" in capsys.readouterr().err


def test_sharded_jobs_then_merge(tmp_path, capsys):
    sizes = {f"im{i}": (64, 64) for i in range(3)}
    data = _data_dir(tmp_path, sizes, seed=6)
    (tmp_path / "boxes.json").write_text(json.dumps({i: [[0, 0, 32, 32]] for i in sizes}))
    common = ["--data", str(data), "--weights", "random", "--boxes", str(tmp_path / "boxes.json"),
              "--chunk-size", "1", *SMALL]
    args = [*common, "--nj", "2"]
    out = tmp_path / "sharded.h5"
    assert main([*args, "--out", str(out), "--job", "1"]) == 0  # chunks 0 and 2
    assert main([*args, "--out", str(out), "--merge"]) == 1
    assert "1 of 3 chunk(s) not finished" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--job", "2"]) == 0
    assert not out.exists()
    assert main([*args, "--out", str(out), "--merge"]) == 0
    single = tmp_path / "single.h5"
    assert main([*common, "--out", str(single)]) == 0
    a, _ = _read_all(out)
    b, _ = _read_all(single)
    for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_missing_or_unreadable_images_are_named(tmp_path, capsys):
    data = _data_dir(tmp_path, {"img_a": (64, 64)})
    scp = {"img_a": str(tmp_path / "img" / "img_a.png"), "gone": str(tmp_path / "img" / "gone.jpg")}
    write_scp(data / "img.scp", scp)
    assert main(["--data", str(data), "--out", str(tmp_path / "f.h5"), "--weights", "random", *SMALL]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing image file" in err[0] and "gone.jpg" in err[0]
    (tmp_path / "img" / "gone.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert main(["--data", str(data), "--out", str(tmp_path / "f.h5"), "--weights", "random", *SMALL]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "gone.jpg: unreadable image" in err
    assert not (tmp_path / "f.h5").exists()


def test_bad_boxes_and_weights_are_reported(tmp_path, capsys):
    data = _data_dir(tmp_path, {"img_a": (64, 64), "img_b": (96, 64)})
    base = ["--data", str(data), "--out", str(tmp_path / "f.h5"), *SMALL]
    cases = [
        ({"img_a": [[0, 0, 10, 10]]}, "no boxes for 1 image(s), e.g. ['img_b']"),
        ({"img_a": [[0, 0, 10]], "img_b": []}, "image 'img_a': expected a list of [x1, y1, x2, y2]"),
        ({"img_a": [[10, 0, 5, 10]], "img_b": []}, "image 'img_a': box 0 [10.0, 0.0, 5.0, 10.0] is not x1 < x2"),
        ({"img_a": [], "img_b": [[0, 0, 200, 10]]}, "image 'img_b': box 0 [0.0, 0.0, 200.0, 10.0] lies outside the 96x64"),
    ]
    for boxes, message in cases:
        (tmp_path / "boxes.json").write_text(json.dumps(boxes))
        assert main([*base, "--weights", "random", "--boxes", str(tmp_path / "boxes.json")]) == 1
        err = capsys.readouterr().err
        assert "boxes.json" in err and message in err, err
    assert main([*base, "--weights", str(tmp_path / "absent.pth")]) == 1
    assert "absent.pth: no such weights file" in capsys.readouterr().err
    (tmp_path / "text.pth").write_text("not a checkpoint")
    assert main([*base, "--weights", str(tmp_path / "text.pth")]) == 1
    assert "text.pth: not a checkpoint that torch.load(weights_only=True) can read" in capsys.readouterr().err


def test_default_weights_unavailable_names_both_options(tmp_path):
    data = _data_dir(tmp_path, {"img_a": (64, 64)})
    # An empty hub cache and a proxy that refuses connections: the download fails for real.
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "hub"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "s3prl_vgs.features.extract", "--data", str(data),
                           "--out", str(tmp_path / "f.h5"), *SMALL], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "default Faster R-CNN weights" in last and "--weights PATH" in last and "--weights random" in last
    assert "Traceback" not in proc.stderr


def test_resnet50_classifier_checkpoint_serves_given_boxes_only(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(7)
    net = resnet50(weights=None)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "resnet50.pth")
    model, desc = build_detector(str(tmp_path / "resnet50.pth"), need_heads=False)
    assert desc.startswith("file:sha256=")
    torch.testing.assert_close(model.backbone.body.layer4[2].conv3.weight, net.layer4[2].conv3.weight)
    torch.testing.assert_close(model.backbone.body.bn1.running_var, net.bn1.running_var)
    with pytest.raises(ValueError, match="resnet50.pth: a ResNet-50 classifier checkpoint has no detector heads"):
        build_detector(str(tmp_path / "resnet50.pth"), need_heads=True)


def test_synthetic_backbone_pools_given_boxes_at_stride_16(tmp_path):
    """``--weights synth_roi128`` (the demo's detector stand-in): 128-d features pooled at the given
    boxes from the packaged vgs-pretrain-roi body exactly as by hand; no detection mode."""
    from s3prl_vgs.pretrain_roi import IMAGE_MEAN, IMAGE_STD, load_body, pool_boxes

    data = _data_dir(tmp_path, sizes={"img_a": (64, 64), "img_b": (96, 64)})
    boxes = {"img_a": [[2, 3, 30, 40]], "img_b": [[10, 5, 90, 60], [0, 0, 16, 16]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "synth.h5"
    assert main(["--data", str(data), "--out", str(out), "--weights", "synth_roi128",
                 "--boxes", str(tmp_path / "boxes.json"), *SMALL]) == 0
    store = RoIFeatureStore(out)
    assert store.settings["extractor"] == "vgs-pretrain-roi backbone"
    assert store.settings["weights"].startswith("vgs-pretrain-roi:synth_roi128:sha256=")
    assert "scale 1/16" in store.settings["features"]
    body, _ = load_body("synth_roi128")
    mean, std = torch.tensor(IMAGE_MEAN).view(3, 1, 1), torch.tensor(IMAGE_STD).view(3, 1, 1)
    for img_id, given in boxes.items():
        w, h = {"img_a": (64, 64), "img_b": (96, 64)}[img_id]
        pix = torch.from_numpy(np.asarray(Image.open(tmp_path / "img" / f"{img_id}.png"), np.float32) / 255)
        with torch.no_grad():
            fmap = body(((pix.permute(2, 0, 1) - mean) / std)[None])["3"]
            expected = pool_boxes(fmap, [torch.tensor(given + [[0, 0, w, h]], dtype=torch.float32)], 16)
        item = store[img_id]
        assert item["features"].shape == (36, 128)
        np.testing.assert_allclose(item["features"][: len(given) + 1], expected.numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="synth_roi128.safetensors: a vgs-pretrain-roi backbone has no detector heads"):
        build_detector("synth_roi128", need_heads=True)
