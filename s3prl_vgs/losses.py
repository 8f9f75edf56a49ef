"""Contrastive and reconstruction losses of FaST-VGS and speech-guided MIM.

Pure torch. Score matrices are (B, B) with audio i as row i and image j as
column j; matched pairs sit on the diagonal.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import distributed


def same_image_mask(image_ids: Sequence) -> torch.Tensor:
    """(B, B) bool, True where caption i and image j share an image id."""
    index = {}
    codes = torch.tensor([index.setdefault(i, len(index)) for i in image_ids])
    return codes[:, None] == codes[None, :]


def fp32(fn):
    """Run a loss in float32 with autocast off (the inputs are cast up).

    Under mixed precision (ESPnet's ``--use_amp``) the encoders run in fp16 or
    bf16, but a softmax over B or B_global scores and a mean of squared errors
    lose too much in half precision (bf16 keeps 8 bits of mantissa), so every
    loss here computes in fp32 and returns an fp32 scalar.
    """

    def up(x):
        return x.float() if torch.is_tensor(x) and x.is_floating_point() else x

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})

    return wrapper


def image_id_codes(image_ids, device=None) -> torch.Tensor:
    """(B,) int64 codes of image ids that agree across processes.

    Integer ids (a tensor or ints) are kept; any other id is hashed (BLAKE2b,
    64 bits) from its string, so every DDP rank gives one image one code
    without sharing a vocabulary.
    """
    if torch.is_tensor(image_ids):
        if image_ids.dtype.is_floating_point or image_ids.dtype == torch.bool:
            raise ValueError(f"image_ids must be integers or strings, got a {image_ids.dtype} tensor")
        return image_ids.reshape(-1).to(device=device, dtype=torch.long)
    ids = list(image_ids)
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return torch.tensor(ids, dtype=torch.long, device=device)
    codes = [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little", signed=True) for i in ids]
    return torch.tensor(codes, dtype=torch.long, device=device)


def global_same_image_mask(batch_size: int, image_ids=None, same_image: Optional[torch.Tensor] = None,
                           device=None) -> Optional[torch.Tensor]:
    """(B_global, B_global) same-image mask of the whole DDP batch (B x B without DDP).

    Args:
        batch_size: this rank's B.
        image_ids: (B,) this rank's image ids (ints or strings; see :func:`image_id_codes`).
        same_image: or a (B, B) bool mask, accepted only in a single process
            (it cannot say whether two ranks hold the same image).

    Returns:
        None when neither is given (every off-diagonal pair is a negative).
    """
    if image_ids is not None and same_image is not None:
        raise ValueError("give image_ids or same_image, not both")
    if same_image is not None:
        if distributed.is_distributed():
            raise ValueError("under DDP give image_ids, not a same_image mask: a (B, B) mask of one rank "
                             "cannot mark captions of the same image held by another rank")
        if same_image.shape != (batch_size, batch_size):
            raise ValueError(f"same_image must be ({batch_size}, {batch_size}), got {tuple(same_image.shape)}")
        return same_image.to(device) if device is not None else same_image
    if image_ids is None:
        return None
    if len(image_ids) != batch_size:
        raise ValueError(f"image_ids has {len(image_ids)} entries for a batch of {batch_size}")
    codes = distributed.all_gather(image_id_codes(image_ids, device))
    return codes[:, None] == codes[None, :]


def _symmetric_ce(scores: torch.Tensor, same_image: Optional[torch.Tensor]) -> torch.Tensor:
    """CE(rows) + CE(columns) against the diagonal, other same-image pairs dropped."""
    B = scores.size(0)
    if scores.dim() != 2 or scores.size(1) != B:
        raise ValueError(f"scores must be a square (B, B) matrix, got {tuple(scores.shape)}")
    if same_image is not None:
        if same_image.shape != scores.shape:
            raise ValueError(f"same_image {tuple(same_image.shape)} does not match scores {tuple(scores.shape)}")
        eye = torch.eye(B, dtype=torch.bool, device=scores.device)
        # NOTE(original): the official code adds -1e4 to these entries; -inf removes
        # them exactly and stays finite in fp16 because the diagonal is always kept.
        scores = scores.masked_fill(same_image.to(scores.device) & ~eye, float("-inf"))
    target = torch.arange(B, device=scores.device)
    return F.cross_entropy(scores, target) + F.cross_entropy(scores.t(), target)


@fp32
def masked_margin_softmax_loss(
    scores: torch.Tensor, same_image: Optional[torch.Tensor] = None, margin: float = 1.0
) -> torch.Tensor:
    """Masked margin softmax loss (FaST-VGS Eq. 1, ``Margin_InfoNCE_loss`` officially).

    Subtracts ``margin`` from the matched (diagonal) scores, removes the other
    captions of the same image from both softmaxes, and returns the audio->image
    plus image->audio cross-entropy, each a batch mean. No temperature and no L2
    normalisation, as in the official code.

    Args:
        scores: (B, B) similarities, audio i in row i, image j in column j.
        same_image: optional (B, B) bool, True where audio i describes image j.
        margin: delta subtracted on the diagonal.
    """
    if scores.dim() != 2 or scores.size(0) != scores.size(1):
        raise ValueError(f"scores must be a square (B, B) matrix, got {tuple(scores.shape)}")
    B = scores.size(0)
    eye = torch.eye(B, dtype=scores.dtype, device=scores.device)
    return _symmetric_ce(scores - margin * eye, same_image)


@fp32
def info_nce_loss(
    scores: torch.Tensor, same_image: Optional[torch.Tensor] = None, temperature: float = 1.0
) -> torch.Tensor:
    """InfoNCE in both directions (speech-guided MIM Eq. 2): L_I + L_A.

    The paper scores with a plain inner product (``temperature=1``); other
    temperatures divide the scores first.
    """
    return _symmetric_ce(scores / temperature, same_image)


@fp32
def mim_regression_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared L2 error over masked patches (speech-guided MIM Eq. 4).

    The paper writes Eq. 4 with a leading minus; minimising that would push
    predictions away from the target, so the error is returned positive.

    Args:
        pred: (B, N, D) decoder predictions for every patch.
        target: (B, N, D) momentum-encoder features (no gradient is taken).
        mask: (B, N) bool or {0,1}, 1 at masked patches.
    """
    mask = mask.to(pred.dtype)
    n = mask.sum()
    if n == 0:
        raise ValueError("mim_regression_loss: no masked patch in the batch")
    err = (pred - target.detach()).pow(2).sum(-1)  # (B, N)
    return (err * mask).sum() / n


__all__ = ["fp32", "masked_margin_softmax_loss", "info_nce_loss", "mim_regression_loss", "same_image_mask", "image_id_codes",
           "global_same_image_mask"]
