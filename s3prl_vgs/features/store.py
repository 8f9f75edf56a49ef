"""HDF5 store of RoI features, one file per split, keyed by image id.

Layout of a finished store (``FEATS.h5``), ``n`` images, ``K`` rows each
(``K`` = 36 for FaST-VGS), ``D``-d features (2048):

==================  ===========  =============================================
dataset             shape        meaning
==================  ===========  =============================================
``img_id``          (n,) str     image id of each row (utf-8, any length)
``features``        (n, K, D)    float32 pooled region features
``boxes``           (n, K, 4)    float32 x1, y1, x2, y2 divided by img_w/img_h
``img_h, img_w``    (n,) int64   original image size in pixels
``objects_conf``    (n, K)       float32 confidence, rows in descending order
``objects_id``      (n, K)       int64 detector class, -1 where there is none
``valid``           (n, K) bool  False on zero padding rows (no region)
==================  ===========  =============================================

File attributes: ``format`` (``FORMAT``), ``num_boxes``, ``feat_dim`` and
``settings`` (JSON: how the features were made). Rows are found through the
``img_id`` dataset, never by position, so the row order carries no meaning
(the official code's ``*_imgid2idex.json`` side file is not needed).

Why chunk files: HDF5 is not crash safe, a process killed while writing can
leave a file that no longer opens. Writers therefore never append to the final
file. Work is cut into chunks of image ids fixed up front (``plan.json``);
each chunk is written to ``FEATS.h5.parts/chunk-NNNNNN.h5`` through a
temporary name and ``os.replace``, so a chunk file is either complete or
absent. A rerun skips the chunk files that exist and match the plan, so a kill
loses at most the chunk in flight, and nothing is duplicated or truncated.
``--nj`` jobs share the parts directory (chunk ``k`` belongs to job
``k % nj + 1``). The merge writes all chunks into a temporary file that
replaces ``FEATS.h5`` at once, then removes the parts.

Reading: :class:`RoIFeatureStore` opens the file lazily in each process, so a
store built before a DataLoader forks is safe to use inside its workers.

One row check (:func:`check_rows`: shape, dtype, finite values, boxes in
[0, 1]) guards every way in and out: the writer checks each record before
anything is written, the merge checks each chunk it copies, the reader checks
each row it returns, and :meth:`RoIFeatureStore.verify` checks a whole store
(recipe stage 4). Opening a store checks its header against its datasets:
``num_boxes``/``feat_dim`` against the shapes, and every dataset's length.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import h5py
import numpy as np

from ..errors import VGSError
from ..io import atomic_write_text

FORMAT = "s3prl_vgs.roi_features/1"
NUM_BOXES = 36
PER_IMAGE = ("img_h", "img_w")
PER_ROW = ("features", "boxes", "objects_conf", "objects_id", "valid")
DATASETS = ("img_id",) + PER_IMAGE + PER_ROW


class StoreError(VGSError, ValueError):
    """A feature store or chunk that cannot be used; the message names the file."""


class MissingImageError(KeyError):
    """An image id that is not in the store."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


# --------------------------------------------------------------------------- records


def empty_record(img_id: str, img_h: int, img_w: int, num_boxes: int, feat_dim: int) -> Dict[str, Any]:
    """A record with every row zero padding; writers fill its first rows."""
    return {
        "img_id": img_id,
        "img_h": int(img_h),
        "img_w": int(img_w),
        "features": np.zeros((num_boxes, feat_dim), np.float32),
        "boxes": np.zeros((num_boxes, 4), np.float32),
        "objects_conf": np.zeros((num_boxes,), np.float32),
        "objects_id": np.full((num_boxes,), -1, np.int64),
        "valid": np.zeros((num_boxes,), bool),
    }


ROW_KINDS = {"features": "f", "boxes": "f", "objects_conf": "f", "objects_id": "iu", "valid": "b"}  # numpy dtype kinds


def check_rows(rows: Mapping[str, Any], num_boxes: int, feat_dim: int, where: str) -> None:
    """The one feature-row check, for one image (``(K, D)`` features ...) or a block of them (``(n, K, D)``).

    Shapes, dtype kinds (float features/boxes/confidences, integer ids, bool
    valid), finite values and boxes inside [0, 1]; StoreError naming ``where``
    (file and image) otherwise. Writers call it before writing, readers on
    every row they return.
    """
    shapes = {
        "features": (num_boxes, feat_dim),
        "boxes": (num_boxes, 4),
        "objects_conf": (num_boxes,),
        "objects_id": (num_boxes,),
        "valid": (num_boxes,),
    }
    for key, shape in shapes.items():
        if key not in rows:
            raise StoreError(f"{where}: no {key}")
        a = np.asarray(rows[key])
        if a.shape[-len(shape):] != shape or a.ndim not in (len(shape), len(shape) + 1):
            raise StoreError(f"{where}: {key} has shape {a.shape}, expected {shape}")
        if a.dtype.kind not in ROW_KINDS[key]:
            raise StoreError(f"{where}: {key} has dtype {a.dtype}, expected {'bool' if key == 'valid' else ('float' if ROW_KINDS[key] == 'f' else 'integer')}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0].tolist()
            raise StoreError(f"{where}: {key} holds NaN or infinite values (first at index {bad})")
    b = np.asarray(rows["boxes"])
    if not (np.all(b >= 0) and np.all(b <= 1)):
        raise StoreError(f"{where}: boxes are not normalised to [0, 1]")


def _check_record(rec: Mapping[str, Any], num_boxes: int, feat_dim: int, where: str) -> None:
    check_rows(rec, num_boxes, feat_dim, f"{where}: image {rec['img_id']!r}")


# --------------------------------------------------------------------------- files


def _create(f: h5py.File, n: int, num_boxes: int, feat_dim: int) -> None:
    # Contiguous layout: sizes are known before writing, and one row reads
    # exactly its own bytes (no chunk cache thrash on random access).
    f.create_dataset("img_id", (n,), dtype=h5py.string_dtype("utf-8"))
    for key in PER_IMAGE:
        f.create_dataset(key, (n,), dtype=np.int64)
    f.create_dataset("features", (n, num_boxes, feat_dim), dtype=np.float32)
    f.create_dataset("boxes", (n, num_boxes, 4), dtype=np.float32)
    f.create_dataset("objects_conf", (n, num_boxes), dtype=np.float32)
    f.create_dataset("objects_id", (n, num_boxes), dtype=np.int64)
    f.create_dataset("valid", (n, num_boxes), dtype=bool)


def _set_attrs(f: h5py.File, num_boxes: int, feat_dim: int, settings: Mapping[str, Any]) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["num_boxes"] = num_boxes
    f.attrs["feat_dim"] = feat_dim
    f.attrs["settings"] = json.dumps(settings, sort_keys=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_records(path: str | os.PathLike, records: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> Path:
    """Write ``records`` as one store file, atomically (temp file + rename).

    Used for chunk files; also a simple way to write a small store at once.
    """
    path = Path(path)
    if not records:
        raise StoreError(f"{path}: no records to write")
    if np.ndim(records[0]["features"]) != 2:
        raise StoreError(f"{path}: image {records[0]['img_id']!r}: features has shape "
                         f"{np.shape(records[0]['features'])}, expected (num_boxes, feat_dim)")
    num_boxes, feat_dim = np.shape(records[0]["features"])
    ids = [r["img_id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise StoreError(f"{path}: duplicate image id(s) {dup[:5]}")
    for r in records:
        _check_record(r, num_boxes, feat_dim, str(path))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        _create(f, len(records), num_boxes, feat_dim)
        _set_attrs(f, num_boxes, feat_dim, settings)
        f["img_id"][:] = ids
        for key in PER_IMAGE:
            f[key][:] = np.array([r[key] for r in records], np.int64)
        for key in PER_ROW:
            f[key][:] = np.stack([np.asarray(r[key]) for r in records]).astype(f[key].dtype, copy=False)
    _fsync(tmp)
    os.replace(tmp, path)
    return path


def _read_ids(f: h5py.File) -> List[str]:
    try:
        return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in f["img_id"][:]]
    except UnicodeDecodeError as e:
        raise StoreError(f"{f.filename}: dataset img_id holds an id that is not UTF-8 ({e.object[:40]!r})") from None


def _open_store(path: Path) -> h5py.File:
    """Open and check a store; StoreError naming the file otherwise."""
    if not path.is_file():
        raise StoreError(f"{path}: no such feature store")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise StoreError(f"{path}: not a readable HDF5 file ({e})") from None
    try:
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{path}: not an RoI feature store (format attribute {f.attrs.get('format')!r}, expected {FORMAT!r})")
        missing = [k for k in DATASETS if k not in f]
        if missing:
            raise StoreError(f"{path}: missing dataset(s) {missing}")
        _check_header(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _check_header(f: h5py.File, path: Path) -> None:
    """The attributes agree with the datasets, and every dataset has one entry per image."""
    try:
        num_boxes, feat_dim = int(f.attrs["num_boxes"]), int(f.attrs["feat_dim"])
        json.loads(f.attrs["settings"])
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(f"{path}: bad or missing header attribute ({type(e).__name__}: {e})") from None
    if not all(isinstance(f[k], h5py.Dataset) for k in DATASETS):
        raise StoreError(f"{path}: {[k for k in DATASETS if not isinstance(f[k], h5py.Dataset)]} are not datasets")
    n = f["img_id"].shape[0] if f["img_id"].ndim == 1 else -1
    expected = {
        "img_id": (n,), "img_h": (n,), "img_w": (n,),
        "features": (n, num_boxes, feat_dim), "boxes": (n, num_boxes, 4),
        "objects_conf": (n, num_boxes), "objects_id": (n, num_boxes), "valid": (n, num_boxes),
    }
    for key, shape in expected.items():
        if f[key].shape != shape:
            raise StoreError(f"{path}: dataset {key} has shape {f[key].shape}, but the header (num_boxes={num_boxes}, "
                             f"feat_dim={feat_dim}) and img_id ({n} images) say {shape}")
    for key in PER_IMAGE:
        if f[key].dtype.kind not in "iu":
            raise StoreError(f"{path}: dataset {key} has dtype {f[key].dtype}, expected integer")
    for key in PER_ROW:
        if f[key].dtype.kind not in ROW_KINDS[key]:
            raise StoreError(f"{path}: dataset {key} has dtype {f[key].dtype}, expected kind {ROW_KINDS[key]!r}")


# --------------------------------------------------------------------------- reader


class RoIFeatureStore:
    """Random access to a finished store by image id.

    The HDF5 handle is opened on first use in each process (h5py handles must
    not cross a fork), so the object can be built in the parent and pickled or
    forked into DataLoader workers.

    Example:
        >>> store = RoIFeatureStore("dump/roi/train.h5")
        >>> item = store["COCO_val2014_000000325114"]
        >>> item["features"].shape, item["boxes"].shape
        ((36, 2048), (36, 4))
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._h5: Optional[h5py.File] = None
        self._pid: Optional[int] = None
        # Validate now, in the caller's process, so a wrong path fails at once
        # rather than inside a worker; the index is small and picklable.
        with _open_store(self.path) as f:
            self._ids = _read_ids(f)
            self.num_boxes = int(f.attrs["num_boxes"])
            self.feat_dim = int(f.attrs["feat_dim"])
            self.settings = json.loads(f.attrs["settings"])
        self._row = {k: i for i, k in enumerate(self._ids)}
        if len(self._row) != len(self._ids):
            raise StoreError(f"{self.path}: duplicate image ids in img_id")

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = _open_store(self.path)  # a forked copy's handle is dropped, not closed
            self._pid = os.getpid()
        return self._h5

    def __getitem__(self, image_id: str) -> Dict[str, Any]:
        """``features`` (K, D) float32, ``boxes`` (K, 4) float32 in [0, 1],
        ``img_h``, ``img_w`` (int), ``objects_conf`` (K,) float32, ``objects_id``
        (K,) int64 and ``valid`` (K,) bool."""
        row = self._row.get(image_id)
        if row is None:
            raise MissingImageError(f"{self.path}: image id {image_id!r} is not in this store ({len(self)} images)")
        f = self._file()
        out: Dict[str, Any] = {key: f[key][row] for key in PER_ROW}
        for key in PER_IMAGE:
            out[key] = int(f[key][row])
        check_rows(out, self.num_boxes, self.feat_dim, f"{self.path}: image {image_id!r}")
        return out

    def verify(self, image_ids: Optional[Iterable[str]] = None, block: int = 64) -> None:
        """Check every row of ``image_ids`` (default: all) with :func:`check_rows`; StoreError naming the image.

        Reads the store once in file order, ``block`` images at a time (only
        the blocks that hold a wanted image).
        """
        wanted = np.zeros(len(self._ids), bool)
        wanted[[self._row[i] for i in (self._ids if image_ids is None else image_ids) if i in self._row]] = True
        f = self._file()
        for lo in range(0, len(self._ids), block):
            hi = min(lo + block, len(self._ids))
            if not wanted[lo:hi].any():
                continue
            part = {key: f[key][lo:hi] for key in PER_ROW + PER_IMAGE}
            try:
                check_rows(part, self.num_boxes, self.feat_dim, "")
                for key in PER_IMAGE:
                    if (part[key] <= 0).any():
                        raise StoreError(f"{key} is not positive")
            except StoreError:  # find the image to name
                for r in range(hi - lo):
                    where = f"{self.path}: image {self._ids[lo + r]!r}"
                    check_rows({k: part[k][r] for k in PER_ROW}, self.num_boxes, self.feat_dim, where)
                    for key in PER_IMAGE:
                        if part[key][r] <= 0:
                            raise StoreError(f"{where}: {key} is {part[key][r]}, not positive") from None
                raise

    def feature_stats(self, image_ids: Optional[Sequence[str]] = None, max_images: int = 5000,
                      block: int = 256) -> Tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std (float64) of the valid RoI rows of ``image_ids`` (default: all).

        At most ``max_images`` images enter, evenly spaced in file order (deterministic, and
        a SpokenCOCO-size store is not read whole). Read ``block`` images at a time.
        """
        rows = sorted(self._row[i] for i in (self._ids if image_ids is None else image_ids) if i in self._row)
        if not rows:
            raise StoreError(f"{self.path}: no images to compute feature statistics from")
        if len(rows) > max_images:
            rows = [rows[int(k)] for k in np.linspace(0, len(rows) - 1, max_images)]
        f = self._file()
        total = np.zeros(self.feat_dim)
        total_sq = np.zeros(self.feat_dim)
        count = 0
        for lo in range(0, len(rows), block):
            part = rows[lo:lo + block]
            feats = f["features"][part].astype(np.float64)  # (n, K, D); h5py wants increasing rows
            valid = f["valid"][part].astype(bool)
            x = feats[valid]
            total += x.sum(0)
            total_sq += (x * x).sum(0)
            count += len(x)
        if count < 2:
            raise StoreError(f"{self.path}: fewer than 2 valid RoIs; cannot compute feature statistics")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
        return mean, np.maximum(std, 1e-3 * max(float(std.max()), 1e-12))

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row

    def keys(self) -> List[str]:
        return list(self._ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def missing(self, image_ids: Iterable[str]) -> List[str]:
        """The ids of ``image_ids`` absent from the store, to report all at once."""
        return [i for i in image_ids if i not in self._row]

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __enter__(self) -> "RoIFeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"RoIFeatureStore({str(self.path)!r}, {len(self)} images)"


# --------------------------------------------------------------------------- writer


def ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(folder: Path, stem: str) -> None:
    """Remove temp files ``.{stem}.tmp<pid>`` left by killed processes."""
    pattern = re.compile(re.escape(f".{stem}.tmp") + r"(\d+)$")
    for p in folder.glob(f".{stem}.tmp*"):
        m = pattern.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)


class ChunkedStoreWriter:
    """Resumable writer of a store at ``out`` through chunk files in ``out.parts/``.

    Args:
        out: the final store path.
        ids: every image id of the store, in row order; chunk ``k`` holds
            ``ids[k * chunk_size:(k + 1) * chunk_size]``.
        chunk_size: images per chunk file (the most work a kill can lose).
        settings: JSON data saying how the features are made; a rerun with
            other settings or ids is refused instead of mixing two runs.
    """

    def __init__(self, out: str | os.PathLike, ids: Sequence[str], chunk_size: int, settings: Mapping[str, Any]):
        self.out = Path(out)
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.ids = list(ids)
        if not self.ids:
            raise StoreError(f"{self.out}: no image ids to write")
        if len(set(self.ids)) != len(self.ids):
            raise StoreError(f"{self.out}: duplicate image ids in the list to write")
        if chunk_size < 1:
            raise StoreError(f"chunk size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.settings = json.loads(json.dumps(dict(settings), sort_keys=True))
        self.plan = {
            "format": FORMAT,
            "num_images": len(self.ids),
            "ids_sha256": ids_digest(self.ids),
            "chunk_size": chunk_size,
            "settings": self.settings,
            "ids": self.ids,
        }

    @property
    def num_chunks(self) -> int:
        return -(-len(self.ids) // self.chunk_size)

    def chunk_ids(self, k: int) -> List[str]:
        return self.ids[k * self.chunk_size : (k + 1) * self.chunk_size]

    def chunk_path(self, k: int) -> Path:
        return self.parts / f"chunk-{k:06d}.h5"

    def finished(self) -> bool:
        """True when ``out`` exists and holds exactly this plan's ids and settings."""
        if not self.out.exists():
            return False
        with _open_store(self.out) as f:
            same = json.loads(f.attrs["settings"]) == self.settings and sorted(_read_ids(f)) == sorted(self.ids)
        if not same:
            raise StoreError(
                f"{self.out}: exists but holds other images or settings than this run; remove it or choose another output"
            )
        return True

    def start(self) -> None:
        """Create ``out.parts/`` with the plan, or check the plan of an earlier run."""
        self.parts.mkdir(parents=True, exist_ok=True)
        plan_path = self.parts / "plan.json"
        if plan_path.exists():
            try:
                old = json.loads(plan_path.read_text())
            except (OSError, ValueError) as e:
                raise StoreError(f"{plan_path}: unreadable ({e}); remove {self.parts} to start over") from None
            if old != self.plan:
                diff = sorted(k for k in self.plan if old.get(k) != self.plan[k] and k != "ids")
                if old.get("settings") != self.plan["settings"]:
                    s_old, s_new = old.get("settings") or {}, self.plan["settings"]
                    diff += [f"settings.{k}: {s_old.get(k)!r} -> {s_new.get(k)!r}"
                             for k in sorted(set(s_old) | set(s_new)) if s_old.get(k) != s_new.get(k)]
                raise StoreError(
                    f"{self.parts}: an earlier run used other ids or settings ({'; '.join(diff)}); "
                    f"rerun with the same options, or remove {self.parts} to start over"
                )
        else:
            atomic_write_text(plan_path, json.dumps(self.plan, sort_keys=True))

    def is_done(self, k: int) -> bool:
        """True when chunk ``k``'s file exists and holds exactly its ids."""
        path = self.chunk_path(k)
        if not path.exists():
            return False
        try:
            with _open_store(path) as f:
                return _read_ids(f) == self.chunk_ids(k) and json.loads(f.attrs["settings"]) == self.settings
        except (StoreError, OSError, KeyError, ValueError):
            return False  # cannot happen through os.replace; recompute rather than trust it

    def write_chunk(self, k: int, records: Sequence[Mapping[str, Any]]) -> Path:
        expected = self.chunk_ids(k)
        got = [r["img_id"] for r in records]
        if got != expected:
            raise StoreError(f"chunk {k}: records are for {got[:3]}..., expected {expected[:3]}...")
        _remove_stale_tmp(self.parts, self.chunk_path(k).name)
        return write_records(self.chunk_path(k), records, self.settings)

    def missing_chunks(self) -> List[int]:
        return [k for k in range(self.num_chunks) if not self.is_done(k)]

    def merge(self, nj: int = 1) -> Path:
        """Write every chunk into ``out`` (temp file + rename), then drop the parts."""
        missing = self.missing_chunks()
        if missing:
            jobs = sorted({k % nj + 1 for k in missing})
            raise StoreError(
                f"{self.parts}: {len(missing)} of {self.num_chunks} chunk(s) not finished "
                f"(e.g. chunk {missing[0]}; job(s) {jobs[:10]} of {nj}); run those jobs first"
            )
        with _open_store(self.chunk_path(0)) as f:
            num_boxes, feat_dim = f["features"].shape[1:]
        tmp = self.out.with_name(f".{self.out.name}.tmp{os.getpid()}")
        _remove_stale_tmp(self.out.parent, self.out.name)
        try:
            with h5py.File(tmp, "w") as dst:
                _create(dst, len(self.ids), num_boxes, feat_dim)
                _set_attrs(dst, num_boxes, feat_dim, self.settings)
                dst["img_id"][:] = self.ids
                for k in range(self.num_chunks):
                    lo = k * self.chunk_size
                    with _open_store(self.chunk_path(k)) as src:
                        if src["features"].shape[1:] != (num_boxes, feat_dim):
                            raise StoreError(
                                f"{self.chunk_path(k)}: rows are {src['features'].shape[1:]}, "
                                f"chunk 0 has {(num_boxes, feat_dim)}"
                            )
                        n = len(src["img_id"])
                        part = {key: src[key][:] for key in PER_ROW}
                        check_rows(part, num_boxes, feat_dim, str(self.chunk_path(k)))
                        for key in PER_IMAGE:
                            dst[key][lo : lo + n] = src[key][:]
                        for key in PER_ROW:
                            dst[key][lo : lo + n] = part[key]
            _fsync(tmp)
            os.replace(tmp, self.out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        shutil.rmtree(self.parts)
        return self.out


__all__ = [
    "FORMAT",
    "NUM_BOXES",
    "ChunkedStoreWriter",
    "MissingImageError",
    "RoIFeatureStore",
    "StoreError",
    "check_rows",
    "empty_record",
    "write_records",
]
