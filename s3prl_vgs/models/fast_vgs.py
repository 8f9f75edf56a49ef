"""FaST-VGS: Fast-Slow Transformer for Visually Grounding Speech.

Paper: P. Peng and D. Harwath, "Fast-Slow Transformer for Visually Grounding
Speech", ICASSP 2022. Official code: ``jasonppy/FaST-VGS-Family`` @ ``a1f6aee``
(``models/fast_vgs.py``, ``models/utils.py``, ``models/w2v2_model.py``).
Where the code departs from the paper we follow the code; each such copy is
marked ``NOTE(original)``.

Architecture (official COCO script sizes = the ``base`` preset):
  audio:  wav2vec2 conv (frozen) + CLS before pos_conv + first 8 layers (Trm1,
          :class:`~s3prl_vgs.modules.speech_trunk.SpeechTrunk`) -> ResDAVEnet
          "Conv2" (Linear first layer, 16x downsampling) -> CLS + 1 BERT layer
          (Trm2) -> coarse audio vector;
  image:  36 RoIs (2048-d + x1y1x2y2 boxes) -> averaged feature/box embeddings
          -> CLS + 6 BERT layers (Trm) -> coarse image vector;
  cross:  2 LXMERT-style layers (one shared cross-attention for both
          directions, bare self-attention) over Trm2 and Trm outputs -> 2-linear
          head on the two CLS outputs -> fine score.
  loss:   0.1 * masked margin softmax(coarse) + 1.0 * the same over all B^2
          fine scores of the batch.

What we changed (the computed function is the official one unless noted):
  * The speech trunk is built from ``transformers`` modules, not fairseq. Its
    default path and Conv2 here are padding invariant (a padded utterance
    computes what it computes alone, in eval mode): padded frames are zeroed
    between the Conv2 convolutions and the Conv2 mask follows the conv-length
    rule. ``speech.official_compat=True`` restores the official masks
    (sample-chunk rule, ``round(T/T2)`` pooling ratio) for converted weights.
  * ``eval()`` is honoured (the official training forward forces ``.train()``
    on the wav2vec2 part).
  * ``fine_scores`` is an exact fast path: the first cross layer's Q/K/V are
    projected once per item and gathered per pair, and the last cross layer
    computes its self-attention query, feed-forward and output at the two CLS
    positions only, with the keys/values folded into the query (see
    :meth:`BertAttention.forward_first_query`). ``FaSTVGSCrossEncoder.forward``
    keeps the official all-positions computation as the reference.
  * The dead ``audio_cls_token_proj_coarse`` head exists only with
    ``keep_dead_params=True`` (so official state dicts load key for key).
  * No BertAdam: see :mod:`s3prl_vgs.optim` for the same LR schedule.
"""

from __future__ import annotations

import math
from functools import partial
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.utils.checkpoint
from torch import nn

from ..config import ConfigBase, ConfigError
from .. import distributed
from ..losses import global_same_image_mask, masked_margin_softmax_loss
from ..modules.speech_trunk import SpeechTrunk, SpeechTrunkConfig, lengths_to_padding_mask
from ..modules.transformer import (
    BERT_LAYER_NORM_EPS,
    BertAttention,
    BertCrossattLayer,
    BertIntermediate,
    BertLayer,
    BertOutput,
    additive_mask,
    init_bert_weights,
)
from .base import AudioOutput, ImageOutput, InputSpec, TrainOutput, VGSModelMixin, minimum_samples

# ----------------------------------------------------------------------------- config


@dataclass
class FaSTVGSConfig(ConfigBase):
    """FaST-VGS sizes and loss weights; defaults are the official COCO script.

    Flag names follow the official argparse (``layer_use``, ``trm_layers``,
    ``xtrm_layers``, ``hidden_size``, ``num_attention_heads``,
    ``intermediate_size``, ``visual_feat_dim``, ``visual_pos_dim``,
    ``img_feat_len``, ``margin``, ``coarse_matching_weight``,
    ``fine_matching_weight``).
    """

    speech: SpeechTrunkConfig = field(default_factory=SpeechTrunkConfig)  # Conv1 + Trm1 (wav2vec2)
    layer_use: int = 7  # Trm1 layer (0-based) feeding Conv2; speech.num_layers >= layer_use + 1 (FaST-VGS+ keeps 12)
    hidden_size: int = 768  # BERT width of Trm2, image Trm and cross layers
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    trm_layers: int = 6  # image Trm layers
    xtrm_layers: int = 2  # cross-modal layers
    visual_feat_dim: int = 2048  # RoI feature width
    # Standardise each RoI feature dimension with the training set's mean/std before visn_fc
    # (ESPnet's global_mvn, for RoI features): stored as buffers, so exports and evaluation
    # apply the same statistics. Off officially (BUTD features are well scaled); the demo's
    # random-ResNet features are not, and a linear layer on them learns slowly.
    visual_feat_mvn: bool = False
    visual_pos_dim: int = 4  # normalised x1, y1, x2, y2
    img_feat_len: int = 36  # RoIs the data pipeline keeps per image (by detector confidence)
    resdavenet_widths: Tuple[int, ...] = (128, 128, 256, 512, 768)  # Linear out, then the 4 stages
    resdavenet_layers: Tuple[int, ...] = (2, 2, 2, 2)  # blocks per stage; each stage halves the frame rate
    resdavenet_kernel: int = 9
    margin: float = 1.0  # delta of the masked margin softmax loss
    # std of the BERT-style normal init of every Linear/Embedding outside the trunk. 0.02 is the
    # official (BERT's) value, tuned for 768-d; at a few dozen dimensions it shrinks each
    # projection's output to a small fraction of its input, so the untemperatured scores start
    # near-constant and learn slowly (the demo presets scale it with the width).
    initializer_range: float = 0.02
    coarse_matching_weight: float = 0.1
    fine_matching_weight: float = 1.0
    keep_dead_params: bool = False  # build the unused audio_cls_token_proj_coarse head (official checkpoints)
    # Fine-loss pairs under DDP: "global" = all B_global^2 pairs (the paper's batch; the official
    # DataParallel scores the whole batch), each rank scoring its B_r x B_global rows; "local" = each
    # rank's own B_r^2 pairs only (N^2 fewer than global), the coarse loss staying global.
    fine_pairs: str = "global"
    # Fine loss in chunks of this many pairs with activation checkpointing (torch.utils.checkpoint):
    # a chunk's cross-layer activations are recomputed in backward instead of kept, so the B^2 pairs
    # cost one chunk's activations (benchmarks/memory.py). 0 = all pairs at once, as the official code.
    # Same loss and gradients either way (tested within 1e-6); it trades memory for one more forward.
    fine_chunk_size: int = 0

    PRESETS = {
        "base": {},
        # The parity fixture's sizes (reference/parity, fast_vgs_small_A): same
        # architecture and 20 ms / 320-sample frames, ~0.75 M parameters.
        "tiny": {
            "speech": {
                "hidden_size": 64,
                "num_heads": 4,
                "intermediate_size": 256,
                "num_layers": 2,
                "conv_dim": [32] * 7,
            },
            "layer_use": 1,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "trm_layers": 2,
            "xtrm_layers": 1,
            "visual_feat_dim": 32,
            "resdavenet_widths": [16, 16, 32, 48, 64],
        },
    }

    def __post_init__(self):
        if isinstance(self.speech, dict):
            self.speech = SpeechTrunkConfig.from_dict(self.speech)
        self._check(self.fine_pairs in ("global", "local"), f"fine_pairs must be global or local, got {self.fine_pairs!r}")
        self._check(self.fine_chunk_size >= 0, f"fine_chunk_size must be >= 0 (0 = off), got {self.fine_chunk_size}")
        self._check(self.layer_use >= 0, f"layer_use must be >= 0, got {self.layer_use}")
        # NOTE(original): DualEncoder sets encoder_layers = layer_use + 1 and taps the last one;
        # FaST-VGS+ keeps all 12 (layers 8-11 trained by its wav2vec2 loss) and still taps layer_use.
        self._check(
            self.speech.num_layers >= self.layer_use + 1,
            f"speech.num_layers ({self.speech.num_layers}) must be at least layer_use + 1 ({self.layer_use + 1})",
        )
        self._check(self.hidden_size % self.num_attention_heads == 0,
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        self._check(self.trm_layers >= 0, "trm_layers must be >= 0")
        self._check(self.xtrm_layers >= 1, "xtrm_layers must be >= 1 (the fine score needs a cross layer)")
        self._check(len(self.resdavenet_widths) == len(self.resdavenet_layers) + 1,
                    "resdavenet_widths needs one width for the Linear layer plus one per stage")
        self._check(self.resdavenet_widths[-1] == self.hidden_size,
                    f"the last ResDAVEnet width ({self.resdavenet_widths[-1]}) must equal hidden_size ({self.hidden_size})")
        self._check(all(n >= 1 for n in self.resdavenet_layers), "every ResDAVEnet stage needs >= 1 block")
        self._check(self.resdavenet_kernel % 2 == 1, "resdavenet_kernel must be odd")
        for name in ("visual_feat_dim", "visual_pos_dim", "img_feat_len", "intermediate_size"):
            self._check(getattr(self, name) >= 1, f"{name} must be >= 1")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            self._check(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1)")
        for name in ("coarse_matching_weight", "fine_matching_weight"):
            self._check(getattr(self, name) >= 0.0, f"{name} must be >= 0")

    @classmethod
    def preset(cls, name: str = "base", **overrides: Any) -> "FaSTVGSConfig":
        """A named preset with overrides; ``speech`` overrides merge into the preset's.

        ``layer_use`` alone also sets ``speech.num_layers = layer_use + 1``.

        Example:
            >>> cfg = FaSTVGSConfig.preset("tiny", speech={"official_compat": True})
        """
        if name not in cls.PRESETS:
            raise ConfigError(f"{cls.__name__}: unknown preset {name!r}; choose from {sorted(cls.PRESETS)}")
        values = dict(cls.PRESETS[name])
        speech = dict(values.get("speech", {}))
        extra = overrides.pop("speech", None) or {}
        if isinstance(extra, SpeechTrunkConfig):
            extra = extra.to_dict()
        speech.update(extra)
        values.update(overrides)
        if "layer_use" in overrides and "num_layers" not in extra:
            speech["num_layers"] = overrides["layer_use"] + 1
        values["speech"] = speech
        return cls.from_dict(values)

    @property
    def official_compat(self) -> bool:
        return self.speech.official_compat

    @property
    def conv2_downsample(self) -> int:
        """Trm1 frames per Trm2 frame (16 with 4 stages)."""
        return 2 ** len(self.resdavenet_layers)

    @property
    def downsample_rate(self) -> int:
        """Samples per Trm1 frame (320 = 20 ms at 16 kHz)."""
        return self.speech.downsample_rate

    @property
    def input_spec(self) -> InputSpec:
        """RoI rows + boxes; Trm1 frames at 20 ms, Trm2 frames at 16x that."""
        return InputSpec(
            image_input="roi",
            min_audio_samples=minimum_samples(self.speech.conv_kernel, self.speech.conv_stride),
            downsample_rates={"hidden_states": self.downsample_rate,
                              "trm2_hidden_states": self.downsample_rate * self.conv2_downsample},
            embed_dim=self.hidden_size,
            has_fine_scores=True,
            roi_feat_dim=self.visual_feat_dim,
            roi_pos_dim=self.visual_pos_dim,
            max_rois=self.img_feat_len,
        )

    def image_transform(self, train: bool):
        """None: the image side reads RoI feature rows, not image files."""
        return None


# ----------------------------------------------------------------------------- outputs


@dataclass
class FaSTVGSAudioOutput(AudioOutput):
    """Audio encoder outputs (:class:`~s3prl_vgs.models.base.AudioOutput`).

    T = Trm1 frames (20 ms), T2 = Conv2/Trm2 frames (320 ms):
    coarse (B, D) = trm2_proj(Trm2 CLS); tokens (B, 1+T2, D) = Trm2 output, CLS
    first, what the cross encoder reads; tokens_padding_mask (B, 1+T2), never
    True at the CLS; hidden_states = speech.num_layers+1 x (B, T, D1): the
    projected conv features and each Trm1 layer, CLS removed; padding_mask (B, T).
    """

    trm2_hidden_states: Tuple[torch.Tensor, ...] = ()  # 2 x (B, T2, D): Conv2 output (Trm2 input), Trm2 output; CLS removed

    @property
    def trm2_padding_mask(self) -> torch.Tensor:
        """(B, T2) bool, True at pad, for ``trm2_hidden_states``."""
        return self.tokens_padding_mask[:, 1:]

    def hidden_state_sets(self):
        sets = super().hidden_state_sets()
        if self.trm2_hidden_states:
            sets["trm2_hidden_states"] = tuple(self.trm2_hidden_states)
        return sets


@dataclass
class FaSTVGSImageOutput(ImageOutput):
    """Image encoder outputs. R = RoIs: tokens (B, 1+R, D) Trm output, CLS first;
    tokens_padding_mask (B, 1+R) all False (every RoI is attended);
    hidden_states trm_layers+1 x (B, R, D): RoI embeddings, each Trm layer, CLS removed."""


@dataclass
class FaSTVGSOutput(TrainOutput):
    """Training forward. ``losses``: ``coarse``, ``fine`` (0 when fine_matching_weight == 0);
    ``batch_scores``: ``coarse`` and (when fine_matching_weight > 0) ``fine``, (B, B), audios as rows.
    ``loss`` = coarse_matching_weight * coarse + fine_matching_weight * fine."""

    @property
    def coarse_loss(self) -> torch.Tensor:
        return self.losses["coarse"]

    @property
    def fine_loss(self) -> torch.Tensor:
        return self.losses["fine"]

    @property
    def coarse_scores(self) -> torch.Tensor:
        return self.batch_scores["coarse"]

    @property
    def fine_scores(self) -> Optional[torch.Tensor]:
        return self.batch_scores.get("fine")


# ----------------------------------------------------------------------------- free functions


def conv2_frame_lengths(n_frames: torch.Tensor, num_frames: int, num_frames2: int, num_stages: int,
                        official_compat: bool = False) -> torch.Tensor:
    """Valid Conv2 frames for ``n_frames`` valid Trm1 frames.

    Args:
        n_frames: (B,) valid Trm1 frames.
        num_frames: T, padded Trm1 length.
        num_frames2: T2, padded Conv2 length.
        num_stages: stride-2 stages.
        official_compat: use the official ratio rule.
    """
    if official_compat:
        # NOTE(original): pooling_ratio = round(T / T2) (15 for 3 s, 16 for 8 s), then
        # trunc(n / ratio), which can drop a partly valid last frame.
        ratio = max(round(num_frames / max(num_frames2, 1)), 1)
        return torch.div(n_frames, ratio, rounding_mode="trunc")
    # A stride-2, "same"-padded conv maps n valid frames to ceil(n / 2).
    n = n_frames
    for _ in range(num_stages):
        n = torch.div(n + 1, 2, rounding_mode="floor")
    return n


def all_pairs(n_audio: int, n_image: int, device=None) -> torch.Tensor:
    """(n_audio * n_image, 2) long pairs (audio i, image j), pair k = i * n_image + j."""
    a = torch.arange(n_audio, device=device).repeat_interleave(n_image)
    v = torch.arange(n_image, device=device).repeat(n_audio)
    return torch.stack([a, v], dim=1)


def _as_outputs(x, what: str):
    if getattr(x, "tokens", None) is None or getattr(x, "tokens_padding_mask", None) is None:
        raise TypeError(f"{what} must be the output of encode_{what} (with .tokens and .tokens_padding_mask), "
                        f"got {type(x).__name__}")
    return x


# ----------------------------------------------------------------------------- modules


class ResDAVEnetBlock(nn.Module):
    """Residual block of two (1, k) convolutions (official ``SpeechBasicBlock``).

    Tensors are (B, C, 1, T) as in the official code, so its Conv2d/BatchNorm2d
    weights load unchanged.
    """

    def __init__(self, inplanes: int, planes: int, kernel: int = 9, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=(1, kernel), stride=(1, stride), padding=(0, pad), bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=(1, kernel), stride=1, padding=(0, pad), bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, keep_in: Optional[torch.Tensor] = None, keep_out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C, 1, T) -> (B, C', 1, ceil(T / stride)).

        ``keep_in``/``keep_out``: optional (B, 1, 1, T) {0, 1} masks; padded frames
        are zeroed before each convolution so they act as the conv's zero padding.
        """
        if keep_in is not None:
            x = x * keep_in
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if keep_out is not None:
            out = out * keep_out
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class ResDAVEnet(nn.Module):
    """Conv2: the FaST-VGS variant of ResDAVEnet (official ``ResDavenet``).

    NOTE(original): the first Conv2d over a filterbank is replaced by
    ``Linear(feat_dim, widths[0])``; every stage starts with a stride-2 block
    (16x downsampling with 4 stages), and every stage's first block has a
    1x1-conv + BN downsample branch, even when the width does not change.
    """

    def __init__(self, feat_dim: int, widths: Sequence[int] = (128, 128, 256, 512, 768),
                 layers: Sequence[int] = (2, 2, 2, 2), kernel: int = 9):
        super().__init__()
        self.kernel = kernel
        self.linear = nn.Linear(feat_dim, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.num_stages = len(layers)
        inplanes = widths[0]
        for i, (planes, blocks) in enumerate(zip(widths[1:], layers)):
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, kernel_size=1, stride=(1, 2), bias=False), nn.BatchNorm2d(planes))
            stage = [ResDAVEnetBlock(inplanes, planes, kernel, stride=2, downsample=downsample)]
            stage += [ResDAVEnetBlock(planes, planes, kernel) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = planes

    def stages(self):
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T, D1) -> (B, ceil(T / 2^stages), widths[-1]).

        Args:
            lengths: (B,) valid frames; when given, padded frames are zeroed before
                every convolution, so valid outputs do not depend on the padding.
        """
        x = self.relu(self.bn1(self.linear(x).transpose(1, 2).unsqueeze(2)))  # (B, T, C0) -> (B, C0, 1, T)
        n = lengths
        for stage in self.stages():
            for j, block in enumerate(stage):
                keep_in = keep_out = None
                if n is not None:
                    T_in = x.size(-1)
                    keep_in = _keep_mask(n, T_in, x.dtype)
                    if j == 0:  # the stride-2 block: T -> ceil(T / 2), n -> ceil(n / 2)
                        n = torch.div(n + 1, 2, rounding_mode="floor")
                        T_in = (T_in + 1) // 2
                    keep_out = _keep_mask(n, T_in, x.dtype)
                x = block(x, keep_in, keep_out)
        return x.squeeze(2).transpose(1, 2)  # (B, C, 1, T2) -> (B, T2, C)


def _keep_mask(n: torch.Tensor, T: int, dtype: torch.dtype) -> torch.Tensor:
    """(B,) valid lengths -> (B, 1, 1, T) float, 1 at valid frames."""
    return (~lengths_to_padding_mask(n, T)).to(dtype)[:, None, None, :]


class VisualFeatEncoder(nn.Module):
    """RoI features + boxes -> embeddings (LXMERT style).

    NOTE(original): the feature and box embeddings are each layer-normalised and
    then *averaged*, ``(LN(W_f f) + LN(W_b b)) / 2``, followed by dropout.
    """

    def __init__(self, visual_feat_dim: int, visual_pos_dim: int, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.visn_fc = nn.Linear(visual_feat_dim, hidden_size)
        self.visn_layer_norm = nn.LayerNorm(hidden_size, eps=BERT_LAYER_NORM_EPS)
        self.box_fc = nn.Linear(visual_pos_dim, hidden_size)
        self.box_layer_norm = nn.LayerNorm(hidden_size, eps=BERT_LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, feats: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(B, R, F), (B, R, 4) -> (B, R, D)."""
        x = self.visn_layer_norm(self.visn_fc(feats))
        y = self.box_layer_norm(self.box_fc(boxes))
        return self.dropout((x + y) / 2)


class FaSTVGSCrossLayer(nn.Module):
    """One cross-modal layer (official ``LXMERTXLayer``).

    NOTE(original): a *single* cross-attention block (``visual_attention``) serves
    both directions, both computed from the layer inputs; the self-attentions
    are bare ``BertAttention`` (no output dense, residual or LayerNorm); each
    stream then has a BERT feed-forward block with residual + LayerNorm.
    """

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, dropout: float = 0.1,
                 attention_dropout: float = 0.1):
        super().__init__()
        self.visual_attention = BertCrossattLayer(hidden_size, num_heads, dropout, attention_dropout)
        self.audio_self_att = BertAttention(hidden_size, num_heads, attention_dropout)
        self.visn_self_att = BertAttention(hidden_size, num_heads, attention_dropout)
        self.audio_inter = BertIntermediate(hidden_size, intermediate_size)
        self.audio_output = BertOutput(hidden_size, intermediate_size, dropout)
        self.visn_inter = BertIntermediate(hidden_size, intermediate_size)
        self.visn_output = BertOutput(hidden_size, intermediate_size, dropout)

    def cross(self, a, a_mask, v, v_mask, a_proj=None, v_proj=None):
        """Cross-attention of both streams; ``*_proj`` = precomputed (q, k, v) heads.

        a: (P, Ta, D), v: (P, Tv, D), masks additive (P, 1, 1, T) or None.
        """
        att, out = self.visual_attention.att, self.visual_attention.output
        qa, ka, va = a_proj if a_proj is not None else (att.project_query(a), *att.project_key_value(a))
        qv, kv, vv = v_proj if v_proj is not None else (att.project_query(v), *att.project_key_value(v))
        a_x = out(att.attend(qa, kv, vv, v_mask), a)  # audio queries, image keys/values
        v_x = out(att.attend(qv, ka, va, a_mask), v)  # image queries, audio keys/values
        return a_x, v_x

    def self_ffn(self, a_x, a_mask, v_x, v_mask):
        """Bare self-attention + feed-forward at every position."""
        a_s = self.audio_self_att(a_x, a_x, a_mask)
        v_s = self.visn_self_att(v_x, v_x, v_mask)
        return self.audio_output(self.audio_inter(a_s), a_s), self.visn_output(self.visn_inter(v_s), v_s)

    def self_ffn_first(self, a_x, a_mask, v_x, v_mask):
        """The same at the CLS positions only: (P, D) each."""
        a_s = self.audio_self_att.forward_first_query(a_x, a_mask)
        v_s = self.visn_self_att.forward_first_query(v_x, v_mask)
        return self.audio_output(self.audio_inter(a_s), a_s), self.visn_output(self.visn_inter(v_s), v_s)

    def forward(self, a, a_mask, v, v_mask=None):
        """Official per-pair computation: (P, Ta, D), (P, Tv, D) -> same shapes."""
        a_x, v_x = self.cross(a, a_mask, v, v_mask)
        return self.self_ffn(a_x, a_mask, v_x, v_mask)


class FaSTVGSCrossEncoder(nn.Module):
    """Cross-modal layers + fine score head (official ``CrossEncoder``)."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, num_layers: int,
                 dropout: float = 0.1, attention_dropout: float = 0.1):
        super().__init__()
        self.xtrm = nn.ModuleList(
            [FaSTVGSCrossLayer(hidden_size, num_heads, intermediate_size, dropout, attention_dropout) for _ in range(num_layers)]
        )
        # NOTE(original): two linear layers (keys fc.0 / fc.2), not the paper's 3-layer MLP.
        self.fc = nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 1))

    def head(self, a_cls: torch.Tensor, v_cls: torch.Tensor) -> torch.Tensor:
        """(P, D), (P, D) -> (P,) fine scores."""
        return self.fc(torch.cat([a_cls, v_cls], dim=-1)).squeeze(-1)

    def forward(self, audio_tokens, audio_mask, image_tokens, image_mask=None) -> torch.Tensor:
        """Reference: the official computation, one row per pair, every position of every layer.

        Args:
            audio_tokens: (P, 1+Ta, D); audio_mask: (P, 1+Ta) bool, True at pad.
            image_tokens: (P, 1+Tv, D); image_mask: (P, 1+Tv) bool or None.

        Returns:
            (P,) fine scores.
        """
        am, vm = additive_mask(audio_mask, audio_tokens.dtype), additive_mask(image_mask, image_tokens.dtype)
        a, v = audio_tokens, image_tokens
        for layer in self.xtrm:
            a, v = layer(a, am, v, vm)
        return self.head(a[:, 0], v[:, 0])

    def project_items(self, tokens: torch.Tensor):
        """First-layer cross-attention (q, k, v) heads of each item: 3 x (N, H, T, Dh)."""
        att = self.xtrm[0].visual_attention.att
        return (att.project_query(tokens), *att.project_key_value(tokens))

    def score_gathered(self, a_tok, a_mask, a_proj, v_tok, v_mask, v_proj, a_idx, v_idx) -> torch.Tensor:
        """Fast exact scores of pairs (a_idx[p], v_idx[p]) from per-item inputs.

        Args:
            a_tok: (Na, Ta, D) items; a_mask: additive (Na, 1, 1, Ta) or None;
            a_proj: ``project_items(a_tok)``; likewise for the images.
            a_idx, v_idx: (P,) long item indices.

        Returns:
            (P,) scores, equal to ``forward`` on the gathered pairs.
        """
        first, last = self.xtrm[0], self.xtrm[-1]
        a, v = a_tok[a_idx], v_tok[v_idx]  # (P, Ta, D), (P, Tv, D)
        am = None if a_mask is None else a_mask[a_idx]
        vm = None if v_mask is None else v_mask[v_idx]
        a_x, v_x = first.cross(a, am, v, vm,
                               a_proj=tuple(t[a_idx] for t in a_proj), v_proj=tuple(t[v_idx] for t in v_proj))
        if len(self.xtrm) == 1:
            return self.head(*first.self_ffn_first(a_x, am, v_x, vm))
        a, v = first.self_ffn(a_x, am, v_x, vm)
        for layer in self.xtrm[1:-1]:
            a, v = layer(a, am, v, vm)
        a_x, v_x = last.cross(a, am, v, vm)
        return self.head(*last.self_ffn_first(a_x, am, v_x, vm))


# ----------------------------------------------------------------------------- model


class FaSTVGS(VGSModelMixin, nn.Module):
    """FaST-VGS dual + cross encoder.

    Example:
        >>> import s3prl_vgs, torch
        >>> model = s3prl_vgs.build_model("fast_vgs", preset="tiny").eval()
        >>> audio = model.encode_audio(torch.randn(2, 16000), torch.tensor([16000, 12000]))
        >>> image = model.encode_image(torch.randn(3, 36, 32), torch.rand(3, 36, 4))
        >>> model.coarse_scores(audio, image).shape, model.fine_scores(audio, image).shape
        (torch.Size([2, 3]), torch.Size([2, 3]))
    """

    model_name = "fast_vgs"
    config_class = FaSTVGSConfig

    def __init__(self, config: FaSTVGSConfig):
        super().__init__()
        if not isinstance(config, FaSTVGSConfig):
            raise TypeError(f"FaSTVGS needs a FaSTVGSConfig, got {type(config).__name__}")
        self.config = c = config
        D, H, F = c.hidden_size, c.num_attention_heads, c.intermediate_size
        drop, adrop = c.hidden_dropout_prob, c.attention_probs_dropout_prob
        # audio: Conv1 + Trm1 (official conv1_trm1_trm3), Conv2, Trm2
        self.trunk = SpeechTrunk(c.speech)
        self.conv2 = ResDAVEnet(c.speech.hidden_size, c.resdavenet_widths, c.resdavenet_layers, c.resdavenet_kernel)
        self.audio_cls_token_proj_pre = nn.Sequential(nn.Linear(c.speech.hidden_size, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        if c.keep_dead_params:
            # NOTE(original): computed and then overwritten by trm2_proj in the official code; never used here.
            self.audio_cls_token_proj_coarse = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.trm2 = BertLayer(D, H, F, drop, adrop)
        self.trm2_proj = nn.Linear(D, D)
        # image: RoI embeddings + CLS + Trm
        self.visn_fc = VisualFeatEncoder(c.visual_feat_dim, c.visual_pos_dim, D, drop)
        if c.visual_feat_mvn:
            self.register_buffer("visual_feat_mean", torch.zeros(c.visual_feat_dim))
            self.register_buffer("visual_feat_std", torch.ones(c.visual_feat_dim))
        self.visual_cls_token = nn.Parameter(torch.empty(1, 1, D))
        self.trm = nn.ModuleList([BertLayer(D, H, F, drop, adrop) for _ in range(c.trm_layers)])
        self.visual_cls_token_proj_coarse = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        # cross
        self.cross_encoder = FaSTVGSCrossEncoder(D, H, F, c.xtrm_layers, drop, adrop)
        self._init_weights()

    def set_visual_feat_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the RoI feature statistics of ``visual_feat_mvn`` (e.g. :func:`~s3prl_vgs.features.store.feature_stats`)."""
        c = self.config
        if not c.visual_feat_mvn:
            raise ValueError("set_visual_feat_stats needs visual_feat_mvn: true in the config")
        if mean.shape != (c.visual_feat_dim,) or std.shape != (c.visual_feat_dim,):
            raise ValueError(f"RoI feature statistics must be ({c.visual_feat_dim},), got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("RoI feature statistics must be finite with std > 0")
        self.visual_feat_mean.copy_(mean)
        self.visual_feat_std.copy_(std)

    @property
    def speech_trunk(self) -> SpeechTrunk:
        """The wav2vec2 Conv1 + Trm1 trunk (the contract's name for every family's speech trunk)."""
        return self.trunk

    def _init_weights(self) -> None:
        """Official init for everything but the trunk (which keeps its own or pretrained init)."""
        for name, module in self.named_children():
            if name == "trunk":
                continue
            module.apply(partial(init_bert_weights, std=self.config.initializer_range))
        for m in self.conv2.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # NOTE(original): the CLS token is torch.randn (std 1), not std 0.02.
        nn.init.normal_(self.visual_cls_token, 0.0, 1.0)

    # ------------------------------------------------------------------ encoders

    def encode_audio(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> FaSTVGSAudioOutput:
        """Encode 16 kHz waveforms.

        Args:
            wavs: (B, L) zero-padded waveforms (normalised inside when
                ``speech.normalize_waveform``).
            lengths: (B,) valid samples (default: all L).
        """
        trunk = self.trunk(wavs, lengths)
        tap = self.config.layer_use + 1  # hidden_states[0] is the projected conv output
        out = self.encode_audio_frames(trunk.cls_hidden_states[tap], trunk.hidden_states[tap], trunk.padding_mask)
        out.hidden_states = trunk.hidden_states
        return out

    def encode_audio_frames(self, cls: torch.Tensor, frames: torch.Tensor, padding_mask: torch.Tensor) -> FaSTVGSAudioOutput:
        """Conv2 + Trm2 on Trm1 outputs (the part of ``encode_audio`` after the trunk).

        Args:
            cls: (B, D1) Trm1 CLS of layer ``layer_use``.
            frames: (B, T, D1) Trm1 frames of that layer.
            padding_mask: (B, T) bool, True at pad.
        """
        c = self.config
        n_frames = (~padding_mask).sum(-1)
        if c.official_compat:
            # NOTE(original): Conv2 sees the padded frames as they are.
            x = self.conv2(frames)
        else:
            x = self.conv2(frames, n_frames)  # (B, T2, D)
        n2 = conv2_frame_lengths(n_frames, frames.size(1), x.size(1), self.conv2.num_stages, c.official_compat)
        pad2 = lengths_to_padding_mask(n2, x.size(1))  # (B, T2)
        seq = torch.cat([self.audio_cls_token_proj_pre(cls)[:, None], x], dim=1)  # (B, 1+T2, D)
        mask = torch.cat([pad2.new_zeros(pad2.size(0), 1), pad2], dim=1)  # (B, 1+T2); the CLS is never padding
        out = self.trm2(seq, additive_mask(mask, seq.dtype))
        # NOTE(original): the coarse vector is trm2_proj of the Trm2 CLS (no L2 norm).
        coarse = self.trm2_proj(out[:, 0])
        return FaSTVGSAudioOutput(coarse=coarse, tokens=out, tokens_padding_mask=mask, padding_mask=padding_mask,
                                  downsample_rate=c.downsample_rate, trm2_hidden_states=(x, out[:, 1:]))

    def encode_image(self, feats: torch.Tensor, boxes: torch.Tensor) -> FaSTVGSImageOutput:
        """Encode RoI tables.

        Args:
            feats: (B, R, visual_feat_dim) RoI features (R = img_feat_len officially).
            boxes: (B, R, 4) boxes x1/w, y1/h, x2/w, y2/h in [0, 1].
        """
        c = self.config
        if feats.dim() != 3 or feats.size(-1) != c.visual_feat_dim:
            raise ValueError(f"feats must be (B, R, {c.visual_feat_dim}), got {tuple(feats.shape)}")
        if boxes.shape != feats.shape[:2] + (c.visual_pos_dim,):
            raise ValueError(f"boxes must be (B, R, {c.visual_pos_dim}) = {tuple(feats.shape[:2]) + (c.visual_pos_dim,)}, got {tuple(boxes.shape)}")
        if c.visual_feat_mvn:
            # empty RoI slots (all-zero rows) stay zero, as the store pads them
            empty = (feats == 0).all(-1, keepdim=True)
            z = (feats - self.visual_feat_mean.to(feats.dtype)) / self.visual_feat_std.to(feats.dtype)
            feats = z.masked_fill(empty, 0.0)
        x = self.visn_fc(feats, boxes.to(feats.dtype))  # (B, R, D)
        hidden = [x]
        x = torch.cat([self.visual_cls_token.expand(x.size(0), -1, -1).to(x.dtype), x], dim=1)  # (B, 1+R, D)
        for layer in self.trm:
            # NOTE(original): no attention mask on the image side; all RoIs are attended.
            x = layer(x, None)
            hidden.append(x[:, 1:])
        coarse = self.visual_cls_token_proj_coarse(x[:, 0])
        mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        return FaSTVGSImageOutput(coarse=coarse, tokens=x, tokens_padding_mask=mask, hidden_states=tuple(hidden))

    # ------------------------------------------------------------------ scores

    @staticmethod
    def coarse_scores(audio: Union[FaSTVGSAudioOutput, torch.Tensor], image: Union[FaSTVGSImageOutput, torch.Tensor]) -> torch.Tensor:
        """(N_audio, N_image) dot products of the coarse vectors, audios as rows.

        NOTE(original): the official S has images as rows; the loss is symmetric.
        """
        return VGSModelMixin.coarse_scores(audio, image)

    def fine_scores(self, audio: FaSTVGSAudioOutput, image: FaSTVGSImageOutput, pairs: Optional[torch.Tensor] = None,
                    chunk_size: Optional[int] = 256, checkpoint: bool = False) -> torch.Tensor:
        """Cross-encoder scores from cached encoder outputs (the encoders are not re-run).

        The first cross layer's projections are computed once per item used by
        ``pairs``; the pairs are then scored ``chunk_size`` at a time. Gradients
        flow when called under grad mode (the training forward uses this).

        Args:
            audio: ``encode_audio`` output (or a row subset of it).
            image: ``encode_image`` output.
            pairs: (P, 2) long (audio index, image index); None = every pair.
            chunk_size: pairs per chunk; None = all at once.
            checkpoint: under grad mode, recompute each chunk's activations in
                backward instead of keeping them (``config.fine_chunk_size``).

        Returns:
            (P,) scores, or (N_audio, N_image) with audios as rows when ``pairs`` is None.
        """
        audio, image = _as_outputs(audio, "audio"), _as_outputs(image, "image")
        Na, Ni = audio.tokens.size(0), image.tokens.size(0)
        device = audio.tokens.device
        if pairs is None:
            return self.fine_scores(audio, image, all_pairs(Na, Ni, device), chunk_size, checkpoint).view(Na, Ni)
        pairs = torch.as_tensor(pairs, device=device)
        if pairs.dim() != 2 or pairs.size(1) != 2 or pairs.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"pairs must be a (P, 2) integer tensor, got {tuple(pairs.shape)} {pairs.dtype}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        if pairs.numel() == 0:
            return audio.tokens.new_zeros(0)
        pairs = pairs.long()
        for col, n, what in ((0, Na, "audio"), (1, Ni, "image")):
            lo, hi = int(pairs[:, col].min()), int(pairs[:, col].max())
            if lo < 0 or hi >= n:
                raise IndexError(f"pairs: {what} index out of range [0, {n}): min {lo}, max {hi}")
        # Per-item work once: only the items that the pairs use.
        ua, a_idx = torch.unique(pairs[:, 0], return_inverse=True)
        uv, v_idx = torch.unique(pairs[:, 1], return_inverse=True)
        a_tok, v_tok = audio.tokens[ua], image.tokens[uv]
        a_mask = additive_mask(audio.tokens_padding_mask[ua], a_tok.dtype)
        v_mask = image.tokens_padding_mask[uv]
        v_mask = additive_mask(v_mask, v_tok.dtype) if bool(v_mask.any()) else None
        ce = self.cross_encoder
        a_proj, v_proj = ce.project_items(a_tok), ce.project_items(v_tok)
        step = pairs.size(0) if chunk_size is None else chunk_size
        score = ce.score_gathered
        if checkpoint and torch.is_grad_enabled():
            # Non-reentrant: gradients reach the per-item inputs and projections; the RNG state is
            # replayed, so the recomputed dropout masks are the forward's.
            def score(*args):
                return torch.utils.checkpoint.checkpoint(ce.score_gathered, *args, use_reentrant=False)
        out = [
            score(a_tok, a_mask, a_proj, v_tok, v_mask, v_proj, a_idx[s:s + step], v_idx[s:s + step])
            for s in range(0, pairs.size(0), step)
        ]
        return torch.cat(out)

    # ------------------------------------------------------------------ training

    def compute_loss(self, audio: FaSTVGSAudioOutput, image: FaSTVGSImageOutput, image_ids: Optional[Sequence] = None,
                     same_image: Optional[torch.Tensor] = None) -> FaSTVGSOutput:
        """Coarse and fine masked margin softmax losses of a batch of matched pairs.

        Under DDP the batch is the global one (:mod:`s3prl_vgs.distributed`):
        every rank's items are negatives, the scores are (B_global, B_global),
        and every rank returns the same global loss (whose gradients reach
        each rank's own items); ``config.fine_pairs`` picks the fine pairs.

        Args:
            audio, image: encoder outputs; row i of both is a matched pair.
            image_ids: (B,) image id per pair (other captions of the same image
                are removed from the softmaxes); or give ``same_image`` (B, B)
                bool (single process only).
        """
        c = self.config
        B = audio.tokens.size(0)
        if image.tokens.size(0) != B:
            raise ValueError(f"audio batch ({B}) and image batch ({image.tokens.size(0)}) differ")
        same_image = global_same_image_mask(B, image_ids, same_image, device=audio.tokens.device)
        coarse = self.coarse_scores(distributed.all_gather(audio.coarse), distributed.all_gather(image.coarse))
        coarse_loss = masked_margin_softmax_loss(coarse, same_image, c.margin)
        fine, fine_loss = None, coarse_loss.new_zeros(())
        if c.fine_matching_weight > 0:
            # NOTE(original): the fine loss scores all B^2 pairs of the batch (at once; in checkpointed
            # chunks with config.fine_chunk_size).
            chunked = {"chunk_size": c.fine_chunk_size or None, "checkpoint": c.fine_chunk_size > 0}
            if not distributed.is_distributed():
                fine = self.fine_scores(audio, image, **chunked)  # (B, B)
            elif c.fine_pairs == "global":
                # This rank's audios against every rank's images, then every rank's rows: (B_global, B_global).
                images = FaSTVGSImageOutput(coarse=image.coarse, tokens=distributed.all_gather(image.tokens),
                                            tokens_padding_mask=distributed.all_gather(image.tokens_padding_mask, True))
                fine = distributed.all_gather(self.fine_scores(audio, images, **chunked))
            else:  # "local": this rank's B x B block only
                offset, _ = distributed.batch_offset(B, audio.tokens.device)
                fine = self.fine_scores(audio, image, **chunked)
                same_image = None if same_image is None else same_image[offset:offset + B, offset:offset + B]
            fine_loss = masked_margin_softmax_loss(fine, same_image, c.margin)
        loss = c.coarse_matching_weight * coarse_loss + c.fine_matching_weight * fine_loss
        scores = {"coarse": coarse} if fine is None else {"coarse": coarse, "fine": fine}
        return FaSTVGSOutput(loss=loss, losses={"coarse": coarse_loss, "fine": fine_loss}, batch_scores=scores,
                             audio=audio, image=image)

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor], feats: torch.Tensor, boxes: torch.Tensor,
                image_ids: Optional[Sequence] = None, same_image: Optional[torch.Tensor] = None) -> FaSTVGSOutput:
        """Training forward: encode a batch of matched (caption, image) pairs and compute the losses."""
        audio = self.encode_audio(wavs, lengths)
        image = self.encode_image(feats, boxes)
        return self.compute_loss(audio, image, image_ids=image_ids, same_image=same_image)


# ----------------------------------------------------------------------------- checkpoint_filter_fn


def official_key_rules():
    """The authors' key names -> ours: ``(regex, target or None, why dropped)`` rules for :mod:`s3prl_vgs.convert`.

    Official FaST-VGS (+) state dicts hold ``dual_encoder.*`` and
    ``cross_encoder.*`` (``reference/official-code.md`` section 7). Every key
    maps onto an attribute of :class:`FaSTVGS` or is dropped with a reason.
    """
    from ..convert import speech_key_rules

    return [
        *speech_key_rules("dual_encoder.conv1_trm1_trm3.", "trunk."),
        (r"dual_encoder\.audio_cls_token_proj_coarse\..*", None,
         "dead: computed by the official forward, then overwritten by trm2_proj(trm2[:, 0])"),
        (r"dual_encoder\.((?:conv2|audio_cls_token_proj_pre|trm2|trm2_proj|visn_fc|trm|visual_cls_token_proj_coarse)\..*)", r"\1", ""),
        (r"dual_encoder\.visual_cls_token", "visual_cls_token", ""),
        (r"cross_encoder\.((?:xtrm|fc)\..*)", r"cross_encoder.\1", ""),
    ]


def checkpoint_filter_fn(state_dict, model: Optional["FaSTVGS"] = None):
    """An official FaST-VGS (+) state dict under our key names (timm's ``checkpoint_filter_fn``).

    Dead and pretraining-only keys are left out; a key with no place in the
    model is a :class:`~s3prl_vgs.convert.ConversionError`. ``model`` is
    accepted for timm's signature; the map does not depend on it. The config
    that fits the weights comes from :func:`s3prl_vgs.convert.convert_official`.
    """
    from ..convert import apply_key_rules

    return apply_key_rules(state_dict, official_key_rules(), "fast_vgs")[0]


# ----------------------------------------------------------------------------- builders


def fast_vgs_base(**overrides: Any) -> FaSTVGS:
    """FaST-VGS at the official COCO sizes (random weights unless ``speech.pretrained``).

    Example:
        >>> model = fast_vgs_base(speech={"pretrained": "facebook/wav2vec2-base"})  # needs internet
    """
    return FaSTVGS(FaSTVGSConfig.preset("base", **overrides))


def fast_vgs_tiny(**overrides: Any) -> FaSTVGS:
    """A ~0.75 M-parameter FaST-VGS for CPU tests and the synthetic demo."""
    return FaSTVGS(FaSTVGSConfig.preset("tiny", **overrides))


__all__ = [
    "FaSTVGSConfig",
    "FaSTVGSAudioOutput",
    "FaSTVGSImageOutput",
    "FaSTVGSOutput",
    "conv2_frame_lengths",
    "all_pairs",
    "ResDAVEnetBlock",
    "ResDAVEnet",
    "VisualFeatEncoder",
    "FaSTVGSCrossLayer",
    "FaSTVGSCrossEncoder",
    "FaSTVGS",
    "official_key_rules",
    "checkpoint_filter_fn",
    "fast_vgs_base",
    "fast_vgs_tiny",
]
