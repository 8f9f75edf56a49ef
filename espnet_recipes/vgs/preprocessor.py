"""Per-utterance preprocessing of the VGS task (runs in ESPnet's DataLoader workers).

- ``speech``: cropped to the first ``crop_sec`` seconds (FaST-VGS and VG-HuBERT
  train on at most 8 s and validate on at most 10 s of each caption).
- ``image``: the uint8 (H, W, 3) image of the ``image`` data type goes through
  the model's torchvision transform (training augmentation when ``train``),
  giving float32 (3, S, S).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from s3prl_vgs.data.audio import SAMPLE_RATE


class VGSPreprocessor:
    """Callable ``(uid, data) -> data`` for ``ESPnetDataset(preprocess=...)``.

    Args:
        train: whether this is the training iterator (selects the image transform).
        crop_sec: keep at most this many seconds of speech (None: keep all).
        image_transform: PIL image -> (3, S, S) tensor; None when the model takes no images.
    """

    def __init__(self, train: bool, crop_sec: Optional[float] = None,
                 image_transform: Optional[Callable] = None, fs: int = SAMPLE_RATE):
        if crop_sec is not None and crop_sec <= 0:
            raise ValueError(f"crop_sec must be > 0, got {crop_sec}")
        self.train = train
        self.max_samples = None if crop_sec is None else int(round(crop_sec * fs))
        self.image_transform = image_transform

    def __call__(self, uid: str, data: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self.max_samples is not None and "speech" in data:
            # NOTE(original): the official loaders keep the start of a long caption.
            data["speech"] = data["speech"][: self.max_samples]
        if "image" in data:
            image = data["image"]
            if image.dtype.kind == "f" and image.ndim == 3 and image.shape[0] == 3:
                # Already a model input. ESPnet's streaming iterator (collect-stats) preprocesses
                # the types it cannot stream twice: once in an inner dataset, once after merging.
                return data
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"{uid}: 'image' must be a uint8 (H, W, 3) array (data type 'image') "
                                 f"or a float (3, S, S) model input, got {image.dtype} {image.shape}")
            if self.image_transform is None:
                raise ValueError(f"{uid}: got an 'image' but this model takes no images")
            from PIL import Image

            data["image"] = self.image_transform(Image.fromarray(image)).numpy()
        return data

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(train={self.train}, max_samples={self.max_samples}, "
                f"image_transform={self.image_transform is not None})")


__all__ = ["VGSPreprocessor"]
