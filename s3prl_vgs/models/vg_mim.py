"""Speech-guided masked image modeling for visually grounded speech.

Paper: Woo, Ryu, Senocak, Chung, "Speech Guided Masked Image Modeling for
Visually Grounded Speech", ICASSP 2024 (``papers/speech-guided-mim.txt``). No
public code exists; the paper is the specification. Its base, VG-HuBERT
(Peng & Harwath, Interspeech 2022, ``jasonppy/word-discovery`` @ 809937b), is
described in ``reference/official-code.md`` section 2 and is a configuration
of this same model (preset ``vg_hubert``), so its released weights load.

The model (Fig. 2 of the paper):
- audio encoder E_A: HuBERT base (conv frozen, last 3 layers re-initialised)
  with a CLS token after the positional conv (``modules.speech_trunk``);
- image encoder E_I: ViT-B/16 with MAE weights (:class:`ViTImageEncoder`, in this
  file: only this family uses it);
- contrastive branch: projections of the audio CLS and of the mean image
  token to 768-d, InfoNCE in both directions on their inner product (Eq. 2);
- speech-guided MIM: 75% of the patches are dropped, E_I (shared) encodes the
  visible ones, a one-layer cross-modal decoder (cross-attention -> self-
  attention -> FFN) predicts the momentum encoder's features of every patch
  with the speech summary ``W @ Z_A`` (Eq. 3) as keys and values, and the
  squared error over masked patches is the MIM loss (Eq. 4);
- ``L = L_NCE + lambda * L_MIM`` with lambda = 2 from epoch 3 on (Eq. 5).

What we chose where the paper is silent:
- Image vector: mean of the patch tokens after the final LayerNorm, CLS
  excluded (MAE's global pooling); ``image_pooling="cls"`` gives VG-HuBERT's.
- Speech summary: W is the last layer's CLS-query attention over the T frames
  (the CLS column is dropped), per head, computed before attention dropout.
  We renormalise W over the valid frames so that each summary vector is a
  weighted mean of frames whose scale does not depend on how much attention
  the CLS pays to itself (``summary_renormalize=False`` keeps the raw
  weights). Z_A is the last layer's frame output. Gradients of L_MIM reach
  the audio encoder through both W and Z_A.
- Decoder: pre-LayerNorm residual sublayers in the order the paper lists
  them, width 768 / 12 heads / FFN 3072 (the encoders' sizes), MAE-style
  input (a Linear from the encoder width, a learned mask token at masked
  positions, position embeddings initialised to 2-D sin-cos and then
  learned), CLS kept in the sequence, a final LayerNorm and a Linear to the
  target width.
- Target: the momentum encoder's patch tokens after its final LayerNorm, on
  the full image, no gradient. Eq. 4 has a leading minus; minimising it would
  push predictions away, so the squared error is minimised as a positive
  number (``losses.mim_regression_loss``).
- MIM loss scale: the text says "Mean Square Error" while Eq. 4 writes a
  squared L2 norm per patch. With 768-d LayerNorm'd targets the summed norm
  starts near 1000, which at lambda = 2 would drown L_NCE (about 2 ln B), so
  by default we average over the feature dimension as MAE does
  (``mim_reduction="mean"``); ``"sum"`` is Eq. 4 literally.
- Momentum encoder: a copy of E_I whose tensors are buffers, so it is saved
  and moved with the model but is never in ``parameters()`` (no optimizer,
  no DDP gradient sync). alpha rises 0.999 -> 1 by a half-cosine over
  training (:func:`momentum_schedule`). The whole training schedule (lambda
  switch-on by epoch, alpha by optimizer step, the EMA update after each
  step) is one object, :class:`SpeechGuidedMIMSchedule`, that a trainer
  drives; ``forward`` itself has no side effects.
- Ablations (Table 4) are ``mim``: "none" = VG-HuBERT(M); "recon" = the
  decoder without its cross-attention sublayer (it never sees speech);
  "speech_frames" = cross-attention to all T frames (CLS excluded, padding
  masked); "speech_summary" = the full model.
- While the MIM weight is 0 (the first 3 epochs) the MIM branch is skipped, so
  multi-GPU training must allow unused parameters during those epochs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigBase
from .. import distributed
from ..losses import global_same_image_mask, info_nce_loss, masked_margin_softmax_loss, mim_regression_loss
from ..modules.image_transforms import IMAGENET_MEAN, IMAGENET_STD, build_image_transform
from ..modules.speech_trunk import SpeechTrunk, SpeechTrunkConfig
from .base import (AudioOutput, ImageOutput, InputSpec, TrainingSchedule, TrainOutput, VGSModelMixin,
                   minimum_samples)

# ----------------------------------------------------------------------------- config


@dataclass
class ViTImageEncoderConfig(ConfigBase):
    """Sizes of the ViT; defaults are ViT-B/16 at 224 px (MAE base)."""

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0
    attention_dropout: float = 0.0
    qkv_bias: bool = True
    pretrained: Optional[str] = None  # HF hub name or local dir (ViTModel / ViTMAEModel); None = random init
    # Converted VG-HuBERT checkpoints: accept other image sizes (multiples of the
    # patch) by DINO's bicubic position-embedding interpolation.
    official_compat: bool = False

    def __post_init__(self):
        self._check(self.image_size % self.patch_size == 0, f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        self._check(self.hidden_size % self.num_heads == 0, f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        self._check(self.num_layers >= 1, "num_layers must be >= 1")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def hf_config(self):
        from transformers import ViTConfig

        return ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_act="gelu",
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.attention_dropout,
            layer_norm_eps=self.layer_norm_eps,
            qkv_bias=self.qkv_bias,
            attn_implementation="sdpa",
        )


# HuBERT base as VG-HuBERT uses it: 12 layers, CLS after the positional conv,
# raw waveform, last 3 layers re-initialised.
_HUBERT_BASE: Dict[str, Any] = dict(
    backbone="hubert", num_layers=12, cls_position="after_pos_conv", normalize_waveform=False, reinit_last=3
)
# DINO ViT-S/8 (VG-HuBERT's image encoder).
_VIT_SMALL_8: Dict[str, Any] = dict(patch_size=8, hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536)
# CPU-sized versions of both, same architecture; 16 kHz audio, 320x downsampling.
_TINY_AUDIO: Dict[str, Any] = dict(
    _HUBERT_BASE, hidden_size=64, num_heads=4, intermediate_size=128, num_layers=2, conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, reinit_last=1,
)
_TINY_IMAGE: Dict[str, Any] = dict(image_size=32, patch_size=8, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)

MIM_MODES = ("none", "recon", "speech_frames", "speech_summary")


@dataclass
class SpeechGuidedMIMConfig(ConfigBase):
    """Speech-guided MIM and its VG-HuBERT relatives; defaults are the paper's model.

    ``base`` has the paper's sizes with random weights; ``base_pretrained``
    starts from HuBERT base and MAE ViT-B/16 as the paper does (needs the hub
    or local copies). ``vg_hubert`` is the original VG-HuBERT.
    """

    audio: SpeechTrunkConfig = field(default_factory=lambda: SpeechTrunkConfig(**_HUBERT_BASE))
    image: ViTImageEncoderConfig = field(default_factory=ViTImageEncoderConfig)
    image_pooling: str = "mean"  # "mean" of patch tokens | "cls"
    projection: str = "linear"  # "linear" | "mlp" (Linear -> GELU -> Linear, VG-HuBERT)
    proj_hidden_size: int = 1536  # mlp only
    embed_dim: int = 768
    loss: str = "info_nce"  # "info_nce" (Eq. 2) | "masked_margin" (VG-HuBERT)
    temperature: float = 1.0  # info_nce: the paper scores with a plain inner product
    margin: float = 1.0  # masked_margin
    mim: str = "speech_summary"  # "none" | "recon" | "speech_frames" | "speech_summary"
    mask_ratio: float = 0.75
    mim_reduction: str = "mean"  # per patch: "mean" squared error over features (MSE, MAE) | "sum" (Eq. 4's ||.||^2)
    decoder_hidden_size: int = 768
    decoder_num_heads: int = 12
    decoder_intermediate_size: int = 3072
    decoder_layers: int = 1
    decoder_dropout: float = 0.0
    summary_renormalize: bool = True
    mim_weight: float = 2.0  # lambda of Eq. 5
    mim_start_epoch: int = 3  # lambda is 0 before this (0-based) epoch
    momentum_start: float = 0.999
    momentum_end: float = 1.0
    train_randaugment: bool = True
    train_hflip: bool = False

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "base": {},
        "base_pretrained": {
            "audio": dict(_HUBERT_BASE, pretrained="facebook/hubert-base-ls960"),
            "image": dict(pretrained="facebook/vit-mae-base"),
        },
        "tiny": {
            "audio": _TINY_AUDIO, "image": _TINY_IMAGE, "embed_dim": 64, "proj_hidden_size": 128,
            "decoder_hidden_size": 64, "decoder_num_heads": 4, "decoder_intermediate_size": 128,
        },
        "vg_hubert": {
            "audio": _HUBERT_BASE, "image": _VIT_SMALL_8, "image_pooling": "cls", "projection": "mlp",
            "embed_dim": 2048, "loss": "masked_margin", "mim": "none", "train_randaugment": False, "train_hflip": True,
        },
        # VG-HuBERT's architecture (CLS pooling, MLP projections, margin loss, no MIM) at CPU size.
        "vg_hubert_tiny": {
            "audio": _TINY_AUDIO, "image": _TINY_IMAGE, "image_pooling": "cls", "projection": "mlp",
            "embed_dim": 64, "proj_hidden_size": 128, "loss": "masked_margin", "mim": "none",
            "train_randaugment": False, "train_hflip": True,
        },
        "vg_hubert_pretrained": {
            "audio": dict(_HUBERT_BASE, pretrained="facebook/hubert-base-ls960"),
            "image": dict(_VIT_SMALL_8, pretrained="facebook/dino-vits8"),
            "image_pooling": "cls", "projection": "mlp", "embed_dim": 2048, "loss": "masked_margin", "mim": "none",
            "train_randaugment": False, "train_hflip": True,
        },
    }

    def __post_init__(self):
        self._check(self.image_pooling in ("mean", "cls"), f"image_pooling must be mean or cls, got {self.image_pooling!r}")
        self._check(self.projection in ("linear", "mlp"), f"projection must be linear or mlp, got {self.projection!r}")
        self._check(self.loss in ("info_nce", "masked_margin"), f"loss must be info_nce or masked_margin, got {self.loss!r}")
        self._check(self.mim in MIM_MODES, f"mim must be one of {MIM_MODES}, got {self.mim!r}")
        self._check(self.temperature > 0, "temperature must be > 0")
        self._check(self.mim_reduction in ("mean", "sum"), f"mim_reduction must be mean or sum, got {self.mim_reduction!r}")
        n = self.image.num_patches
        self._check(0 < self.mask_ratio < 1 and 1 <= int(n * (1 - self.mask_ratio)) < n,
                    f"mask_ratio {self.mask_ratio} must keep at least one of the {n} patches and mask at least one")
        self._check(self.decoder_hidden_size % self.decoder_num_heads == 0, "decoder_hidden_size must be divisible by decoder_num_heads")
        self._check(self.decoder_hidden_size % 4 == 0, "decoder_hidden_size must be divisible by 4 (2-D sin-cos position embeddings)")
        self._check(self.decoder_layers >= 1, "decoder_layers must be >= 1")
        self._check(0.0 <= self.momentum_start <= self.momentum_end <= 1.0, "need 0 <= momentum_start <= momentum_end <= 1")
        self._check(self.mim_weight >= 0, "mim_weight must be >= 0")

    @property
    def num_masked(self) -> int:
        """Patches masked per image: N - int(N * (1 - mask_ratio)), as MAE."""
        n = self.image.num_patches
        return n - int(n * (1 - self.mask_ratio))

    @property
    def downsample_rate(self) -> int:
        return self.audio.downsample_rate

    @property
    def input_spec(self) -> InputSpec:
        """Pixels through :meth:`image_transform`; trunk frames at 20 ms."""
        return InputSpec(
            image_input="pixels",
            min_audio_samples=minimum_samples(self.audio.conv_kernel, self.audio.conv_stride),
            downsample_rates={"hidden_states": self.downsample_rate},
            embed_dim=self.embed_dim,
            image_size=self.image.image_size,
        )

    def image_transform(self, train: bool):
        """The torchvision transform from a PIL image to ``encode_image``'s input (train or eval)."""
        return build_image_transform(train, self.image.image_size, randaugment=self.train_randaugment,
                                     hflip=self.train_hflip, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def mim_weight_at(self, epoch: Optional[float]) -> float:
        """lambda of Eq. 5 at 0-based ``epoch`` (0 before ``mim_start_epoch``); ``None``: the full weight."""
        if self.mim == "none":
            return 0.0
        return self.mim_weight if epoch is None or epoch >= self.mim_start_epoch else 0.0


# ----------------------------------------------------------------------------- outputs


@dataclass
class ViTImageEncoderOutput:
    """K = patches the encoder saw (all N, or the visible ones), D = hidden size."""

    last_hidden_state: torch.Tensor  # (B, 1+K, D) after the final LayerNorm; position 0 = CLS
    hidden_states: Tuple[torch.Tensor, ...] = ()  # L+1 x (B, 1+K, D) when asked for: embeddings, then each layer

    @property
    def cls(self) -> torch.Tensor:  # (B, D)
        return self.last_hidden_state[:, 0]

    @property
    def patches(self) -> torch.Tensor:  # (B, K, D)
        return self.last_hidden_state[:, 1:]


@dataclass
class SpeechGuidedMIMAudioOutput(AudioOutput):
    """:class:`~s3prl_vgs.models.base.AudioOutput`. E = embed_dim, D = audio width, T = frames (20 ms), H = heads.

    coarse (B, E) = projected CLS, the retrieval vector z^A; tokens (B, T, D) =
    last layer, CLS removed (Z_A); tokens_padding_mask = padding_mask (B, T);
    hidden_states L+1 x (B, T, D), CLS removed.
    """

    cls: Optional[torch.Tensor] = None  # (B, D) z^A_cls
    attentions: Optional[torch.Tensor] = None  # (B, H, 1+T, 1+T) last layer, when asked for


@dataclass
class SpeechGuidedMIMImageOutput(ImageOutput):
    """E = embed_dim, D = image width, N = patches: coarse (B, E) projected pooled image (z^I);
    tokens (B, N, D) patch tokens after the final LayerNorm; tokens_padding_mask (B, N) all False."""

    cls: Optional[torch.Tensor] = None  # (B, D)


@dataclass
class SpeechGuidedMIMOutput(TrainOutput):
    """Training output. ``losses``: ``nce`` and, when the MIM branch ran, ``mim``;
    ``batch_scores["coarse"]`` (B, B), audio i x image j; ``loss`` = nce + mim_weight * mim.
    N = patches, D = image width, S = speech keys of the decoder."""

    mim_weight: float = 0.0
    patch_mask: Optional[torch.Tensor] = None  # (B, N) 1.0 at masked patches
    pred: Optional[torch.Tensor] = None  # (B, N, D) decoder prediction of every patch
    target: Optional[torch.Tensor] = None  # (B, N, D) momentum-encoder features
    speech_context: Optional[torch.Tensor] = None  # (B, S, D_audio): summary (S = heads) or frames (S = T)

    @property
    def nce_loss(self) -> torch.Tensor:
        return self.losses["nce"]

    @property
    def mim_loss(self) -> Optional[torch.Tensor]:
        return self.losses.get("mim")

    @property
    def scores(self) -> torch.Tensor:
        return self.batch_scores["coarse"]

    @property
    def audio_embed(self) -> torch.Tensor:
        return self.audio.coarse

    @property
    def image_embed(self) -> torch.Tensor:
        return self.image.coarse

    @property
    def mask(self) -> Optional[torch.Tensor]:
        """Old name of ``patch_mask``."""
        return self.patch_mask


# ----------------------------------------------------------------------------- free functions


def interpolate_position_embeddings(pos: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of (1, 1 + n*n, D) position embeddings to an h x w grid (CLS row kept).

    NOTE(original): DINO's ``interpolate_pos_encoding`` passes a *scale factor*
    of ``(h + 0.1) / n`` by ``(w + 0.1) / n`` (the 0.1 guards the output size
    against float rounding), and the scale factor, not the size, sets where
    the bicubic kernel samples, so the result differs slightly from resizing
    to ``size=(h, w)``. Its code calls ``x.shape[2]`` "w", but it is the
    height; rows scale with the height here as there.
    """
    n_pos, dim = pos.shape[1] - 1, pos.shape[2]
    n = int(math.sqrt(n_pos))
    h, w = grid
    table = pos[:, 1:].reshape(1, n, n, dim).permute(0, 3, 1, 2)  # (1, n*n, D) -> (1, D, n, n)
    table = F.interpolate(table, scale_factor=((h + 0.1) / n, (w + 0.1) / n), mode="bicubic")
    if tuple(table.shape[-2:]) != (h, w):
        raise RuntimeError(f"position-embedding interpolation gave a {tuple(table.shape[-2:])} grid, wanted {(h, w)}")
    table = table.permute(0, 2, 3, 1).reshape(1, h * w, dim)  # (1, D, h, w) -> (1, h*w, D)
    return torch.cat([pos[:, :1], table], dim=1)


def load_pretrained_vit(model: nn.Module, config: ViTImageEncoderConfig) -> None:
    """Copy a pretrained ``ViTModel`` / ``ViTMAEModel`` (hub name or directory) into ``model``.

    Both store their encoder under the same names; the pooler (ViTModel) is not
    used. Sizes are checked against the config so that a wrong checkpoint fails
    here instead of loading half of its weights.
    """
    from transformers import AutoModel

    try:
        hf = AutoModel.from_pretrained(config.pretrained)
    except OSError as e:
        raise OSError(
            f"cannot load the pretrained ViT {config.pretrained!r} (a hub name needs internet; "
            f"a local directory needs config.json and the weights): {e}"
        ) from None
    got = hf.config
    mismatched = [
        f"{ours}: checkpoint {getattr(got, theirs, None)} vs config {getattr(config, ours)}"
        for ours, theirs in [
            ("image_size", "image_size"),
            ("patch_size", "patch_size"),
            ("hidden_size", "hidden_size"),
            ("num_layers", "num_hidden_layers"),
            ("num_heads", "num_attention_heads"),
            ("intermediate_size", "intermediate_size"),
        ]
        if getattr(got, theirs, None) != getattr(config, ours)
    ]
    if mismatched:
        raise ValueError(f"pretrained ViT {config.pretrained!r} does not match the config: " + ", ".join(mismatched))
    state = {k: v for k, v in hf.state_dict().items() if not k.startswith("pooler.")}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"pretrained ViT {config.pretrained!r}: missing keys {missing}, unexpected keys {unexpected}")
    model.load_state_dict(state)


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random ``int(N * (1 - mask_ratio))`` patches per row (MAE's per-sample shuffle).

    Args:
        x: (B, N, D) patch tokens.
        mask_ratio: fraction of patches to drop.
        noise: optional (B, N); the patches with the smallest noise are kept.
            Pass it to make the mask reproducible in tests.

    Returns:
        x_kept (B, K, D), mask (B, N) with 1.0 at dropped patches, and
        ids_restore (B, N), which puts ``cat([kept, dropped])`` back in order.
    """
    B, N, D = x.shape
    keep = int(N * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(B, N, device=x.device)
    elif noise.shape != (B, N):
        raise ValueError(f"noise must be (B, N) = {(B, N)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise.to(x.device), dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))  # (B, K, D)
    mask = torch.ones(B, N, device=x.device, dtype=x.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to patch order
    return x_kept, mask, ids_restore


def speech_summary(
    attentions: torch.Tensor, frames: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, renormalize: bool = True
) -> torch.Tensor:
    """Eq. 3: one summary vector per head, ``W @ Z_A``.

    Args:
        attentions: (B, H, 1+T, 1+T) attention probabilities of the audio
            encoder's last layer; row 0 is the CLS query, column 0 the CLS key.
        frames: (B, T, D) last-layer frame features (CLS removed).
        padding_mask: (B, T) True at padded frames; their weight is set to 0.
        renormalize: divide W by its sum over frames, since dropping the CLS
            column leaves rows that sum to less than 1.

    Returns:
        (B, H, D).
    """
    w = attentions[:, :, 0, 1:]  # (B, H, T) the CLS query over the frames
    if padding_mask is not None:
        w = w.masked_fill(padding_mask[:, None, :], 0.0)
    if renormalize:
        w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return torch.matmul(w, frames.to(w.dtype))  # (B, H, T) @ (B, T, D) -> (B, H, D)


def momentum_schedule(step: float, total_steps: float, start: float = 0.999, end: float = 1.0) -> float:
    """alpha rising from ``start`` (step 0) to ``end`` (last step) along a half cosine."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def sincos_position_embeddings_2d(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """(1+grid^2, dim) MAE 2-D sin-cos table (half the channels per axis); CLS row = 0."""
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (dim/4,)
    coords = torch.arange(grid_size, dtype=torch.float64)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")  # row-major patch order

    def axis(pos):  # (P,) -> (P, dim/2)
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return torch.cat([out.sin(), out.cos()], dim=1)

    table = torch.cat([axis(gx), axis(gy)], dim=1)  # (grid^2, dim)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
    return table.float()


def _parameters_to_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` into a buffer of the same name, in place.

    Layers read ``self.weight`` the same way from either, so the module still
    runs; its tensors stay in ``state_dict`` and follow ``.to()``, but leave
    ``parameters()``, so no optimizer, weight decay or DDP reducer touches them.
    """
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            del m._parameters[name]
            m.register_buffer(name, None if p is None else p.detach().clone())
    return module


def _projection(kind: str, in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    # Indices 0 and 2 match VG-HuBERT's ``*_cls_token_proj.{0,2}``.
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


# ----------------------------------------------------------------------------- modules


class ViTImageEncoder(nn.Module):
    """ViT whose forward is split so that callers can drop patches in between.

    The MIM family needs one ViT for three jobs: the full image (contrastive
    branch), the visible patches only (MIM: masked patches are dropped, not
    replaced, as in MAE) and a momentum copy on the full image.
    ``transformers.ViTModel`` cannot drop patches, so its parts are run here.
    Parameter names are those of ``ViTModel(add_pooling_layer=False)`` (and of
    ``ViTMAEModel``), so MAE (``facebook/vit-mae-base``) and DINO
    (``facebook/dino-vits8``) weights load by name. LayerNorm eps defaults to
    1e-6, what MAE and DINO were trained with (the HF ports write 1e-12). With
    ``official_compat`` (converted VG-HuBERT) any image size works and the
    position embeddings are interpolated by DINO's rule.

    ``forward(images)`` = ``encode_tokens(embed_patches(images))``. To encode
    visible patches only, select rows of ``embed_patches`` (which already carry
    their position embeddings) and pass them to ``encode_tokens``.
    """

    def __init__(self, config: ViTImageEncoderConfig):
        super().__init__()
        self.config = config
        hf = self._build_hf_model(config)
        self.embeddings = hf.embeddings
        self.encoder = hf.encoder
        self.layernorm = hf.layernorm

    @staticmethod
    def _build_hf_model(config: ViTImageEncoderConfig):
        from transformers import ViTModel

        model = ViTModel(config.hf_config(), add_pooling_layer=False)
        if config.pretrained is not None:
            load_pretrained_vit(model, config)
        return model

    def embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D) patch embeddings plus their position embeddings.

        H = W = ``image_size``; with ``official_compat`` any H, W >= the patch size
        (a floor(H/p) x floor(W/p) grid, as in DINO), the position embeddings then
        being interpolated by DINO's rule.
        """
        c = self.config
        shape = tuple(pixel_values.shape)
        if c.official_compat:
            ok = pixel_values.dim() == 4 and shape[1] == c.num_channels and shape[2] >= c.patch_size and shape[3] >= c.patch_size
            want = f"(B, {c.num_channels}, H, W) with H, W >= {c.patch_size}"
        else:
            ok = pixel_values.dim() == 4 and shape[1:] == (c.num_channels, c.image_size, c.image_size)
            want = f"(B, {c.num_channels}, {c.image_size}, {c.image_size})"
        if not ok:
            raise ValueError(f"images must be {want}, got {shape}")
        x = self.embeddings.patch_embeddings.projection(pixel_values.to(self.embeddings.cls_token.dtype))  # (B, D, h, w)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D), row-major over the grid
        return x + self.position_embeddings_for(grid)[:, 1:]

    def position_embeddings_for(self, grid: Tuple[int, int]) -> torch.Tensor:
        """(1, 1 + h*w, D) position embeddings for an h x w patch grid (CLS first)."""
        pos = self.embeddings.position_embeddings
        n = self.config.grid_size
        if tuple(grid) == (n, n):
            return pos
        if not self.config.official_compat:
            raise ValueError(f"a {grid[0]}x{grid[1]} patch grid needs official_compat (this ViT is {n}x{n})")
        return interpolate_position_embeddings(pos, grid)

    def encode_tokens(self, patches: torch.Tensor, output_hidden_states: bool = False) -> ViTImageEncoderOutput:
        """(B, K, D) position-embedded patches -> CLS + K tokens through the layers."""
        B = patches.size(0)
        cls = (self.embeddings.cls_token + self.embeddings.position_embeddings[:, :1]).expand(B, -1, -1)
        x = self.embeddings.dropout(torch.cat([cls, patches], dim=1))  # (B, 1+K, D)
        hidden = [x]
        for layer in self.encoder.layer:
            x = layer(x)
            x = x[0] if isinstance(x, tuple) else x  # transformers < 4.54 returns a tuple
            hidden.append(x)
        return ViTImageEncoderOutput(
            last_hidden_state=self.layernorm(x),
            hidden_states=tuple(hidden) if output_hidden_states else (),
        )

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> ViTImageEncoderOutput:
        return self.encode_tokens(self.embed_patches(pixel_values), output_hidden_states)


class SpeechGuidedMIMAttention(nn.Module):
    """Multi-head attention with separate query and key/value widths (self or cross)."""

    def __init__(self, hidden_size: int, num_heads: int, kv_size: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        kv_size = kv_size or hidden_size
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(kv_size, hidden_size)
        self.value = nn.Linear(kv_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, Q, D) attends to context (B, S, Dc); padding_mask (B, S) True at pad."""
        B, Q, D = x.shape
        S, H = context.size(1), self.num_heads
        q = self.query(x).view(B, Q, H, D // H).transpose(1, 2)  # (B, H, Q, d)
        k = self.key(context).view(B, S, H, D // H).transpose(1, 2)  # (B, H, S, d)
        v = self.value(context).view(B, S, H, D // H).transpose(1, 2)
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]  # True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).reshape(B, Q, D))  # (B, H, Q, d) -> (B, Q, D)


class SpeechGuidedMIMSchedule(TrainingSchedule):
    """The MIM training schedule in one place, driven by a trainer's hooks.

    - lambda (Eq. 5): 0 before ``mim_start_epoch``, then ``mim_weight``
      (epoch unknown: the full weight);
    - alpha: ``momentum_start -> momentum_end`` by a half cosine over
      ``total_steps`` optimizer steps (:func:`momentum_schedule`);
    - after each optimizer step: the momentum encoder's EMA update with the
      alpha of the step just taken, then the step count moves on.
    """

    def __init__(self, config: SpeechGuidedMIMConfig):
        super().__init__()
        self.config = config

    def mim_weight(self) -> float:
        return self.config.mim_weight_at(self.epoch)

    def momentum(self) -> float:
        if self.total_steps is None:
            raise RuntimeError("the momentum schedule needs total_steps (set by VGSTrainer before training)")
        c = self.config
        return momentum_schedule(int(self.num_updates), self.total_steps, c.momentum_start, c.momentum_end)

    def forward_kwargs(self) -> Dict[str, Any]:
        return {"mim_weight": self.mim_weight()}

    def after_optimizer_step(self, model: nn.Module) -> None:
        if getattr(model, "momentum_image_encoder", None) is not None:
            model.update_momentum_encoder(self.momentum())
        super().after_optimizer_step(model)


class SpeechGuidedMIMDecoderLayer(nn.Module):
    """Cross-attention to speech -> self-attention -> FFN, each pre-LN with a residual.

    Without ``speech_size`` the cross-attention sublayer does not exist (the
    "+Recon" ablation): the layer cannot see speech.
    """

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, speech_size: Optional[int], dropout: float = 0.0):
        super().__init__()
        self.cross_attn = None
        if speech_size is not None:
            self.cross_norm = nn.LayerNorm(hidden_size)
            self.cross_attn = SpeechGuidedMIMAttention(hidden_size, num_heads, kv_size=speech_size, dropout=dropout)
        self.self_norm = nn.LayerNorm(hidden_size)
        self.self_attn = SpeechGuidedMIMAttention(hidden_size, num_heads, dropout=dropout)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, intermediate_size), nn.GELU(), nn.Linear(intermediate_size, hidden_size))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, speech: Optional[torch.Tensor] = None, speech_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.cross_attn is not None:
            if speech is None:
                raise ValueError("this decoder layer attends to speech: pass speech")
            x = x + self.dropout(self.cross_attn(self.cross_norm(x), speech, speech_padding_mask))
        h = self.self_norm(x)
        x = x + self.dropout(self.self_attn(h, h))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class SpeechGuidedMIMDecoder(nn.Module):
    """D_M: visible-patch latents + mask tokens -> predicted target features of every patch."""

    def __init__(self, config: SpeechGuidedMIMConfig):
        super().__init__()
        c = config
        hidden, grid = c.decoder_hidden_size, c.image.grid_size
        speech_size = c.audio.hidden_size if c.mim in ("speech_frames", "speech_summary") else None
        self.embed = nn.Linear(c.image.hidden_size, hidden)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.position_embeddings = nn.Parameter(sincos_position_embeddings_2d(hidden, grid)[None])  # (1, 1+N, Dd)
        self.layers = nn.ModuleList(
            SpeechGuidedMIMDecoderLayer(hidden, c.decoder_num_heads, c.decoder_intermediate_size, speech_size, c.decoder_dropout)
            for _ in range(c.decoder_layers)
        )
        self.norm = nn.LayerNorm(hidden)
        self.pred = nn.Linear(hidden, c.image.hidden_size)

    def forward(
        self,
        latent: torch.Tensor,
        ids_restore: torch.Tensor,
        speech: Optional[torch.Tensor] = None,
        speech_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            latent: (B, 1+K, De) encoder output on the visible patches (CLS first).
            ids_restore: (B, N) from :func:`random_masking`.
            speech: (B, S, Da) keys/values of the cross-attention.
            speech_padding_mask: (B, S) True at padded speech positions.

        Returns:
            (B, N, De) predictions for every patch, in patch order.
        """
        x = self.embed(latent)  # (B, 1+K, Dd)
        B, N = ids_restore.shape
        K = x.size(1) - 1
        patches = torch.cat([x[:, 1:], self.mask_token.expand(B, N - K, -1)], dim=1)  # (B, N, Dd) shuffled order
        patches = torch.gather(patches, 1, ids_restore[..., None].expand(-1, -1, x.size(-1)))  # patch order
        x = torch.cat([x[:, :1], patches], dim=1) + self.position_embeddings  # (B, 1+N, Dd)
        for layer in self.layers:
            x = layer(x, speech, speech_padding_mask)
        return self.pred(self.norm(x))[:, 1:]  # (B, N, De)


# ----------------------------------------------------------------------------- model


class SpeechGuidedMIM(VGSModelMixin, nn.Module):
    """Contrastive VGS model with (optional) speech-guided masked image modeling.

    Example:
        >>> model = build_model("vg_mim", preset="tiny")
        >>> schedule = model.training_schedule(); schedule.set_total_steps(total_steps)
        >>> out = model(wavs, lengths, images, **schedule.forward_kwargs())
        >>> out.loss.backward(); optimizer.step(); schedule.after_optimizer_step(model)
    """

    model_name = "vg_mim"
    config_class = SpeechGuidedMIMConfig

    def __init__(self, config: SpeechGuidedMIMConfig):
        super().__init__()
        self.config = c = config
        self.audio_encoder = SpeechTrunk(c.audio)
        self.image_encoder = ViTImageEncoder(c.image)
        self.audio_proj = _projection(c.projection, c.audio.hidden_size, c.proj_hidden_size, c.embed_dim)
        self.image_proj = _projection(c.projection, c.image.hidden_size, c.proj_hidden_size, c.embed_dim)
        self.decoder = SpeechGuidedMIMDecoder(c) if c.mim != "none" else None
        for module in (self.audio_proj, self.image_proj, self.decoder):
            if module is not None:
                module.apply(self._init_weights)
        if self.decoder is not None:
            nn.init.normal_(self.decoder.mask_token, std=0.02)
            # E-bar starts as a copy of E_I (pretrained weights included).
            self.momentum_image_encoder = _parameters_to_buffers(copy.deepcopy(self.image_encoder)).eval()
        else:
            self.momentum_image_encoder = None

    @property
    def speech_trunk(self) -> SpeechTrunk:
        """E_A, the HuBERT trunk (the contract's name for every family's speech trunk)."""
        return self.audio_encoder

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Our own layers (projections, decoder); the encoders initialise themselves."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def train(self, mode: bool = True) -> "SpeechGuidedMIM":
        super().train(mode)
        if self.momentum_image_encoder is not None:
            self.momentum_image_encoder.eval()  # targets never see dropout
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the optimizer updates: every parameter that requires grad (not the frozen conv)."""
        return (p for p in self.parameters() if p.requires_grad)

    # -- schedules

    def training_schedule(self) -> SpeechGuidedMIMSchedule:
        return SpeechGuidedMIMSchedule(self.config)

    def mim_weight_at(self, epoch: float) -> float:
        """lambda of Eq. 5 at 0-based ``epoch``: 0 before ``mim_start_epoch``."""
        return self.config.mim_weight_at(epoch)

    def momentum_at(self, step: float, total_steps: float) -> float:
        return momentum_schedule(step, total_steps, self.config.momentum_start, self.config.momentum_end)

    @torch.no_grad()
    def update_momentum_encoder(self, momentum: float) -> None:
        """theta-bar <- alpha * theta-bar + (1 - alpha) * theta, for every image-encoder tensor."""
        if self.momentum_image_encoder is None:
            raise RuntimeError("this configuration (mim='none') has no momentum encoder")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        target = dict(self.momentum_image_encoder.named_buffers())
        for name, p in self.image_encoder.named_parameters():
            target[name].mul_(momentum).add_(p.detach().to(target[name].dtype), alpha=1.0 - momentum)

    # -- encoders (the retrieval interface)

    def encode_audio(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None, output_attentions: bool = False) -> SpeechGuidedMIMAudioOutput:
        """(B, L) raw 16 kHz waveforms -> z^A and the frame features."""
        out = self.audio_encoder(wavs, lengths, attention_layer=-1 if output_attentions else None)
        return SpeechGuidedMIMAudioOutput(
            coarse=self.audio_proj(out.cls),
            tokens=out.frames,
            tokens_padding_mask=out.padding_mask,
            hidden_states=out.hidden_states,
            padding_mask=out.padding_mask,
            downsample_rate=self.config.downsample_rate,
            cls=out.cls,
            attentions=out.attentions,
        )

    def _image_output(self, z: "torch.Tensor") -> SpeechGuidedMIMImageOutput:
        """(B, 1+N, D) full-image encoder output -> z^I."""
        pooled = z[:, 1:].mean(1) if self.config.image_pooling == "mean" else z[:, 0]  # (B, D)
        tokens = z[:, 1:]
        return SpeechGuidedMIMImageOutput(coarse=self.image_proj(pooled), tokens=tokens, cls=z[:, 0],
                                          tokens_padding_mask=tokens.new_zeros(tokens.shape[:2], dtype=torch.bool))

    def encode_image(self, images: torch.Tensor) -> SpeechGuidedMIMImageOutput:
        """(B, 3, H, W) normalised images -> z^I and the patch tokens."""
        return self._image_output(self.image_encoder(images).last_hidden_state)

    # -- MIM

    def speech_context(self, audio: SpeechGuidedMIMAudioOutput) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Keys/values for the decoder's cross-attention and their padding mask."""
        mode = self.config.mim
        if mode == "speech_summary":
            if audio.attentions is None:
                raise ValueError("speech_summary needs the last layer's attentions: encode_audio(..., output_attentions=True)")
            return speech_summary(audio.attentions, audio.tokens, audio.padding_mask, self.config.summary_renormalize), None
        if mode == "speech_frames":
            return audio.tokens, audio.padding_mask
        return None, None

    def forward_loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 4 as a positive error: mean over masked patches of ||target - pred||^2 (/ D for "mean").

        Args:
            pred, target: (B, N, D); mask: (B, N), 1 at masked patches.
        """
        loss = mim_regression_loss(pred, target, mask)
        return loss / pred.size(-1) if self.config.mim_reduction == "mean" else loss

    def forward(
        self,
        wavs: torch.Tensor,
        lengths: Optional[torch.Tensor],
        images: torch.Tensor,
        *,
        same_image: Optional[torch.Tensor] = None,
        image_ids=None,
        epoch: Optional[float] = None,
        mim_weight: Optional[float] = None,
        noise: Optional[torch.Tensor] = None,
    ) -> SpeechGuidedMIMOutput:
        """One training step's losses.

        Args:
            wavs: (B, L) raw 16 kHz waveforms, zero padded; lengths: (B,) samples.
            images: (B, 3, H, W) normalised images; pair i is (wavs[i], images[i]).
            same_image: (B, B) bool, True where caption i describes image j
                (other captions of the same image leave the softmaxes);
                single process only.
            image_ids: or (B,) image ids (ints or strings), which under DDP
                mark the same images across ranks. Under DDP the contrastive
                loss is over the global batch (:mod:`s3prl_vgs.distributed`):
                (B_global, B_global) scores, the same value on every rank;
                the MIM term stays per rank (ESPnet's weighted average of it
                is its global-batch mean).
            epoch: 0-based epoch, sets lambda by :meth:`mim_weight_at`.
            mim_weight: lambda itself (wins over ``epoch``; what
                :meth:`SpeechGuidedMIMSchedule.forward_kwargs` gives). With
                neither, lambda is ``config.mim_weight``.
            noise: (B, N) masking noise (see :func:`random_masking`).
        """
        c = self.config
        if mim_weight is None:
            mim_weight = c.mim_weight_at(epoch)
        run_mim = c.mim != "none" and mim_weight > 0
        audio = self.encode_audio(wavs, lengths, output_attentions=run_mim and c.mim == "speech_summary")
        patches = self.image_encoder.embed_patches(images)  # (B, N, D)
        image = self._image_output(self.image_encoder.encode_tokens(patches).last_hidden_state)
        same_image = global_same_image_mask(images.size(0), image_ids, same_image, device=images.device)
        scores = self.coarse_scores(distributed.all_gather(audio.coarse), distributed.all_gather(image.coarse))  # (B_global, B_global)
        if c.loss == "info_nce":
            nce = info_nce_loss(scores, same_image, temperature=c.temperature)
        else:
            nce = masked_margin_softmax_loss(scores, same_image, margin=c.margin)
        out = SpeechGuidedMIMOutput(loss=nce, losses={"nce": nce}, batch_scores={"coarse": scores}, audio=audio, image=image)
        if not run_mim:
            return out

        visible, mask, ids_restore = random_masking(patches, c.mask_ratio, noise)  # (B, K, D), (B, N), (B, N)
        latent = self.image_encoder.encode_tokens(visible).last_hidden_state  # (B, 1+K, D)
        speech, speech_pad = self.speech_context(audio)
        pred = self.decoder(latent, ids_restore, speech, speech_pad)  # (B, N, D)
        with torch.no_grad():
            target = self.momentum_image_encoder(images).patches  # (B, N, D)
        mim = self.forward_loss(pred, target, mask)
        out.loss = nce + mim_weight * mim
        out.losses["mim"] = mim
        out.mim_weight, out.patch_mask, out.pred, out.target, out.speech_context = float(mim_weight), mask, pred, target, speech
        return out

    # -- preprocessing

    def image_transform(self, train: bool):
        """The torchvision transform this model's images need (train or eval)."""
        return self.config.image_transform(train)


# ----------------------------------------------------------------------------- checkpoint_filter_fn


def official_key_rules():
    """VG-HuBERT's key names -> ours: ``(regex, target or None, why dropped)`` rules for :mod:`s3prl_vgs.convert`.

    Official VG-HuBERT state dicts hold ``dual_encoder.*``: the HuBERT
    ``audio_encoder``, the DINO ViT ``trm`` (fused qkv, split here) and the two
    MLP projections. The MIM parts have no official counterpart.
    """
    from ..convert import speech_key_rules, split_fused_qkv

    v, o = r"dual_encoder\.trm\.", "image_encoder."
    return [
        *speech_key_rules("dual_encoder.audio_encoder.", "audio_encoder."),
        (v + r"cls_token", o + "embeddings.cls_token", ""),
        (v + r"pos_embed", o + "embeddings.position_embeddings", ""),
        (v + r"patch_embed\.proj\.(weight|bias)", o + r"embeddings.patch_embeddings.projection.\1", ""),
        (v + r"blocks\.(\d+)\.norm1\.(weight|bias)", o + r"encoder.layer.\1.layernorm_before.\2", ""),
        (v + r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)",
         lambda m: split_fused_qkv(f"{o}encoder.layer.{m.group(1)}.", m.group(2)), ""),
        (v + r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", o + r"encoder.layer.\1.attention.output.dense.\2", ""),
        (v + r"blocks\.(\d+)\.norm2\.(weight|bias)", o + r"encoder.layer.\1.layernorm_after.\2", ""),
        (v + r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", o + r"encoder.layer.\1.intermediate.dense.\2", ""),
        (v + r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", o + r"encoder.layer.\1.output.dense.\2", ""),
        (v + r"norm\.(weight|bias)", o + r"layernorm.\1", ""),
        (v + r"head\..*", None, "DINO classification head (num_classes=0 in VG-HuBERT)"),
        (r"dual_encoder\.audio_cls_token_proj\.([02])\.(weight|bias)", r"audio_proj.\1.\2", ""),
        (r"dual_encoder\.visual_cls_token_proj\.([02])\.(weight|bias)", r"image_proj.\1.\2", ""),
    ]


def checkpoint_filter_fn(state_dict, model: Optional["SpeechGuidedMIM"] = None):
    """An official VG-HuBERT state dict under our key names (timm's ``checkpoint_filter_fn``).

    Dropped heads are left out; a key with no place in the model is a
    :class:`~s3prl_vgs.convert.ConversionError`. The config that fits the
    weights (preset ``vg_hubert`` sizes) comes from :func:`s3prl_vgs.convert.convert_official`.
    """
    from ..convert import apply_key_rules

    return apply_key_rules(state_dict, official_key_rules(), "vg_hubert")[0]


# ----------------------------------------------------------------------------- builders


def vg_mim_base(*, pretrained: bool = False, **overrides: Any) -> SpeechGuidedMIM:
    """The paper's model; ``pretrained=True`` starts from HuBERT base + MAE ViT-B/16 (hub access).

    Example:
        >>> model = vg_mim_base(mim="recon")  # the "+Recon" ablation
    """
    return SpeechGuidedMIM(SpeechGuidedMIMConfig.preset("base_pretrained" if pretrained else "base", **overrides))


def vg_mim_tiny(**overrides: Any) -> SpeechGuidedMIM:
    """A few-hundred-k-parameter version for CPU tests and the synthetic demo."""
    return SpeechGuidedMIM(SpeechGuidedMIMConfig.preset("tiny", **overrides))


def vg_hubert_base(*, pretrained: bool = False, **overrides: Any) -> SpeechGuidedMIM:
    """Original VG-HuBERT; ``pretrained=True`` starts from HuBERT base + DINO ViT-S/8 (hub access)."""
    return SpeechGuidedMIM(SpeechGuidedMIMConfig.preset("vg_hubert_pretrained" if pretrained else "vg_hubert", **overrides))


__all__ = [
    "ViTImageEncoderConfig",
    "ViTImageEncoderOutput",
    "ViTImageEncoder",
    "interpolate_position_embeddings",
    "load_pretrained_vit",
    "SpeechGuidedMIMConfig",
    "SpeechGuidedMIMAudioOutput",
    "SpeechGuidedMIMImageOutput",
    "SpeechGuidedMIMOutput",
    "SpeechGuidedMIMSchedule",
    "random_masking",
    "speech_summary",
    "momentum_schedule",
    "sincos_position_embeddings_2d",
    "SpeechGuidedMIMAttention",
    "SpeechGuidedMIMDecoderLayer",
    "SpeechGuidedMIMDecoder",
    "SpeechGuidedMIM",
    "official_key_rules",
    "checkpoint_filter_fn",
    "vg_mim_base",
    "vg_mim_tiny",
    "vg_hubert_base",
    "MIM_MODES",
]
