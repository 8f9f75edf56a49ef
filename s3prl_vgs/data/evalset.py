"""The corpus side of retrieval evaluation: captions, distinct images and who describes what."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import torch

from ..errors import VGSError
from .datadir import DataDir

PROTOCOLS = ("auto", "one-to-many", "one-to-one")


class EvaluateError(VGSError, ValueError):
    """Bad input to the evaluation (files, model/data mismatch); the message names the file."""


class EvalSet:
    """Captions and distinct images of a data dir, with the caption -> image index.

    ``utts`` are sorted (``DataDir.utts``), ``images`` are the sorted distinct
    image ids the captions use, ``audio_to_image[i]`` is the index in
    ``images`` of caption ``utts[i]``'s image.
    """

    def __init__(self, data_dir: str | os.PathLike):
        self.path = Path(data_dir)
        data = DataDir.read(self.path)
        self.data = data
        self.utts: List[str] = data.utts
        if not self.utts:
            raise EvaluateError(f"{self.path / 'wav.scp'}: no utterances")
        lacking = [u for u in self.utts if u not in data.utt2img]
        if lacking:
            raise EvaluateError(f"{self.path / 'utt2img'}: no image for utterance {lacking[0]!r}"
                                f" ({len(lacking)} of {len(self.utts)} utterances lack one)")
        self.images: List[str] = sorted({data.utt2img[u] for u in self.utts})
        index = {img: j for j, img in enumerate(self.images)}
        self.audio_to_image = torch.tensor([index[data.utt2img[u]] for u in self.utts], dtype=torch.long)
        self.captions_per_image = torch.bincount(self.audio_to_image, minlength=len(self.images))

    def __repr__(self) -> str:
        return f"EvalSet({str(self.path)!r}, {len(self.utts)} captions, {len(self.images)} images)"

    def wav_paths(self) -> List[str]:
        """Audio file of every caption, in ``utts`` order."""
        return [self.data.wav[u] for u in self.utts]

    def image_paths(self) -> List[str]:
        """Image file of every image (img.scp); EvaluateError for ids that img.scp lacks."""
        missing = [i for i in self.images if i not in self.data.img]
        if missing:
            raise EvaluateError(f"{self.path / 'img.scp'}: image id {missing[0]!r} (used in utt2img) is not listed"
                                f" ({len(missing)} of {len(self.images)} images missing)")
        return [self.data.img[i] for i in self.images]

    def resolve_protocol(self, protocol: str) -> str:
        """``auto`` -> one-to-one when every image has exactly one caption, else one-to-many; checks the others."""
        if protocol not in PROTOCOLS:
            raise EvaluateError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
        single = bool((self.captions_per_image == 1).all())
        if protocol == "auto":
            return "one-to-one" if single else "one-to-many"
        if protocol == "one-to-one" and not single:
            j = int(torch.argmax(self.captions_per_image))
            n = int((self.captions_per_image > 1).sum())
            raise EvaluateError(
                f"{self.path / 'utt2img'}: protocol one-to-one needs one caption per image, but {n} image(s) have "
                f"several (e.g. {self.images[j]!r}: {int(self.captions_per_image[j])}); use --protocol one-to-many"
            )
        return protocol


__all__ = ["EvalSet", "EvaluateError", "PROTOCOLS"]
