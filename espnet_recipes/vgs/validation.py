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

This is the same computation as ``vgs-evaluate``'s coarse method on the same
data dir (``tests/integration/test_retrieval_selection.py`` checks it); for
FaST-VGS the statistic is coarse retrieval (the fine scorer over a whole split
would cost far more than an epoch of the demo).
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from s3prl_vgs.retrieval import recall_at_k

STAT = "retrieval_r1"  # the best_model_criterion key


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
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.audio: List[torch.Tensor] = []
        self.audio_image: List[torch.Tensor] = []
        self.images: Dict[int, torch.Tensor] = {}

    def tap(self, iterator: Iterable) -> Iterator:
        """Yield ESPnet's ``(utt_id, batch)`` unchanged, encoding each batch on the way."""
        for utt_id, batch in iterator:
            self.add(batch)
            yield utt_id, batch

    @torch.no_grad()
    def add(self, batch: Dict[str, torch.Tensor]) -> None:
        keys = _image_inputs(batch)
        if keys is None or "image_id" not in batch:
            return
        was_training = self.model.training
        self.model.eval()
        try:
            device = next(self.model.parameters()).device
            ids = batch["image_id"].view(-1).long().cpu()
            audio = self.model.encode_audio(batch["speech"].to(device), batch["speech_lengths"].to(device))
            self.audio.append(audio.coarse.float().cpu())
            self.audio_image.append(ids)
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
        images = dict(self.images)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Each rank saw a shard of the split; score the whole split on every rank.
            parts: List = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, (audio, targets, images))
            audio = torch.cat([p[0] for p in parts if p[0].numel()])
            targets = torch.cat([p[1] for p in parts])
            images = {k: v for p in parts for k, v in p[2].items()}
        return audio, targets, images

    def stats(self, ks: Tuple[int, ...] = (1, 5, 10)) -> Dict[str, float]:
        """``retrieval_r1`` (mean R@1 of both directions) and ``r{k}_a2i`` / ``r{k}_i2a``, in percent."""
        audio, targets, images = self._gather()
        if not len(images) or not audio.numel():
            return {}
        ids = sorted(images)
        column = {image_id: j for j, image_id in enumerate(ids)}
        image = torch.stack([images[i] for i in ids])
        scores = self.model.coarse_scores(audio, image)
        recalls = recall_at_k(scores, torch.tensor([column[int(i)] for i in targets]), ks=ks)
        out = {STAT: (recalls["A2I"][1] + recalls["I2A"][1]) / 2}
        for k in ks:
            out[f"r{k}_a2i"] = recalls["A2I"][k]
            out[f"r{k}_i2a"] = recalls["I2A"][k]
        return out


__all__ = ["RetrievalTap", "STAT"]
