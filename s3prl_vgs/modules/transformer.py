"""BERT-style attention blocks (post-LN), named as in the LXMERT / FaST-VGS code.

Parameter names follow the official FaST-VGS ``models/utils.py`` so that its
checkpoints map key for key: a ``BertLayer`` holds
``attention.{self.{query,key,value}, output.{dense,LayerNorm}}``,
``intermediate.dense`` and ``output.{dense,LayerNorm}``; a cross-attention
layer holds ``att.{query,key,value}`` and ``output.{dense,LayerNorm}``.

Masks: ``padding_mask`` is bool (B, T), True at pad. The attention layers take
the *additive* form ``(B, 1, 1, T)`` built by :func:`additive_mask`.

Besides the plain forward, :class:`BertAttention` exposes the pieces that exact
fast paths need: projecting queries and keys/values separately (so they can be
computed once per item and gathered per pair) and attending from the first
(CLS) position only, without projecting the keys and values of every position.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

BERT_LAYER_NORM_EPS = 1e-12
MASK_VALUE = -10000.0


def additive_mask(padding_mask: Optional[torch.Tensor], dtype: torch.dtype = torch.float32) -> Optional[torch.Tensor]:
    """(B, T) bool, True at pad -> (B, 1, 1, T) additive mask (0 or -10000).

    NOTE(original): BERT/LXMERT add ``mask * -10000.0`` instead of -inf.
    """
    if padding_mask is None:
        return None
    return padding_mask[:, None, None, :].to(dtype) * MASK_VALUE


class BertAttention(nn.Module):
    """Multi-head scaled dot-product attention: Q from ``hidden``, K/V from ``context``.

    This is the bare attention of LXMERT's ``BertAttention``: it returns the
    concatenated per-head context, with no output projection, residual or norm.

    Args:
        hidden_size: model width D (queries and output).
        num_heads: H, D must be divisible by it.
        attention_dropout: dropout on the attention probabilities.
        ctx_dim: width of the context (keys/values) if it differs from D.
    """

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float = 0.1, ctx_dim: Optional[int] = None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        ctx_dim = ctx_dim or hidden_size
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(ctx_dim, hidden_size)
        self.value = nn.Linear(ctx_dim, hidden_size)
        self.attention_dropout = attention_dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, D) -> (B, H, T, Dh)
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        # (B, H, T, Dh) -> (B, T, D)
        B, H, T, Dh = x.shape
        return x.transpose(1, 2).reshape(B, T, H * Dh)

    def project_query(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, Tq, D) -> (B, H, Tq, Dh)."""
        return self.split_heads(self.query(hidden))

    def project_key_value(self, context: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, Tk, Dc) -> keys and values, each (B, H, Tk, Dh)."""
        return self.split_heads(self.key(context)), self.split_heads(self.value(context))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """softmax(q k^T / sqrt(Dh) + mask) v for projected heads; returns (B, Tq, D).

        torch's fused SDPA (flash kernel on CPU: the softmax is accumulated in
        fp32, also for bf16 inputs); the same maths as the explicit
        ``need_weights`` path of :meth:`forward`, which stays as the reference.
        """
        if attention_mask is not None:
            attention_mask = attention_mask.to(q.dtype)
        p = self.attention_dropout if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=p)
        return self.merge_heads(ctx)

    def forward(
        self,
        hidden: torch.Tensor,
        context: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        need_weights: bool = False,
    ):
        """Attention of ``hidden`` (B, Tq, D) over ``context`` (B, Tk, Dc), default itself.

        Args:
            attention_mask: additive (B, 1, 1, Tk) or (B, 1, Tq, Tk), see :func:`additive_mask`.
            need_weights: also return the (B, H, Tq, Tk) probabilities (before dropout).

        Returns:
            (B, Tq, D) context, or ``(context, probs)`` when ``need_weights``.
        """
        context = hidden if context is None else context
        q = self.project_query(hidden)
        k, v = self.project_key_value(context)
        if not need_weights:
            return self.attend(q, k, v, attention_mask)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)
        if attention_mask is not None:
            scores = scores + attention_mask.to(scores.dtype)
        probs = scores.float().softmax(-1)  # fp32 softmax, also under a bf16 autocast
        dropped = F.dropout(probs, self.attention_dropout, self.training).to(v.dtype)
        return self.merge_heads(dropped @ v), probs

    def forward_folded(self, hidden: torch.Tensor, context: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``forward(hidden, context, mask)`` without projecting the context's keys and values.

        Per head, ``q . (W_k c_t + b_k) = (W_k^T q) . c_t + q . b_k`` and
        ``sum_t p_t (W_v c_t + b_v) = W_v (sum_t p_t c_t) + b_v sum_t p_t``. The
        cost is O(Tq D^2 + H Tq Tk D) instead of O((Tq + Tk) D^2), a saving when
        there are far fewer queries than keys (one CLS query, for example).

        Args:
            hidden: (B, Tq, D) queries; context: (B, Tk, Dc); attention_mask: additive (B, 1, 1, Tk) or None.

        Returns:
            (B, Tq, D).
        """
        B, Tq, _ = hidden.shape
        Tk = context.size(1)
        H, Dh = self.num_heads, self.head_dim
        q = self.query(hidden).view(B, Tq, H, Dh)
        q_tilde = torch.einsum("bqhd,hde->bhqe", q, self.key.weight.view(H, Dh, -1))  # (B, H, Tq, Dc)
        # q . b_k is the same for every key, so it cancels in the softmax; it is kept so
        # that b_k stays in the graph, as in the plain computation.
        q_bias = (q * self.key.bias.view(1, 1, H, Dh)).sum(-1).transpose(1, 2).reshape(B, H * Tq, 1)
        scores = torch.baddbmm(q_bias, q_tilde.reshape(B, H * Tq, -1), context.transpose(1, 2))  # (B, H*Tq, Tk)
        scores = scores.view(B, H, Tq, Tk) / math.sqrt(Dh)
        if attention_mask is not None:
            scores = scores + attention_mask.to(scores.dtype)
        probs = F.dropout(scores.float().softmax(-1), self.attention_dropout, self.training)  # (B, H, Tq, Tk), fp32 softmax
        pooled = torch.bmm(probs.reshape(B, H * Tq, Tk).to(context.dtype), context).view(B, H, Tq, -1)  # (B, H, Tq, Dc)
        ctx = torch.einsum("bhqe,hde->bqhd", pooled, self.value.weight.view(H, Dh, -1))  # (B, Tq, H, Dh)
        # sum_t p_t is 1 without dropout; with dropout it is the kept mass.
        ctx = ctx + self.value.bias.view(1, 1, H, Dh) * probs.sum(-1).transpose(1, 2)[..., None]
        return ctx.reshape(B, Tq, H * Dh)

    def forward_first_query(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Self-attention output at position 0 only: ``forward(x, x, mask)[:, 0]`` as (B, D).

        Uses :meth:`forward_folded`, so the keys and values of the other positions
        are never projected: O(D^2 + H T D) per item instead of O(T D^2).
        """
        return self.forward_folded(x[:, :1], x, attention_mask)[:, 0]


class BertAttOutput(nn.Module):
    """``LayerNorm(dropout(dense(h)) + input)`` after an attention."""

    def __init__(self, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=BERT_LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + input_tensor)


class BertSelfattLayer(nn.Module):
    """Self-attention + output block (official key prefix ``attention.``)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.1, attention_dropout: float = 0.1):
        super().__init__()
        self.self = BertAttention(hidden_size, num_heads, attention_dropout)
        self.output = BertAttOutput(hidden_size, dropout)

    def forward(self, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.output(self.self(hidden, hidden, attention_mask), hidden)


class BertCrossattLayer(nn.Module):
    """Cross-attention + output block: queries from ``hidden``, keys/values from ``context``."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.1, attention_dropout: float = 0.1,
                 ctx_dim: Optional[int] = None):
        super().__init__()
        self.att = BertAttention(hidden_size, num_heads, attention_dropout, ctx_dim=ctx_dim)
        self.output = BertAttOutput(hidden_size, dropout)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.output(self.att(hidden, context, context_mask), hidden)


class BertIntermediate(nn.Module):
    """Linear D -> F + erf-GELU."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.act = nn.GELU()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden))


class BertOutput(nn.Module):
    """``LayerNorm(dropout(dense(h)) + input)``, Linear F -> D."""

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float = 0.1):
        super().__init__()
        self.dense = nn.Linear(intermediate_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=BERT_LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + input_tensor)


class BertLayer(nn.Module):
    """One post-LN BERT layer: self-attention block, then the feed-forward block."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, dropout: float = 0.1,
                 attention_dropout: float = 0.1):
        super().__init__()
        self.attention = BertSelfattLayer(hidden_size, num_heads, dropout, attention_dropout)
        self.intermediate = BertIntermediate(hidden_size, intermediate_size)
        self.output = BertOutput(hidden_size, intermediate_size, dropout)

    def forward(self, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T, D), additive mask (B, 1, 1, T) or None -> (B, T, D)."""
        x = self.attention(hidden, attention_mask)
        return self.output(self.intermediate(x), x)


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT init: Linear/Embedding ~ N(0, std), biases 0, LayerNorm (1, 0). Use with ``apply``."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


__all__ = [
    "BERT_LAYER_NORM_EPS",
    "MASK_VALUE",
    "additive_mask",
    "BertAttention",
    "BertAttOutput",
    "BertSelfattLayer",
    "BertCrossattLayer",
    "BertIntermediate",
    "BertOutput",
    "BertLayer",
    "init_bert_weights",
]
