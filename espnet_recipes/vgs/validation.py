"""Whole-split retrieval recall as an ESPnet validation statistic (model selection by retrieval).

The official FaST-VGS and VG-HuBERT code select the checkpoint with the best
validation retrieval, not the lowest loss (a loss criterion would also pick a
MIM checkpoint from before the MIM term switches on). :class:`RetrievalTap`
sits between ESPnet's validation iterator and its loop: for every valid batch
it encodes the captions and images with the model's own ``encode_audio`` /
``encode_image`` (eval mode, no crop), keeps the retrieval vectors, and at the
end scores every caption against every image of the split. The result goes to
ESPnet's reporter as ``valid/retrieval_r1`` (mean of A2I and I2A R@1, percent,
what ``best_model_criterion: [[valid, retrieval_r1, max]]`` names) plus the
per-direction R@1/5/10.

Subsets (Places: dev_seen and dev_unseen, validated as the official code
does): with a subset map (``--valid_utt2subset``, a Kaldi-style
``utt2subset`` file, ``<utt_id> <subset>`` per line, that
``egs/places/vgs1/local/data.sh`` writes next to ``data/dev``), each subset's
captions are scored against the images of that subset only, giving
``<subset>_r1`` (mean R@1 of both directions) and ``<subset>_r{k}_a2i`` /
``_i2a``; ``retrieval_r1`` and ``r{k}_a2i`` / ``_i2a`` are then the means over
the subsets (official: the mean of seen and unseen), so the same
``best_model_criterion`` selects on it. Every validation utterance must have
a subset and every utterance of the map must be in the validation split
(a one-line :class:`~s3prl_vgs.errors.FileProblem` naming the map otherwise).

This is the same computation as ``vgs-evaluate``'s coarse method on the same
data dir, or on each subset's own data dir (``tests/integration/test_retrieval_selection.py``
and ``tests/integration/test_valid_subsets.py`` check it); for
FaST-VGS the statistic is coarse retrieval (the fine scorer over a whole split
would cost far more than an epoch of the demo).
"""

from __future__ import annotations

import os
import re
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from s3prl_vgs.data.datadir import read_scp
from s3prl_vgs.errors import FileProblem
from s3prl_vgs.retrieval import recall_at_k

STAT = "retrieval_r1"  # the best_model_criterion key
_SUBSET_NAME = re.compile(r"[A-Za-z0-9_-]+")  # becomes part of a reporter key (<subset>_r1)


def read_utt2subset(path: str | os.PathLike, utts: Optional[Iterable[str]] = None) -> Dict[str, str]:
    """``{utt_id: subset}`` of a Kaldi-style ``utt2subset`` file; with ``utts`` (the validation
    split's utterance ids) also checks that the map covers exactly those. FileProblem otherwise."""
    mapping = read_scp(path)  # a missing file, a bad line or a duplicate: one line naming the file
    if not mapping:
        raise FileProblem(path, "no utterances (expected '<utt_id> <subset>' lines)")
    for utt, name in mapping.items():
        if not _SUBSET_NAME.fullmatch(name):
            raise FileProblem(path, f"utterance {utt!r}: subset name {name!r} is not letters, digits, '_' or '-'")
    if utts is not None:
        check_utt2subset(path, mapping, utts)
    return mapping


def check_utt2subset(path, mapping: Dict[str, str], utts: Iterable[str]) -> None:
    """FileProblem naming ``path`` when a split utterance has no subset or the map names one the split lacks."""
    utts = set(utts)
    missing = sorted(utts - set(mapping))
    if missing:
        raise FileProblem(path, f"no subset for validation utterance {missing[0]!r} "
                                f"({len(missing)} of the split's {len(utts)} utterances have none)")
    extra = sorted(set(mapping) - utts)
    if extra:
        raise FileProblem(path, f"names utterance {extra[0]!r}, which the validation split does not have "
                                f"({len(extra)} such)")


def _image_inputs(batch: Dict[str, torch.Tensor]) -> Optional[Tuple[str, ...]]:
    """Which batch keys feed ``encode_image``: RoI features (FaST-VGS) or pixels (MIM family)."""
    if "roi_feats" in batch and "roi_boxes" in batch:
        return ("roi_feats", "roi_boxes")
    if "image" in batch:
        return ("image",)
    return None


class RetrievalTap:
    """Collects retrieval vectors of the validation split while ESPnet iterates over it.

    Args:
        model: the VGS model (``encode_audio``, ``encode_image``, ``coarse_scores``).
        utt2subset: ``{utt_id: subset}`` (:func:`read_utt2subset`): score each subset against
            its own gallery; None: the whole split as one gallery.
        source: the map's file, named by errors.
    """

    def __init__(self, model: torch.nn.Module, utt2subset: Optional[Dict[str, str]] = None,
                 source: str | os.PathLike = "utt2subset"):
        self.model = model
        self.utt2subset = utt2subset
        self.source = source
        self.audio: List[torch.Tensor] = []
        self.audio_image: List[torch.Tensor] = []
        self.utts: List[str] = []  # with a subset map: the utterance of every kept audio row
        self.images: Dict[int, torch.Tensor] = {}

    def tap(self, iterator: Iterable) -> Iterator:
        """Yield ESPnet's ``(utt_id, batch)`` unchanged, encoding each batch on the way."""
        for utt_id, batch in iterator:
            self.add(batch, utt_id)
            yield utt_id, batch

    @torch.no_grad()
    def add(self, batch: Dict[str, torch.Tensor], utt_ids: Optional[Sequence[str]] = None) -> None:
        keys = _image_inputs(batch)
        if keys is None or "image_id" not in batch:
            return
        if self.utt2subset is not None:
            if utt_ids is None:
                raise ValueError("RetrievalTap: scoring by subset needs the batch's utterance ids")
            unknown = [u for u in utt_ids if u not in self.utt2subset]
            if unknown:
                raise FileProblem(self.source, f"no subset for validation utterance {unknown[0]!r}")
        was_training = self.model.training
        self.model.eval()
        try:
            device = next(self.model.parameters()).device
            ids = batch["image_id"].view(-1).long().cpu()
            audio = self.model.encode_audio(batch["speech"].to(device), batch["speech_lengths"].to(device))
            self.audio.append(audio.coarse.float().cpu())
            self.audio_image.append(ids)
            if self.utt2subset is not None:
                self.utts.extend(utt_ids)
            new = [row for row, i in enumerate(ids.tolist()) if i not in self.images]
            if new:
                rows = torch.tensor(new)
                image = self.model.encode_image(*(batch[k][rows].to(device) for k in keys))
                for row, vec in zip(new, image.coarse.float().cpu()):
                    self.images.setdefault(int(ids[row]), vec)
        finally:
            self.model.train(was_training)

    def _gather(self):
        audio = torch.cat(self.audio) if self.audio else torch.zeros(0)
        targets = torch.cat(self.audio_image) if self.audio_image else torch.zeros(0, dtype=torch.long)
        images, utts = dict(self.images), list(self.utts)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Each rank saw a shard of the split; score the whole split on every rank. The utterance
            # ids travel with their rows, so every rank labels the gathered rows with the same subsets.
            parts: List = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, (audio, targets, images, utts))
            audio = torch.cat([p[0] for p in parts if p[0].numel()])
            targets = torch.cat([p[1] for p in parts])
            images = {k: v for p in parts for k, v in p[2].items()}
            utts = [u for p in parts for u in p[3]]
        return audio, targets, images, utts

    def _recalls(self, audio, targets, images, ks):
        ids = sorted(images)
        column = {image_id: j for j, image_id in enumerate(ids)}
        image = torch.stack([images[i] for i in ids])
        scores = self.model.coarse_scores(audio, image)
        return recall_at_k(scores, torch.tensor([column[int(i)] for i in targets]), ks=ks)

    def stats(self, ks: Tuple[int, ...] = (1, 5, 10)) -> Dict[str, float]:
        """``retrieval_r1`` (mean R@1 of both directions) and ``r{k}_a2i`` / ``r{k}_i2a``, in percent;
        with a subset map also ``<subset>_r1`` / ``<subset>_r{k}_{a2i,i2a}`` and the above as their means."""
        audio, targets, images, utts = self._gather()
        if not len(images) or not audio.numel():
            return {}
        if self.utt2subset is None:
            recalls = self._recalls(audio, targets, images, ks)
            out = {STAT: (recalls["A2I"][1] + recalls["I2A"][1]) / 2}
            for k in ks:
                out[f"r{k}_a2i"] = recalls["A2I"][k]
                out[f"r{k}_i2a"] = recalls["I2A"][k]
            return out
        check_utt2subset(self.source, self.utt2subset, utts)
        labels = [self.utt2subset[u] for u in utts]
        out: Dict[str, float] = {}
        names = sorted(set(labels))
        for name in names:
            rows = torch.tensor([i for i, label in enumerate(labels) if label == name])
            sub_targets = targets[rows]
            gallery = {int(i): images[int(i)] for i in sub_targets.unique()}  # the subset's own images
            recalls = self._recalls(audio[rows], sub_targets, gallery, ks)
            out[f"{name}_r1"] = (recalls["A2I"][1] + recalls["I2A"][1]) / 2
            for k in ks:
                out[f"{name}_r{k}_a2i"] = recalls["A2I"][k]
                out[f"{name}_r{k}_i2a"] = recalls["I2A"][k]
        out[STAT] = sum(out[f"{n}_r1"] for n in names) / len(names)
        for k in ks:
            for d in ("a2i", "i2a"):
                out[f"r{k}_{d}"] = sum(out[f"{n}_r{k}_{d}"] for n in names) / len(names)
        return out


__all__ = ["RetrievalTap", "STAT", "read_utt2subset", "check_utt2subset"]
