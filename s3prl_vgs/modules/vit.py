"""ViT image encoder that can run on a subset of its patches.

The MIM family needs one ViT for three jobs: the full image for the
contrastive branch, the visible patches only for masked image modeling (as in
MAE, masked patches are dropped, not replaced), and a momentum copy that sees
the full image. ``transformers.ViTModel`` cannot drop patches, so we build it
from ``transformers`` and run its parts ourselves: patch embedding plus
position embedding, then (optionally) a subset of patches, then the CLS, the
layers and the final LayerNorm.

Parameter names are those of ``ViTModel(add_pooling_layer=False)`` (and of
``ViTMAEModel``, which uses the same names), so MAE (``facebook/vit-mae-base``)
and DINO (``facebook/dino-vits8``) weights load by name. The official
VG-HuBERT DINO ViT-S/8 fuses q/k/v into one ``qkv`` Linear; a converter splits
it into ``attention.attention.{query,key,value}`` (``s3prl_vgs.convert``).

Image size: the default path takes ``image_size`` only. ``official_compat``
(set for converted VG-HuBERT checkpoints) takes any size and interpolates the
position embeddings as the official DINO code does (bicubic, with its ``+0.1``
scale-factor rule), so crops other than 224 px give the official numbers.

What we chose: LayerNorm eps defaults to 1e-6, what MAE and DINO were trained
with (the HF ports write 1e-12; the difference is below float32 noise on
these activations). MAE's fixed sin-cos position embeddings load into a
learnable parameter and are fine-tuned, as in MAE fine-tuning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigBase

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


# ----------------------------------------------------------------------------- output


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


# ----------------------------------------------------------------------------- module


class ViTImageEncoder(nn.Module):
    """ViT whose forward is split so that callers can drop patches in between.

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


__all__ = [
    "ViTImageEncoderConfig",
    "ViTImageEncoderOutput",
    "ViTImageEncoder",
    "interpolate_position_embeddings",
    "load_pretrained_vit",
]
