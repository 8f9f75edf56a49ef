"""Global-batch helpers for contrastive losses under torch.distributed (DDP).

Under DDP every rank holds ``B_r`` of the ``B_global = sum_r B_r`` items of a
step. Contrastive losses want every other item of the global batch as a
negative, so the embeddings are all-gathered (:func:`all_gather`) and every
rank computes the *same* global loss ``L``.

Gradients. :func:`all_gather` is differentiable: its backward all-reduces
(sums) the gradient of the gathered tensor and hands each rank the rows of
its own items, which is the exact gradient of ``sum_r c_r * L_r`` (``L_r``
being rank r's copy of ``L`` and ``c_r`` the factor rank r backpropagates
with). The parameter gradients of all ranks thus sum to ``(sum_r c_r) * dL``.
ESPnet's trainer backpropagates ``c_r = B_r * N / B_global`` times the
returned loss (its weighted average times the world size N, because DDP
averages gradients), so ``sum_r c_r = N`` and DDP's average is exactly the
single-process gradient of ``L`` on the global batch, with no extra factor:
a model returns the global loss itself. (open_clip's ``gather_features``
with ``gather_with_grad=False`` instead keeps only the local rows
differentiable and needs the loss multiplied by N.) Per-item terms that are
not gathered (the MIM regression) stay local: ESPnet's ``B_r``-weighted
average of them is their global-batch mean.

Without an initialised process group (or with one process) every function
is the identity, so single-process code is unchanged.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _all_shapes(x: torch.Tensor) -> List[Tuple[int, ...]]:
    """Every rank's shape of ``x`` (ranks may differ in every dimension, not in rank)."""
    shape = torch.tensor(x.shape, dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    return [tuple(int(n) for n in s) for s in shapes]


def _pad_to(x: torch.Tensor, shape: Tuple[int, ...], value) -> torch.Tensor:
    if tuple(x.shape) == tuple(shape):
        return x
    out = x.new_full(shape, value)
    out[tuple(slice(0, n) for n in x.shape)] = x
    return out


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's ``x`` along dim 0, the other dims padded to the largest."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pad_value) -> torch.Tensor:
        shapes = _all_shapes(x)
        full = tuple(max(s[d] for s in shapes) for d in range(x.dim()))
        padded = _pad_to(x.contiguous(), full, pad_value)
        parts = [torch.empty_like(padded) for _ in shapes]
        dist.all_gather(parts, padded)
        out_shape = (sum(s[0] for s in shapes),) + full[1:]
        out = torch.cat([p[: s[0]] for p, s in zip(parts, shapes)], dim=0)
        ctx.local_shape = tuple(x.shape)
        ctx.offset = sum(s[0] for s in shapes[: dist.get_rank()])
        assert tuple(out.shape) == out_shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank's loss may depend on every rank's items: sum the gradients, keep our rows.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        rows = grad[ctx.offset: ctx.offset + ctx.local_shape[0]]
        return rows[(slice(None),) + tuple(slice(0, n) for n in ctx.local_shape[1:])], None


def all_gather(x: torch.Tensor, pad_value=0) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order, gradients flowing back to each owner.

    Ranks may hold different numbers of rows and different sizes along the
    other dimensions (e.g. token sequences of different lengths): those are
    padded with ``pad_value`` to the largest (pass ``True`` for padding
    masks). A tensor without gradient (ids, masks) is gathered the same way.

    Args:
        x: (B_r, ...) this rank's tensor.
        pad_value: fill of the padding along dims >= 1.

    Returns:
        (B_global, ...) ; ``x`` itself when not distributed.
    """
    if x.dim() == 0:
        raise ValueError("all_gather needs a tensor with a batch dimension, got a 0-dim tensor")
    if not is_distributed():
        return x
    if not x.requires_grad:
        with torch.no_grad():
            return _AllGather.apply(x, pad_value)
    return _AllGather.apply(x, pad_value)


def batch_offset(batch_size: int, device=None) -> Tuple[int, int]:
    """(first global row of this rank's items, B_global) for a local batch of ``batch_size``."""
    if not is_distributed():
        return 0, batch_size
    sizes = all_gather(torch.tensor([batch_size], dtype=torch.long, device=device)).tolist()
    return sum(sizes[: rank()]), sum(sizes)


__all__ = ["is_distributed", "world_size", "rank", "all_gather", "batch_offset"]
