"""RoI feature standardisation (FaST-VGS ``visual_feat_mvn``): the statistics and what the model does with them."""

import numpy as np
import pytest
import torch

from s3prl_vgs.features.store import RoIFeatureStore, empty_record, write_records
from s3prl_vgs.models import build_model

K, D = 5, 12


def _store(tmp_path, n_images=6, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n_images):
        n_valid = 1 + i % K
        rec = empty_record(f"img{i}", 100, 120, K, D)
        rec["features"][:n_valid] = rng.normal(3.0, 1.0, (n_valid, D)) * np.arange(1, D + 1)
        rec["boxes"][:n_valid] = [0.1, 0.1, 0.5, 0.6]
        rec["valid"][:n_valid] = True
        recs.append(rec)
    return RoIFeatureStore(write_records(tmp_path / "s.h5", recs, {"mode": "test"})), recs


def test_feature_stats_are_those_of_the_valid_rows(tmp_path):
    store, recs = _store(tmp_path)
    rows = np.concatenate([r["features"][r["valid"]] for r in recs]).astype(np.float64)
    mean, std = store.feature_stats()
    np.testing.assert_allclose(mean, rows.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, rows.std(0), rtol=1e-8)
    # a subset, and the evenly spaced sample of at most max_images
    sub = np.concatenate([recs[i]["features"][recs[i]["valid"]] for i in (1, 4)]).astype(np.float64)
    np.testing.assert_allclose(store.feature_stats(["img4", "img1"])[0], sub.mean(0), rtol=1e-10)
    two = np.concatenate([recs[i]["features"][recs[i]["valid"]] for i in (0, 5)]).astype(np.float64)
    np.testing.assert_allclose(store.feature_stats(max_images=2)[0], two.mean(0), rtol=1e-10)


def test_mvn_model_equals_the_plain_model_on_standardised_features(tmp_path):
    store, _ = _store(tmp_path)
    mean, std = (torch.from_numpy(a).float() for a in store.feature_stats())
    torch.manual_seed(0)
    mvn = build_model("fast_vgs", "tiny", visual_feat_dim=D, visual_feat_mvn=True).eval()
    plain = build_model("fast_vgs", "tiny", visual_feat_dim=D).eval()
    plain.load_state_dict({k: v for k, v in mvn.state_dict().items() if not k.startswith("visual_feat_")})
    mvn.set_visual_feat_stats(mean, std)
    feats = torch.from_numpy(np.stack([store[i]["features"] for i in store])).float()
    boxes = torch.from_numpy(np.stack([store[i]["boxes"] for i in store])).float()
    empty = (feats == 0).all(-1, keepdim=True)
    standardised = ((feats - mean) / std).masked_fill(empty, 0.0)  # empty slots stay empty
    with torch.no_grad():
        a, b = mvn.encode_image(feats, boxes), plain.encode_image(standardised, boxes)
    torch.testing.assert_close(a.coarse, b.coarse, rtol=1e-5, atol=1e-6)
    # the statistics are part of the weights: a saved state dict carries them
    assert torch.equal(mvn.state_dict()["visual_feat_std"], std)


def test_bad_statistics_are_refused():
    model = build_model("fast_vgs", "tiny", visual_feat_dim=D, visual_feat_mvn=True)
    with pytest.raises(ValueError, match=r"must be \(12,\)"):
        model.set_visual_feat_stats(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="std > 0"):
        model.set_visual_feat_stats(torch.zeros(D), torch.zeros(D))
    with pytest.raises(ValueError, match="needs visual_feat_mvn"):
        build_model("fast_vgs", "tiny", visual_feat_dim=D).set_visual_feat_stats(torch.zeros(D), torch.ones(D))
