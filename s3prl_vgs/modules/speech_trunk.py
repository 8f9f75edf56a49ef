"""Speech trunk: a wav2vec2 / HuBERT conv + transformer stack with a CLS token.

Both models start from a self-supervised speech model and add a learnable CLS
token to its transformer (FaST-VGS: wav2vec2, first 8 layers; VG-HuBERT and
speech-guided MIM: HuBERT, 12 layers). We build the stack from
``transformers`` modules and run the encoder layers ourselves, because the CLS
must enter between the positional convolution and the layers, which the HF
forward cannot do.

Where the CLS enters differs between the official code bases and is kept:
``before_pos_conv`` (FaST-VGS: the CLS is part of the positional convolution's
input) and ``after_pos_conv`` (VG-HuBERT).

Padding. The official code normalises the first conv block's GroupNorm over
the whole padded length and feeds padded frames to the positional conv, so its
outputs depend on how much padding a batch has. Our default path makes a
padded utterance compute exactly what it computes alone: the GroupNorm takes
its statistics over valid frames only, padded frames are zeroed before the
positional conv, and a frame is valid when its whole receptive field is
(the conv-length rule). ``official_compat=True`` restores the official
behaviour for converted checkpoints (see ``reference/official-code.md`` 7.2).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigBase
from ..data.audio import normalize_waveform

# ----------------------------------------------------------------------------- config


@dataclass
class SpeechTrunkConfig(ConfigBase):
    """Sizes and behaviour of the speech trunk; defaults are wav2vec2 base."""

    backbone: str = "wav2vec2"  # "wav2vec2" | "hubert"
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    num_layers: int = 8  # transformer layers kept (the first N)
    conv_dim: Tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: Tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: Tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    cls_position: str = "before_pos_conv"  # FaST-VGS; "after_pos_conv" = VG-HuBERT
    normalize_waveform: bool = True  # FaST-VGS; HuBERT models see the raw waveform
    freeze_conv: bool = True
    reinit_last: int = 0  # re-initialise the last N kept layers (VG-HuBERT: 3)
    pretrained: Optional[str] = None  # HF hub name or local dir; None = random init
    # A conv-only warm start (``vgs-pretrain-conv``): a packaged name or a .safetensors path,
    # loaded into the conv feature encoder after ``pretrained``. The demo's stand-in for the
    # pretrained conv the papers freeze, since no pretrained weights can be fetched.
    conv_init: Optional[str] = None
    # Memoise the frozen conv's output per waveform, up to this many MB (0 = off). Training
    # sees every caption several times and validation the same captions every epoch; with a
    # frozen conv their conv features never change, so each is computed once (ConvFeatureCache).
    conv_cache_mb: float = 0.0
    official_compat: bool = False

    def __post_init__(self):
        self._check(self.backbone in ("wav2vec2", "hubert"), f"backbone must be wav2vec2 or hubert, got {self.backbone!r}")
        self._check(self.cls_position in ("before_pos_conv", "after_pos_conv"), f"bad cls_position {self.cls_position!r}")
        self._check(len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride), "conv_dim, conv_kernel and conv_stride must have the same length")
        self._check(self.hidden_size % self.num_heads == 0, f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        self._check(self.hidden_size % self.num_conv_pos_embedding_groups == 0, "hidden_size must be divisible by num_conv_pos_embedding_groups")
        self._check(self.num_layers >= 1, "num_layers must be >= 1")
        self._check(0 <= self.reinit_last <= self.num_layers, "reinit_last must be in [0, num_layers]")
        self._check(self.conv_cache_mb >= 0, f"conv_cache_mb must be >= 0 (0 = off), got {self.conv_cache_mb}")
        self._check(self.conv_cache_mb == 0 or (self.freeze_conv and not self.official_compat),
                    "conv_cache_mb needs freeze_conv (a trained conv changes its output every step) and not "
                    "official_compat (whose GroupNorm depends on the batch's padding)")

    @property
    def downsample_rate(self) -> int:
        return math.prod(self.conv_stride)

    def hf_config(self):
        """The transformers config that builds these modules."""
        from transformers import HubertConfig, Wav2Vec2Config

        cls = Wav2Vec2Config if self.backbone == "wav2vec2" else HubertConfig
        kwargs = dict(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_act="gelu",
            hidden_dropout=self.dropout,
            activation_dropout=0.0,
            attention_dropout=self.attention_dropout,
            feat_proj_dropout=self.dropout,
            layerdrop=0.0,
            layer_norm_eps=self.layer_norm_eps,
            feat_extract_norm="group",
            feat_extract_activation="gelu",
            conv_dim=list(self.conv_dim),
            conv_stride=list(self.conv_stride),
            conv_kernel=list(self.conv_kernel),
            conv_bias=False,
            num_conv_pos_embeddings=self.num_conv_pos_embeddings,
            num_conv_pos_embedding_groups=self.num_conv_pos_embedding_groups,
            do_stable_layer_norm=False,
            apply_spec_augment=False,
            attn_implementation="sdpa",
        )
        if self.backbone == "hubert":
            kwargs["feat_proj_layer_norm"] = True
        return cls(**kwargs)


# ----------------------------------------------------------------------------- conv cache


class ConvFeatureCache:
    """LRU memo of a frozen conv feature encoder's output, keyed by waveform content.

    A key is a BLAKE2b digest of one utterance's valid samples (as the conv sees
    them, after waveform normalisation), so any caller (ESPnet's trainer, a
    random crop, evaluation) hits the cache without passing utterance ids, and a
    changed waveform can never return stale features. On the default padding
    path an utterance's valid conv frames do not depend on its batch (masked
    GroupNorm, padding cut), so a hit equals the uncached computation. The
    whole cache is dropped when the conv's parameters change (a
    ``load_state_dict``, ``.to``, or an optimizer step on an unfrozen conv).
    """

    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self.entries: "OrderedDict[bytes, torch.Tensor]" = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        self._params_key = None

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    @staticmethod
    def key(wav: torch.Tensor) -> bytes:
        x = wav.detach()
        x = x.cpu() if x.device.type != "cpu" else x
        return hashlib.blake2b(x.contiguous().numpy().tobytes(), digest_size=16,
                               person=str(x.dtype).encode()[:16]).digest()

    def features(self, conv: nn.Module, wavs: torch.Tensor, lengths: torch.Tensor, n_valid: torch.Tensor,
                 compute) -> torch.Tensor:
        """(B, T, C) features of padded ``wavs``: cached rows reused, the others computed as one batch.

        ``compute(wavs, lengths)`` is the uncached conv; ``n_valid`` the valid frames per row. Padded
        frames are zero (the uncached path leaves values there that the trunk masks out).
        """
        params_key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in conv.parameters())
        if params_key != self._params_key:
            self.clear()
            self._params_key = params_key
        keys = [self.key(wavs[i, : int(lengths[i])]) for i in range(wavs.size(0))]
        miss = [i for i, k in enumerate(keys) if k not in self.entries]
        self.hits += len(keys) - len(miss)
        self.misses += len(miss)
        if miss:
            idx = torch.tensor(miss, device=wavs.device)
            sub_len = lengths[idx]
            sub = compute(wavs[idx, : int(sub_len.max())], sub_len)
            for j, i in enumerate(miss):
                if keys[i] not in self.entries:  # the same waveform twice in one batch
                    self._put(keys[i], sub[j, : int(n_valid[i])].detach().clone())
        rows = [self.entries[k] for k in keys]
        for k in keys:
            self.entries.move_to_end(k)
        T = int(conv_output_lengths(torch.tensor([wavs.size(1)]), *self._conv_shape(conv))[0])
        out = rows[0].new_zeros(len(rows), T, rows[0].size(-1))
        for i, r in enumerate(rows):
            out[i, : r.size(0)] = r
        self._evict()
        return out

    @staticmethod
    def _conv_shape(conv: nn.Module):
        layers = conv.conv_layers
        return [layer.conv.kernel_size[0] for layer in layers], [layer.conv.stride[0] for layer in layers]

    def _put(self, key: bytes, value: torch.Tensor) -> None:
        self.entries[key] = value
        self.bytes += value.numel() * value.element_size()

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            _, value = self.entries.popitem(last=False)
            self.bytes -= value.numel() * value.element_size()


# ----------------------------------------------------------------------------- output


@dataclass
class SpeechTrunkOutput:
    """What the trunk returns. T = frames (20 ms), D = hidden size, H = heads."""

    cls: torch.Tensor  # (B, D) CLS after the last kept layer
    frames: torch.Tensor  # (B, T, D) last layer, CLS removed
    padding_mask: torch.Tensor  # (B, T) bool, True at padded frames
    hidden_states: Tuple[torch.Tensor, ...] = ()  # L+1 x (B, T, D): projected conv features, then each layer
    cls_hidden_states: Tuple[torch.Tensor, ...] = ()  # L+1 x (B, D)
    attentions: Optional[torch.Tensor] = None  # (B, H, 1+T, 1+T) of the requested layer; row/col 0 = CLS

    @property
    def frame_lengths(self) -> torch.Tensor:
        return (~self.padding_mask).sum(-1)


# ----------------------------------------------------------------------------- helpers


def conv_output_lengths(lengths: torch.Tensor, kernels, strides) -> torch.Tensor:
    """Frames whose receptive field lies inside the first ``lengths`` samples."""
    lengths = lengths.clone()
    for k, s in zip(kernels, strides):
        lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def official_frame_lengths(lengths: torch.Tensor, num_samples: int, num_frames: int) -> torch.Tensor:
    """Valid frames under the official sample-chunk rule.

    NOTE(original): fairseq drops the last ``L % T`` samples, views the sample
    mask as ``(B, T, L // T)`` chunks and calls a frame padded only when its
    whole chunk is padding, so ``ceil(length / (L // T))`` frames are valid.
    """
    chunk = num_samples // num_frames
    return torch.clamp(torch.div(lengths + chunk - 1, chunk, rounding_mode="floor"), max=num_frames)


def lengths_to_padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool, True at positions >= length."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, lengths: torch.Tensor) -> torch.Tensor:
    """Per-channel GroupNorm (groups == channels) with statistics over valid frames only.

    x: (B, C, T); lengths: (B,) valid frames. Row i is normalised with the mean
    and population variance of ``x[i, :, :lengths[i]]``, exactly what
    ``nn.GroupNorm`` computes on that row alone; padded frames get the same
    affine map (their values are never used for valid frames downstream).

    Fast: a batch without padding is one native ``F.group_norm``; otherwise one
    fused Welford reduction (``var_mean``) per row over its valid slice (a
    view, no copy) and one fused affine pass ``x * scale + shift``, the form
    the native GroupNorm kernel applies. The earlier masked version made
    ~8 full-size temporaries (0.55 s against 0.06 s on (8, 512, 9599)).
    """
    if norm.num_groups != norm.num_channels:
        raise ValueError("masked_group_norm expects one group per channel (wav2vec2 'group' norm)")
    B, C, T = x.shape
    n = lengths.clamp(0, T).tolist()
    if all(v == T for v in n):
        return F.group_norm(x, C, norm.weight, norm.bias, norm.eps)
    mean = x.new_zeros(B, C)
    var = x.new_zeros(B, C)
    for i, v in enumerate(n):  # B small reductions; the old code did the same work as 4 full passes
        if v > 0:
            var[i], mean[i] = torch.var_mean(x[i, :, :v], dim=-1, correction=0)
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return torch.addcmul(shift[..., None], x, scale[..., None])


def padding_to_additive(padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) bool -> (B, 1, 1, S) additive attention mask (0 or dtype min)."""
    return padding_mask[:, None, None, :].to(dtype) * torch.finfo(dtype).min


# ----------------------------------------------------------------------------- module


class SpeechTrunk(nn.Module):
    """wav2vec2/HuBERT conv feature encoder + CLS + the first ``num_layers`` layers."""

    def __init__(self, config: SpeechTrunkConfig):
        super().__init__()
        self.config = config
        hf = self._build_hf_model(config)
        self.feature_extractor = hf.feature_extractor
        self.feature_projection = hf.feature_projection
        self.pos_conv_embed = hf.encoder.pos_conv_embed
        self.layer_norm = hf.encoder.layer_norm
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(list(hf.encoder.layers)[: config.num_layers])
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        for layer in list(self.layers)[config.num_layers - config.reinit_last:]:
            layer.apply(hf._init_weights)
        if config.conv_init is not None:
            from ..pretrain_conv import load_conv_state

            load_conv_state(config.conv_init, self.feature_extractor)
        if config.freeze_conv:
            for p in self.feature_extractor.parameters():
                p.requires_grad = False
        self.conv_cache = ConvFeatureCache(config.conv_cache_mb) if config.conv_cache_mb > 0 else None

    @staticmethod
    def _build_hf_model(config: SpeechTrunkConfig):
        from transformers import HubertModel, Wav2Vec2Model

        cls = Wav2Vec2Model if config.backbone == "wav2vec2" else HubertModel
        if config.pretrained is None:
            return cls(config.hf_config())
        import os

        looks_local = os.sep in config.pretrained or config.pretrained.startswith(".")
        if looks_local and not os.path.isdir(config.pretrained):
            raise OSError(f"cannot load the pretrained {config.backbone} {config.pretrained!r}: no such directory")
        try:
            model = cls.from_pretrained(config.pretrained, attn_implementation="sdpa")
        except (OSError, ValueError) as e:
            raise OSError(
                f"cannot load the pretrained {config.backbone} {config.pretrained!r} (a hub name needs internet; "
                f"a local directory needs config.json and the weights): {e}"
            ) from None
        got = model.config
        mismatched = [
            (name, getattr(got, hf_name), ours)
            for name, hf_name, ours in [
                ("hidden_size", "hidden_size", config.hidden_size),
                ("num_heads", "num_attention_heads", config.num_heads),
                ("intermediate_size", "intermediate_size", config.intermediate_size),
                ("conv_dim", "conv_dim", list(config.conv_dim)),
            ]
            if (list(getattr(got, hf_name)) if isinstance(ours, list) else getattr(got, hf_name)) != ours
        ]
        if mismatched:
            raise ValueError(f"pretrained {config.pretrained!r} does not match the config: " + ", ".join(f"{n}: checkpoint {a} vs config {b}" for n, a, b in mismatched))
        if got.num_hidden_layers < config.num_layers:
            raise ValueError(f"pretrained {config.pretrained!r} has {got.num_hidden_layers} layers, the config keeps {config.num_layers}")
        return model

    @property
    def downsample_rate(self) -> int:
        return self.config.downsample_rate

    def frame_lengths(self, lengths: torch.Tensor, num_samples: Optional[int] = None) -> torch.Tensor:
        """Valid frames for ``lengths`` samples (official rule needs the padded length)."""
        c = self.config
        n_conv = conv_output_lengths(lengths, c.conv_kernel, c.conv_stride)
        if not c.official_compat:
            return n_conv
        if num_samples is None:
            raise ValueError("official_compat frame lengths depend on the padded length: pass num_samples")
        num_frames = int(conv_output_lengths(torch.tensor([num_samples]), c.conv_kernel, c.conv_stride)[0])
        return official_frame_lengths(lengths, num_samples, num_frames)

    def _conv_features(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, T, C) conv features, T = frames of L samples (through the cache when on)."""
        if self.conv_cache is None:
            return self._compute_conv_features(wavs, lengths)
        n_valid = self.frame_lengths(lengths, num_samples=wavs.size(1))
        return self.conv_cache.features(self.feature_extractor, wavs, lengths, n_valid, self._compute_conv_features)

    def _compute_conv_features(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        c = self.config
        with torch.set_grad_enabled(torch.is_grad_enabled() and not c.freeze_conv):
            if c.official_compat:
                # NOTE(original): GroupNorm statistics over the whole padded length.
                return self.feature_extractor(wavs).transpose(1, 2)
            # Samples past the longest clip only feed padded frames: cut them, and
            # pad the features back with zeros (exact; shapes stay those of L).
            L = wavs.size(1)
            T = int(conv_output_lengths(torch.tensor([L]), c.conv_kernel, c.conv_stride)[0])
            keep = max(int(lengths.max()), self.minimum_samples())
            x = wavs[:, None, :keep]
            n = lengths
            for i, layer in enumerate(self.feature_extractor.conv_layers):
                x = layer.conv(x)
                n = conv_output_lengths(n, [c.conv_kernel[i]], [c.conv_stride[i]])
                if i == 0:
                    x = masked_group_norm(x, layer.layer_norm, n)
                x = layer.activation(x)
            if x.size(-1) < T:
                x = F.pad(x, (0, T - x.size(-1)))
        return x.transpose(1, 2)

    def _pos_conv(self, x: torch.Tensor) -> torch.Tensor:
        """``pos_conv_embed(x)``; in eval without grad, the weight-norm is folded once.

        The parametrised weight ``g * v / ||v||`` is recomputed on every call by
        torch's weight_norm; in inference it only changes when the parameters
        do, so it is cached, keyed by the parameters' storage and version
        counters (an optimizer step, ``load_state_dict`` or ``.to`` renews it).
        """
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # torch 2.8's CPU bf16 grouped conv1d (oneDNN) returns wrong values at 4 or 8
            # channels per group (relative error ~1 at the tiny presets' 64 / 16 groups,
            # correct at base's 48): the positional conv runs in fp32 under CPU autocast.
            with torch.autocast("cpu", enabled=False):
                return self._pos_conv_fp(x.float())
        return self._pos_conv_fp(x)

    def _pos_conv_fp(self, x: torch.Tensor) -> torch.Tensor:
        pc = self.pos_conv_embed
        conv = pc.conv
        # Inference tensors (a model built under torch.inference_mode) have no version counter to key on.
        if (self.training or torch.is_grad_enabled() or not hasattr(conv, "parametrizations")
                or any(torch.is_inference(p) for p in conv.parameters())):
            return pc(x)
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in conv.parameters())
        if getattr(self, "_folded_pos_key", None) != key:
            with torch.no_grad():
                self._folded_pos_weight = conv.weight.detach().clone()
            self._folded_pos_key = key
        y = F.conv1d(x.transpose(1, 2), self._folded_pos_weight, conv.bias, conv.stride, conv.padding,
                     conv.dilation, conv.groups)
        return pc.activation(pc.padding(y)).transpose(1, 2)

    def _layer(self, layer: nn.Module, h: torch.Tensor, B: int, S: int, idx: Optional[torch.Tensor],
               mask: Optional[torch.Tensor]) -> torch.Tensor:
        """One post-LN wav2vec2/HuBERT encoder layer on packed tokens (the HF layer's maths).

        h: (N, D) the non-padded tokens of a (B, S) batch, at flat positions
        ``idx`` (None: no padding, N = B * S). The projections, feed-forward and
        norms run on the N tokens only (no work on padding); the attention
        scatters q/k/v to (B, H, S, Dh) and calls torch's fused SDPA with the
        additive key mask.
        """
        att = layer.attention
        H, Dh = att.num_heads, att.head_dim
        D = h.size(-1)

        def heads(t):
            if idx is not None:
                t = t.new_zeros(B * S, D).index_copy(0, idx, t)
            return t.view(B, S, H, Dh).transpose(1, 2)

        q, k, v = heads(att.q_proj(h)), heads(att.k_proj(h)), heads(att.v_proj(h))
        p = att.dropout if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=att.scaling)
        ctx = ctx.transpose(1, 2).reshape(B * S, D)
        if idx is not None:
            ctx = ctx.index_select(0, idx)
        h = layer.layer_norm(h + layer.dropout(att.out_proj(ctx)))
        return layer.final_layer_norm(h + layer.feed_forward(h))

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None, attention_layer: Optional[int] = None) -> SpeechTrunkOutput:
        """Encode padded waveforms.

        Args:
            wavs: (B, L) 16 kHz waveforms, zero padded.
            lengths: (B,) valid samples per row (default: all L).
            attention_layer: 0-based layer (-1 = last) whose per-head attention
                probabilities to return, computed from the layer's own q/k
                projections (the fused SDPA kernel does not expose them).
        """
        c = self.config
        if wavs.dim() != 2:
            raise ValueError(f"wavs must be (B, L), got shape {tuple(wavs.shape)}")
        B, L = wavs.shape
        if lengths is None:
            lengths = torch.full((B,), L, dtype=torch.long, device=wavs.device)
        lengths = lengths.to(wavs.device).long()
        if (lengths > L).any() or (lengths <= 0).any():
            raise ValueError(f"lengths must be in [1, {L}], got {lengths.tolist()}")
        if L < self.minimum_samples():
            raise ValueError(f"audio too short: {L} samples give no frame (need at least {self.minimum_samples()} samples)")
        if c.normalize_waveform:
            wavs = normalize_waveform(wavs, lengths)

        feats = self._conv_features(wavs, lengths)  # (B, T, C)
        T = feats.size(1)
        n_frames = self.frame_lengths(lengths, num_samples=L).clamp(max=T)
        pad = lengths_to_padding_mask(n_frames, T)  # (B, T)

        proj = self.feature_projection(feats)
        x = proj[0] if isinstance(proj, tuple) else proj  # (B, T, D)
        hidden = [x]
        if not c.official_compat:
            x = x.masked_fill(pad[..., None], 0.0)
        cls = self.cls_token.expand(B, -1, -1).to(x.dtype)
        if c.cls_position == "before_pos_conv":
            # NOTE(original): FaST-VGS prepends the CLS before the positional conv,
            # so the CLS gets a positional embedding and touches its neighbours.
            x = torch.cat([cls, x], dim=1)
            x = x + self._pos_conv(x)
        else:
            x = x + self._pos_conv(x)
            x = torch.cat([cls, x], dim=1)
        x = self.dropout(self.layer_norm(x))  # post-LN encoder: LN before the layers
        full_pad = torch.cat([pad.new_zeros(B, 1), pad], dim=1)  # (B, 1+T); the CLS is never padding
        S, D = x.shape[1], x.shape[2]
        any_pad = bool(full_pad.any())
        mask = padding_to_additive(full_pad, x.dtype) if any_pad else None
        # Default path: padded tokens never influence valid ones, so they are dropped
        # (packed) and come back as zeros. official_compat: padded frames feed Conv2
        # officially, so every position is computed.
        idx = full_pad.view(-1).logical_not().nonzero().squeeze(1) if any_pad and not c.official_compat else None

        def unpack(h):
            if idx is not None:
                h = h.new_zeros(B * S, D).index_copy(0, idx, h)
            return h.view(B, S, D)

        cls_hidden = [x[:, 0]]  # the CLS as it enters the first layer
        attentions = None
        att_idx = None if attention_layer is None else range(len(self.layers))[attention_layer]
        h = x.reshape(B * S, D) if idx is None else x.reshape(B * S, D).index_select(0, idx)
        for i, layer in enumerate(self.layers):
            if i == att_idx:
                attentions = self._attention_probs(layer, unpack(h), padding_to_additive(full_pad, x.dtype))
            h = self._layer(layer, h, B, S, idx, mask)
            x = unpack(h)
            hidden.append(x[:, 1:])
            cls_hidden.append(x[:, 0])
        return SpeechTrunkOutput(
            cls=x[:, 0],
            frames=x[:, 1:],
            padding_mask=pad,
            hidden_states=tuple(hidden),
            cls_hidden_states=tuple(cls_hidden),
            attentions=attentions,
        )

    @staticmethod
    def _attention_probs(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-head softmax(QK^T / sqrt(d) + mask) of ``layer`` on input ``x``: (B, H, S, S)."""
        att = layer.attention
        B, S, _ = x.shape
        q = att.q_proj(x).view(B, S, att.num_heads, att.head_dim).transpose(1, 2)
        k = att.k_proj(x).view(B, S, att.num_heads, att.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * att.scaling + mask
        return scores.softmax(-1)

    def minimum_samples(self) -> int:
        """Shortest input that yields one frame."""
        n = 1
        for k, s in reversed(list(zip(self.config.conv_kernel, self.config.conv_stride))):
            n = (n - 1) * s + k
        return n


__all__ = [
    "ConvFeatureCache",
    "SpeechTrunkConfig",
    "SpeechTrunkOutput",
    "SpeechTrunk",
    "conv_output_lengths",
    "official_frame_lengths",
    "lengths_to_padding_mask",
    "masked_group_norm",
    "padding_to_additive",
]
