"""HDF5 RoI store, resumable chunk writer, and the LXMERT TSV importer."""

import base64
import multiprocessing as mp
import pickle

import h5py
import numpy as np
import pytest
import torch

from s3prl_vgs.features.store import (
    ChunkedStoreWriter,
    MissingImageError,
    RoIFeatureStore,
    StoreError,
    empty_record,
    write_records,
)
from s3prl_vgs.features.tsv import FIELDNAMES, TsvError, import_tsv
from s3prl_vgs.features.tsv import main as tsv_main

K, D = 36, 8


def _record(img_id, rng, n_valid=K, feat_dim=D):
    rec = empty_record(img_id, int(rng.integers(10, 500)), int(rng.integers(10, 500)), K, feat_dim)
    rec["features"][:n_valid] = rng.standard_normal((n_valid, feat_dim))
    lo = rng.uniform(0, 0.5, (n_valid, 2))
    rec["boxes"][:n_valid] = np.concatenate([lo, lo + rng.uniform(0.1, 0.5, (n_valid, 2))], 1)
    rec["objects_conf"][:n_valid] = np.sort(rng.uniform(0, 1, n_valid))[::-1]
    rec["objects_id"][:n_valid] = rng.integers(1, 91, n_valid)
    rec["valid"][:n_valid] = True
    return rec


def _assert_same(item, rec):
    for key in ("features", "boxes", "objects_conf", "objects_id", "valid"):
        np.testing.assert_array_equal(item[key], rec[key])
        assert item[key].dtype == np.asarray(rec[key]).dtype
    assert (item["img_h"], item["img_w"]) == (rec["img_h"], rec["img_w"])


def test_store_round_trip_and_missing_id(tmp_path):
    rng = np.random.default_rng(0)
    recs = [_record("COCO_val2014_000000325114", rng), _record("r/runway/gsun_0a.jpg", rng, n_valid=3),
            _record("b", rng)]
    path = write_records(tmp_path / "s.h5", recs, {"mode": "test"})
    store = RoIFeatureStore(path)
    assert len(store) == 3 and store.keys() == [r["img_id"] for r in recs]
    assert "b" in store and "nope" not in store
    assert store.settings == {"mode": "test"} and (store.num_boxes, store.feat_dim) == (K, D)
    for rec in recs:
        _assert_same(store[rec["img_id"]], rec)
    assert store["r/runway/gsun_0a.jpg"]["valid"].sum() == 3
    with pytest.raises(MissingImageError) as e:
        store["COCO_val2014_000000000001"]
    assert isinstance(e.value, KeyError)
    assert str(path) in str(e.value) and "COCO_val2014_000000000001" in str(e.value)
    assert store.missing(["b", "x", "y"]) == ["x", "y"]


def test_store_bad_files_are_named(tmp_path):
    with pytest.raises(StoreError, match="no such feature store"):
        RoIFeatureStore(tmp_path / "absent.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreError, match="other.h5: not an RoI feature store"):
        RoIFeatureStore(tmp_path / "other.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="junk.h5: not a readable HDF5 file"):
        RoIFeatureStore(tmp_path / "junk.h5")


class _Items(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store, self.ids = store, store.keys()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.store[self.ids[i]]["features"]


def test_store_in_forked_dataloader_workers(tmp_path):
    rng = np.random.default_rng(1)
    recs = [_record(f"img{i}", rng) for i in range(6)]
    store = RoIFeatureStore(write_records(tmp_path / "s.h5", recs, {}))
    first = store["img0"]["features"]  # the parent holds an open handle before forking
    loader = torch.utils.data.DataLoader(_Items(store), batch_size=2, num_workers=2,
                                         multiprocessing_context=mp.get_context("fork"))
    got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, np.stack([r["features"] for r in recs]))
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone["img0"]["features"], first)


def test_chunked_writer_resumes_and_merges(tmp_path):
    rng = np.random.default_rng(2)
    recs = [_record(f"i{n}", rng) for n in range(7)]
    by_id = {r["img_id"]: r for r in recs}
    out = tmp_path / "feats.h5"
    w = ChunkedStoreWriter(out, [r["img_id"] for r in recs], 3, {"mode": "test"})
    w.start()
    assert w.num_chunks == 3 and w.chunk_ids(2) == ["i6"]
    w.write_chunk(0, recs[0:3])
    # A chunk file that is not a complete store (cannot come from os.replace, but
    # a disk can lose it) and a dead process's temp file: both must be ignored.
    w.chunk_path(1).write_bytes(b"\x89HDF\r\n truncated")
    (w.parts / ".chunk-000002.h5.tmp99999999").write_bytes(b"partial")
    assert w.missing_chunks() == [1, 2]
    with pytest.raises(StoreError, match="chunk"):
        w.merge()
    # A second run with other settings is refused instead of mixing two runs.
    with pytest.raises(StoreError, match="settings.mode"):
        ChunkedStoreWriter(out, w.ids, 3, {"mode": "other"}).start()
    again = ChunkedStoreWriter(out, w.ids, 3, {"mode": "test"})
    again.start()
    for k in again.missing_chunks():
        again.write_chunk(k, [by_id[i] for i in again.chunk_ids(k)])
    assert not (w.parts / ".chunk-000002.h5.tmp99999999").exists()
    again.merge()
    assert not again.parts.exists()
    store = RoIFeatureStore(out)
    assert store.keys() == w.ids
    for rec in recs:
        _assert_same(store[rec["img_id"]], rec)
    # Same bytes as writing everything at once through the same merge path.
    ref = ChunkedStoreWriter(tmp_path / "ref.h5", w.ids, 3, {"mode": "test"})
    ref.start()
    for k in range(ref.num_chunks):
        ref.write_chunk(k, [by_id[i] for i in ref.chunk_ids(k)])
    ref.merge()
    assert (tmp_path / "ref.h5").read_bytes() == out.read_bytes()
    assert again.finished()


# --------------------------------------------------------------------------- TSV


def _b64(a):
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def _tsv_line(img_id, h, w, conf, boxes, feats, ids):
    nb = len(conf)
    fields = {
        "img_id": img_id, "img_h": str(h), "img_w": str(w),
        "objects_id": _b64(ids.astype(np.int64)), "objects_conf": _b64(conf.astype(np.float32)),
        "attrs_id": _b64(np.zeros(nb, np.int64)), "attrs_conf": _b64(np.zeros(nb, np.float32)),
        "num_boxes": str(nb), "boxes": _b64(boxes.astype(np.float32)), "features": _b64(feats.astype(np.float32)),
    }
    return "\t".join(fields[k] for k in FIELDNAMES) + "\n"


def _tsv_image(rng, nb, h, w, dim=2048):
    conf = rng.permutation(nb).astype(np.float32) / nb  # distinct, out of order
    x1, y1 = rng.uniform(0, w / 2, nb), rng.uniform(0, h / 2, nb)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, nb), y1 + rng.uniform(1, h / 2, nb)], 1)
    feats = rng.standard_normal((nb, dim)).astype(np.float32)
    feats[:, 0] = np.arange(nb)  # remembers each row's original index
    return conf, boxes.astype(np.float32), feats, rng.integers(1, 1600, nb)


def test_tsv_import_reorders_by_confidence_and_normalises(tmp_path):
    rng = np.random.default_rng(3)
    images = {"COCO_train2014_000000000009": (480, 640, _tsv_image(rng, 40, 480, 640)),
              "COCO_train2014_000000000025": (333, 500, _tsv_image(rng, 5, 333, 500))}
    tsv = tmp_path / "train_obj36.tsv"
    tsv.write_text("".join(_tsv_line(i, h, w, *arrs) for i, (h, w, arrs) in images.items()))
    store = RoIFeatureStore(import_tsv([tsv], tmp_path / "f.h5", progress=False, log=lambda m: None))
    assert store.keys() == list(images)
    for img_id, (h, w, (conf, boxes, feats, ids)) in images.items():
        item = store[img_id]
        n = min(len(conf), 36)
        assert item["features"].shape == (36, 2048) and item["features"].dtype == np.float32
        assert (item["img_h"], item["img_w"]) == (h, w)
        src = item["features"][:n, 0].astype(int)  # original row of each stored row
        assert np.all(np.diff(item["objects_conf"][:n]) < 0)  # descending
        assert set(src) == set(np.flatnonzero(conf >= np.sort(conf)[::-1][n - 1]))  # the n most confident
        np.testing.assert_array_equal(item["objects_conf"][:n], conf[src])
        np.testing.assert_array_equal(item["features"][:n], feats[src])
        np.testing.assert_array_equal(item["objects_id"][:n], ids[src])
        np.testing.assert_allclose(item["boxes"][:n], boxes[src] / [w, h, w, h], rtol=1e-6)
        assert item["boxes"].min() >= 0 and item["boxes"].max() <= 1
        assert item["valid"][:n].all() and not item["valid"][n:].any()
        assert not item["features"][n:].any() and not item["boxes"][n:].any()


def test_tsv_bad_input_is_reported_with_file_and_line(tmp_path, capsys):
    rng = np.random.default_rng(4)
    good = _tsv_line("a", 100, 100, *_tsv_image(rng, 3, 100, 100, dim=16))
    cases = {
        "fields.tsv": (good + "b\t1\t2\n", r"fields.tsv:2: 3 tab-separated fields"),
        "dup.tsv": (good + good, r"dup.tsv:2: img_id 'a' repeats .*dup.tsv:1"),
        "b64.tsv": (good.replace("\t3\t", "\t3\t@@@", 1), r"b64.tsv:1 \(img_id a\): field boxes is not valid base64"),
        "count.tsv": (good.replace("\t3\t", "\t4\t", 1), r"count.tsv:1 \(img_id a\): objects_id has 3 values"),
    }
    for name, (text, pattern) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(TsvError, match=pattern):
            import_tsv([tmp_path / name], tmp_path / f"{name}.h5", progress=False, log=lambda m: None)
    # The CLI: one line naming the problem, exit 1; also ids of a data dir missing from the TSV.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "img.scp").write_text("a /x/a.jpg\nzz /x/zz.jpg\n")
    (tmp_path / "ok.tsv").write_text(good)
    assert tsv_main(["--tsv", str(tmp_path / "ok.tsv"), "--out", str(tmp_path / "o.h5"),
                     "--data", str(tmp_path / "data"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 image id(s) are in no TSV file" in err[0] and "zz" in err[0]
    assert tsv_main(["--tsv", str(tmp_path / "ok.tsv"), "--out", str(tmp_path / "o.h5"), "--no-progress"]) == 0
    assert RoIFeatureStore(tmp_path / "o.h5").feat_dim == 16
