"""ESPnet data types of the VGS task: RoI features by image id, and images.

ESPnet picks a loader with ``re.match(type_key, given_type)`` over
``espnet2.train.dataset.DATA_TYPES`` in insertion order, so our names must not
start with an existing key (``image`` and ``roi_*`` do not) and are appended
at the end. :func:`register` is called when :mod:`espnet_recipes.tasks.vgs`
is imported, before any parser is built, so spawned DDP workers have them too.

File formats (one line per utterance, ``key value``):

``roi_feats`` / ``roi_boxes``  ``utt /path/to/store.h5:IMAGE_ID``; the value is
    split at its last ``:``, so image ids must not contain ``:``. Returns the
    (36, 2048) float32 ``features`` or (36, 4) float32 ``boxes`` of the image
    from :class:`s3prl_vgs.features.RoIFeatureStore`.
``image``  ``utt /path/to/image.jpg``. Returns the decoded RGB image as a uint8
    (H, W, 3) array; the task's preprocessor turns it into the model's float
    (3, S, S) input (ESPnet itself only accepts float/int arrays after it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Dict, Iterator, List, Tuple

import numpy as np

from s3prl_vgs.data.datadir import read_scp
from s3prl_vgs.data.image import load_image
from s3prl_vgs.features import RoIFeatureStore


class VGSDataError(ValueError):
    """Bad data given to the VGS task; the message names the file and the problem."""


def split_roi_value(value: str, where: str) -> Tuple[str, str]:
    """``"store.h5:IMAGE_ID"`` -> (store path, image id), split at the last ``:``."""
    path, sep, image_id = value.rpartition(":")
    if not sep or not path or not image_id:
        raise VGSDataError(f"{where}: expected 'STORE.h5:IMAGE_ID', got {value!r}")
    return path, image_id


class RoIScpReader(Mapping):
    """``utt -> store[image_id][field]`` for a ``roi.scp`` file.

    Every store is opened (and checked) once, and every image id is looked up
    at construction, so a missing id fails before training starts with one
    error listing them all. Stores open their HDF5 file lazily per process.
    """

    def __init__(self, path: str | os.PathLike, field: str):
        self.path, self.field = str(path), field
        self._entries: Dict[str, Tuple[RoIFeatureStore, str]] = {}
        stores: Dict[str, RoIFeatureStore] = {}
        missing: Dict[str, List[str]] = {}
        for utt, value in read_scp(path).items():
            store_path, image_id = split_roi_value(value, f"{path}: utterance {utt}")
            if store_path not in stores:
                try:
                    stores[store_path] = RoIFeatureStore(store_path)
                except ValueError as e:  # StoreError names the store file
                    raise VGSDataError(f"{path}: utterance {utt}: {e}") from None
            store = stores[store_path]
            if image_id not in store:
                missing.setdefault(store_path, []).append(f"{utt} -> {image_id}")
            self._entries[utt] = (store, image_id)
        if missing:
            parts = [f"{len(v)} utterance(s) whose image id is not in {s} (e.g. {', '.join(v[:3])})"
                     for s, v in missing.items()]
            raise VGSDataError(f"{path}: " + "; ".join(parts))

    def __getitem__(self, utt: str) -> np.ndarray:
        store, image_id = self._entries[utt]
        return np.asarray(store[image_id][self.field], dtype=np.float32)

    def feature_stats(self, max_images: int = 5000) -> Tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean/std of the RoI features of this file's images (each image once)."""
        by_store: Dict[str, Tuple[RoIFeatureStore, set]] = {}
        for store, image_id in self._entries.values():
            by_store.setdefault(str(store.path), (store, set()))[1].add(image_id)
        n_all = sum(len(ids) for _, ids in by_store.values())
        means, variances, weights = [], [], []
        for store, ids in by_store.values():
            mean, std = store.feature_stats(sorted(ids), max_images=max(1, max_images * len(ids) // n_all))
            means.append(mean)
            variances.append(std ** 2)
            weights.append(len(ids) / n_all)
        mean = sum(w * m for w, m in zip(weights, means))
        var = sum(w * (v + (m - mean) ** 2) for w, v, m in zip(weights, variances, means))
        return mean, np.sqrt(var)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class ImageScpReader(Mapping):
    """``utt -> uint8 (H, W, 3)`` decoded RGB image of an ``image.scp`` file."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._images = read_scp(path)

    def __getitem__(self, utt: str) -> np.ndarray:
        return np.asarray(load_image(self._images[utt]))  # ImageError names the image file

    def __iter__(self) -> Iterator[str]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)


def roi_feats_loader(path: str) -> RoIScpReader:
    return RoIScpReader(path, "features")


def roi_boxes_loader(path: str) -> RoIScpReader:
    return RoIScpReader(path, "boxes")


def image_loader(path: str) -> ImageScpReader:
    return ImageScpReader(path)


VGS_DATA_TYPES = {
    "roi_feats": dict(
        func=roi_feats_loader,
        kwargs=[],
        help="RoI features of the utterance's image from an HDF5 RoI store (s3prl_vgs.features)."
        "\n\n   utterance_id_a dump/roi/train.h5:IMAGE_ID\n   ...",
    ),
    "roi_boxes": dict(
        func=roi_boxes_loader,
        kwargs=[],
        help="Normalised x1y1x2y2 RoI boxes of the utterance's image; same file format as roi_feats.",
    ),
    "image": dict(
        func=image_loader,
        kwargs=[],
        help="Image file of the utterance, decoded to uint8 (H, W, 3); the VGS preprocessor transforms it."
        "\n\n   utterance_id_a /some/where/a.jpg\n   ...",
    ),
}


def register() -> None:
    """Add our loaders to ESPnet's ``DATA_TYPES`` (idempotent)."""
    import re

    from espnet2.train.dataset import DATA_TYPES

    for name, spec in VGS_DATA_TYPES.items():
        if name in DATA_TYPES:
            if DATA_TYPES[name]["func"] is not spec["func"]:
                raise RuntimeError(f"ESPnet already has a data type {name!r}")
            continue
        clash = [k for k in DATA_TYPES if re.match(k, name)]
        if clash:  # an earlier key would shadow ours
            raise RuntimeError(f"data type {name!r} would be read by ESPnet's {clash[0]!r} loader")
        DATA_TYPES[name] = spec


__all__ = ["VGSDataError", "RoIScpReader", "ImageScpReader", "VGS_DATA_TYPES", "register", "split_roi_value"]
