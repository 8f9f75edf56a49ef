"""Tiny real files for the data-layer tests: short wavs, small images, corpora in their real layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import soundfile as sf
from PIL import Image

from s3prl_vgs.data.datadir import DataDir


def write_wav(path, seconds: float = 0.1, sr: int = 16000, channels: int = 1, freq: float = 440.0) -> Path:
    """A sine tone as 16-bit PCM wav."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * freq * t)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    sf.write(str(path), data, sr, subtype="PCM_16")
    return path


def write_image(path, size: Tuple[int, int] = (20, 16), color=(200, 30, 30)) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def make_data_dir(root, n_utts: int = 3, n_images: int = 2) -> Tuple[Path, DataDir]:
    """A valid data dir ``root/data`` with wavs in ``root/wavs`` and images in ``root/img``."""
    root = Path(root)
    dd = DataDir()
    for j in range(n_images):
        dd.img[f"img{j}"] = str(write_image(root / "img" / f"img{j}.png", color=(40 * j, 100, 50)))
    for i in range(n_utts):
        utt = f"spk{i % 2}-utt{i}"
        dd.wav[utt] = str(write_wav(root / "wavs" / f"{utt}.wav", freq=300 + 50 * i))
        dd.utt2img[utt] = f"img{i % n_images}"
        dd.text[utt] = f"caption number {i}"
        dd.utt2spk[utt] = f"spk{i % 2}"
    return dd.write(root / "data"), dd


def write_json(path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def coco_image_entry(root: Path, split_dir: str, number: int, captions: List[Dict]) -> Dict:
    """One per-image SpokenCOCO entry; writes the image and the caption wavs under ``root``."""
    image = f"{split_dir}/COCO_{split_dir}_{number:012d}.jpg"
    write_image(root / image)
    for cap in captions:
        write_wav(root / "SpokenCOCO" / cap["wav"])
    return {"image": image, "captions": captions}


def coco_caption(speaker: str, image_number: int, k: int, split: str = "val", text: str = "A CAT ON A MAT") -> Dict:
    uttid = f"{speaker}-3LUY3GC63Z0R9PYEETJGN5HO4UEP7B_{image_number}_{k}"
    return {"text": text, "speaker": speaker, "uttid": uttid, "wav": f"wavs/{split}/0/{uttid}.wav"}
