"""The authors' checkpoints -> our models: FaST-VGS, FaST-VGS+ and VG-HuBERT.

The official code (``jasonppy/FaST-VGS-Family`` @ a1f6aee,
``jasonppy/word-discovery`` @ 809937b) saves ``best_bundle.pth`` (a dict with
the ``dual_encoder`` and, for FaST-VGS, ``cross_encoder`` state dicts plus the
optimizer and sampler state) and ``args.pkl`` (a pickled
``argparse.Namespace``). ``reference/official-code.md`` section 7 lists the
containers and key names.

* :func:`from_official` maps a state dict under the official key names
  (``dual_encoder.<k>`` / ``cross_encoder.<k>``) onto our model, configured
  from the official arguments and the tensor shapes. Every official key is
  either mapped or dropped with a reason (dead or pretraining-only heads);
  anything else, and any weight our model lacks, is an error listing the keys.
* ``vgs-convert`` reads the files without running pickled code: the bundle
  with ``torch.load(weights_only=True)``, ``args.pkl`` with an unpickler that
  admits only ``argparse.Namespace`` and plain values.

Converted models run with ``official_compat`` on, so they compute what they
were trained to compute (``reference/official-code.md`` 7.2): the sample-chunk
frame-mask rule, GroupNorm over the padded length with padded frames left in,
the ``round(T / T2)`` Conv2 ratio, the CLS where each code base puts it, and
(VG-HuBERT) DINO's bicubic position-embedding interpolation. The official
eval pads every clip to ``val_audio_feat_len`` seconds and its outputs depend
on that; :func:`pad_like_official` does the same for callers who want the
official numbers, and the pad length is recorded in the model directory.
"""

from __future__ import annotations

import argparse
import ast
import io
import logging
import math
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .cli import console_script
from .config import ConfigBase
from .data.audio import SAMPLE_RATE
from .errors import VGSError

logger = logging.getLogger(__name__)

KINDS = ("fast_vgs", "fast_vgs_plus", "vg_hubert")

# Official defaults where the argparse default differs from the released
# models' scripts (scripts/fast-vgs-coco.sh, word-discovery scripts/training.sh).
_SCRIPT_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "fast_vgs": dict(
        layer_use=7, encoder_attention_heads=12, num_attention_heads=12, img_feat_len=36, margin=1.0,
        coarse_matching_weight=0.1, fine_matching_weight=1.0, dropout=0.1, attention_dropout=0.1,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, feature_grad_mult=0.0, val_audio_feat_len=10.0,
        conv_feature_layers="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
        extractor_mode="default", conv_bias=False, layer_norm_first=False, activation_fn="gelu",
    ),
    "vg_hubert": dict(
        layer_use=11, encoder_attention_heads=12, margin=1.0, dropout=0.1, attention_dropout=0.1,
        feature_grad_mult=0.0, val_audio_feat_len=10.0, normalize=False, vit_arch="vitsmall", cls_loss=True,
        conv_feature_layers="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
        extractor_mode="default", conv_bias=False, layer_norm_first=False, activation_fn="gelu",
    ),
}
_SCRIPT_DEFAULTS["fast_vgs_plus"] = _SCRIPT_DEFAULTS["fast_vgs"]

# DINO ViT variants (word-discovery ``vit_{tiny,small,base}``): width -> heads.
_VIT_ARCHS = {"vittiny": (192, 3), "vitsmall": (384, 6), "vitbase": (768, 12)}


class ConversionError(VGSError, ValueError):
    """An official checkpoint or argument set that cannot become one of our models."""


@dataclass
class OfficialConversion:
    """What :func:`convert_official` found: our config, our state dict, what it dropped."""

    kind: str
    model_name: str  # registry name of our model
    config: ConfigBase
    state_dict: Dict[str, torch.Tensor]  # our key names
    dropped: Dict[str, str] = field(default_factory=dict)  # official key -> why it has no place in our model
    pad_samples: Optional[int] = None  # the official eval pad length (val_audio_feat_len), in samples

    def build(self) -> torch.nn.Module:
        """Our model with these weights, in eval mode."""
        from .checkpoint import load_state_dict_checked
        from .models import get_model_class

        model = get_model_class(self.model_name)(self.config)
        load_state_dict_checked(model, self.state_dict, source=f"official {self.kind} checkpoint")
        return model.eval()

    def summary(self) -> Dict[str, Any]:
        """Plain data for the model directory's ``config.yaml`` (``extra``)."""
        return {
            "kind": self.kind,
            "official_pad_samples": self.pad_samples,
            "dropped_official_keys": dict(sorted(self.dropped.items())),
        }


# ----------------------------------------------------------------------------- arguments


MAX_SPEC_CHARS = 1000  # the released strings are ~80 characters
MAX_SPEC_DEPTH = 32  # nesting of the expression tree ('+' chains included)
MAX_CONV_LAYERS = 64  # wav2vec2 has 7; a longer list is no real model


def parse_conv_feature_layers(spec: str) -> List[Tuple[int, int, int]]:
    """The fairseq ``conv_feature_layers`` string -> [(dim, kernel, stride), ...].

    The string is an expression such as ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``.
    fairseq ``eval``s it; we parse it and accept only list/tuple literals of
    integers (read by ``ast.literal_eval``) joined by ``+`` and repeated by
    ``* int``, so no code in an args file can run. Bounded: at most
    ``MAX_SPEC_CHARS`` characters, ``MAX_SPEC_DEPTH`` levels of nesting and
    ``MAX_CONV_LAYERS`` layers, checked before any list is built, so a short
    string cannot expand a million-fold and a long one cannot exhaust the stack.
    """
    if not isinstance(spec, str):
        raise ConversionError(f"conv_feature_layers must be a string, got {type(spec).__name__}")
    shown = spec if len(spec) <= 80 else spec[:77] + "..."
    if len(spec) > MAX_SPEC_CHARS:
        raise ConversionError(f"conv_feature_layers {shown!r}: longer than {MAX_SPEC_CHARS} characters")
    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ConversionError(f"conv_feature_layers {shown!r} is not a valid expression "
                              f"({getattr(e, 'msg', None) or type(e).__name__})") from None

    def bad(why: str) -> ConversionError:
        return ConversionError(f"conv_feature_layers {shown!r}: {why}")

    def value(node: ast.AST, depth: int = 0):
        if depth > MAX_SPEC_DEPTH:
            raise bad(f"nested deeper than {MAX_SPEC_DEPTH} levels")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = value(node.left, depth + 1), value(node.right, depth + 1)
            if not (isinstance(left, list) and isinstance(right, list)):
                raise bad("'+' joins lists only")
            if len(left) + len(right) > MAX_CONV_LAYERS:
                raise bad(f"more than {MAX_CONV_LAYERS} layers")
            return left + right
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right = value(node.left, depth + 1), value(node.right, depth + 1)
            if isinstance(left, int) and isinstance(right, list):
                left, right = right, left
            if not (isinstance(left, list) and isinstance(right, int) and not isinstance(right, bool) and right >= 0):
                raise bad("'*' repeats a list by a non-negative integer only")
            if len(left) * right > MAX_CONV_LAYERS:
                raise bad(f"more than {MAX_CONV_LAYERS} layers")
            return left * right
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.List):
            if len(node.elts) > MAX_CONV_LAYERS:
                raise bad(f"more than {MAX_CONV_LAYERS} layers")
            return [value(e, depth + 1) for e in node.elts]
        if isinstance(node, ast.Tuple):
            if len(node.elts) != 3:
                raise bad(f"every entry must be (dim, kernel, stride), got a tuple of {len(node.elts)}")
            return tuple(value(e, depth + 1) for e in node.elts)
        raise bad("only list literals of (int, int, int), '+' and '* int' are allowed")

    layers = value(tree.body)
    if not isinstance(layers, list) or not layers:
        raise ConversionError(f"conv_feature_layers {spec!r} is not a non-empty list")
    out = []
    for item in layers:
        if not (isinstance(item, tuple) and len(item) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in item)):
            raise ConversionError(f"conv_feature_layers {spec!r}: every entry must be (dim, kernel, stride) positive ints, got {item!r}")
        out.append(item)
    return out


_INT = (int,)
_NUM = (int, float)
_BOOL = (bool, int)
# Types of the official arguments the converter reads; a value of another type is an error naming the argument.
_ARG_TYPES: Dict[str, Tuple[type, ...]] = {
    **{k: _INT for k in ("layer_use", "encoder_attention_heads", "num_attention_heads", "img_feat_len", "vit_num_heads",
                         "common_embed_dim", "conv_pos", "conv_pos_groups", "encoder_embed_dim", "encoder_ffn_embed_dim",
                         "hidden_size", "intermediate_size", "trm_layers", "visual_feat_dim", "visual_pos_dim",
                         "vit_patch_size", "xtrm_layers")},
    **{k: _NUM for k in ("dropout", "attention_dropout", "attention_probs_dropout_prob", "hidden_dropout_prob",
                         "coarse_matching_weight", "fine_matching_weight", "margin", "feature_grad_mult",
                         "val_audio_feat_len")},
    **{k: _BOOL for k in ("conv_bias", "layer_norm_first", "normalize", "cls_loss")},
    **{k: (str,) for k in ("activation_fn", "extractor_mode", "conv_feature_layers", "vit_arch")},
}
_MAX_INT_ARG = 1 << 20  # sizes, counts and layer numbers of a real model are far below
_MAX_SECONDS = 3600.0  # val_audio_feat_len


def _check_arg(name: str, value: Any) -> None:
    if isinstance(value, str) and len(value) > MAX_SPEC_CHARS:
        raise ConversionError(f"argument {name}={value[:40]!r}...: longer than {MAX_SPEC_CHARS} characters")
    types = _ARG_TYPES.get(name)
    if types is None or value is None:
        return
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ConversionError(f"argument {name}={str(value)[:60]!r}: expected "
                              f"{' or '.join(t.__name__ for t in types)}, got {type(value).__name__}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or abs(value) > _MAX_INT_ARG:
            raise ConversionError(f"argument {name}={value!r}: out of range")
        if name == "val_audio_feat_len" and not 0 < value <= _MAX_SECONDS:
            raise ConversionError(f"argument {name}={value!r}: expected 0 < seconds <= {_MAX_SECONDS:g}")
        if types is _INT and value < 0:
            raise ConversionError(f"argument {name}={value!r}: expected a non-negative integer")


class _Args:
    """The official arguments with the script defaults behind them; records what was read.

    The values of the arguments the converter reads are type- and range-checked
    here, once, so a wrong-typed ``args.pkl`` gives one error naming the argument.
    """

    def __init__(self, args: Any, kind: str):
        if args is None:
            args = {}
        elif isinstance(args, argparse.Namespace):
            args = vars(args)
        elif not isinstance(args, Mapping):
            raise ConversionError(f"args must be a mapping or an argparse.Namespace, got {type(args).__name__}")
        self.given = dict(args)
        for name, value in self.given.items():
            _check_arg(name, value)
        self.defaults = _SCRIPT_DEFAULTS[kind]

    def __call__(self, name: str, default: Any = None) -> Any:
        if self.given.get(name) is not None:
            return self.given[name]
        return self.defaults.get(name, default)

    def has(self, name: str) -> bool:
        return self.given.get(name) is not None


# ----------------------------------------------------------------------------- state-dict helpers


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many distinct indices N match ``pattern`` (a regex with one ``(\\d+)`` group)."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state for m in [rx.match(k)] if m}
    if found and found != set(range(len(found))):
        raise ConversionError(f"keys matching {pattern!r} have non-contiguous indices {sorted(found)}")
    return len(found)


def _shape(state: Mapping[str, torch.Tensor], key: str, what: str) -> Tuple[int, ...]:
    if key not in state:
        raise ConversionError(f"missing official key {key!r} (needed for {what})")
    return tuple(state[key].shape)


def _check_sizes(kind: str, pairs: Sequence[Tuple[str, Any, Any]]) -> None:
    """``(arg name, value from args or None, value from the tensors)``: all must agree."""
    bad = [f"{name}={given!r} but the weights say {found!r}" for name, given, found in pairs
           if given is not None and given != found]
    if bad:
        raise ConversionError(f"official {kind} arguments do not match the checkpoint: " + "; ".join(bad))


Rule = Tuple["re.Pattern[str]", Optional[Callable[[re.Match], Any]], str]


def _rules(*specs: Tuple[str, Any, str]) -> List[Rule]:
    """``(regex, target, note)``: target is a format string (``\\1`` groups), a callable, or None (dropped)."""
    out = []
    for pattern, target, note in specs:
        rx = re.compile(pattern + r"\Z")
        if target is None:
            out.append((rx, None, note))
        elif callable(target):
            out.append((rx, target, note))
        else:
            out.append((rx, (lambda t: lambda m: m.expand(t))(target), note))
    return out


def _apply_rules(state: Mapping[str, torch.Tensor], rules: List[Rule], kind: str
                 ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Map every official key by the first matching rule; unmatched keys are an error."""
    mapped: Dict[str, torch.Tensor] = {}
    dropped: Dict[str, str] = {}
    unmapped = []
    for key, tensor in state.items():
        for rx, target, note in rules:
            m = rx.match(key)
            if not m:
                continue
            if target is None:
                dropped[key] = note
            else:
                result = target(m)
                items = result(tensor) if callable(result) else [(result, tensor)]
                for name, t in items:
                    if name in mapped:
                        raise ConversionError(f"official {kind} checkpoint: two keys map onto {name!r} (second: {key!r})")
                    mapped[name] = t
            break
        else:
            unmapped.append(key)
    if unmapped:
        raise ConversionError(f"official {kind} checkpoint has keys with no place in our model: {sorted(unmapped)}")
    return mapped, dropped


def apply_key_rules(state: Mapping[str, torch.Tensor], specs: Sequence[Tuple[str, Any, str]], kind: str
                    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The rule engine on a model's key map (its ``official_key_rules()``): ``(mapped, dropped key -> reason)``."""
    return _apply_rules(state, _rules(*specs), kind)


def speech_key_rules(src: str, dst: str) -> List[Tuple[str, Any, str]]:
    """fairseq wav2vec2 / HuBERT (+ CLS) under ``src`` -> our SpeechTrunk (HF modules) under ``dst``."""
    s = re.escape(src)
    return [
        (s + r"feature_extractor\.conv_layers\.(\d+)\.0\.weight", dst + r"feature_extractor.conv_layers.\1.conv.weight", ""),
        (s + r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)", dst + r"feature_extractor.conv_layers.0.layer_norm.\1", ""),
        (s + r"layer_norm\.(weight|bias)", dst + r"feature_projection.layer_norm.\1", ""),
        (s + r"post_extract_proj\.(weight|bias)", dst + r"feature_projection.projection.\1", ""),
        (s + r"cls_token", dst + "cls_token", ""),
        # NOTE(original): FaST-VGS keeps pos_conv under encoder., VG-HuBERT at the top level.
        (s + r"(?:encoder\.)?pos_conv\.0\.bias", dst + "pos_conv_embed.conv.bias", ""),
        # Old-style nn.utils.weight_norm(dim=2) -> torch parametrization (the same g and v).
        (s + r"(?:encoder\.)?pos_conv\.0\.weight_g", dst + "pos_conv_embed.conv.parametrizations.weight.original0", ""),
        (s + r"(?:encoder\.)?pos_conv\.0\.weight_v", dst + "pos_conv_embed.conv.parametrizations.weight.original1", ""),
        (s + r"(?:encoder\.)?pos_conv\.0\.parametrizations\.weight\.(original[01])",
         dst + r"pos_conv_embed.conv.parametrizations.weight.\1", ""),
        (s + r"encoder\.layer_norm\.(weight|bias)", dst + r"layer_norm.\1", ""),
        (s + r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", dst + r"layers.\1.attention.\2_proj.\3", ""),
        (s + r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", dst + r"layers.\1.layer_norm.\2", ""),
        (s + r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", dst + r"layers.\1.feed_forward.intermediate_dense.\2", ""),
        (s + r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", dst + r"layers.\1.feed_forward.output_dense.\2", ""),
        (s + r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", dst + r"layers.\1.final_layer_norm.\2", ""),
        (s + r"mask_emb", None, "pretraining only: wav2vec2/HuBERT masked-frame embedding (no masking at inference)"),
        (s + r"quantizer\..*", None, "pretraining only: wav2vec2 quantizer"),
        (s + r"project_q\..*", None, "pretraining only: wav2vec2 quantizer projection"),
        (s + r"final_proj\..*", None, "pretraining only: wav2vec2/HuBERT prediction head"),
        (s + r"label_embs_concat", None, "pretraining only: HuBERT label embeddings"),
    ]


def _speech_config(sd: Mapping[str, torch.Tensor], a: _Args, kind: str, num_layers: int, **extra: Any) -> Dict[str, Any]:
    """SpeechTrunkConfig fields from the audio part ``sd`` (prefix stripped) and the arguments."""
    if a("extractor_mode") != "default":
        raise ConversionError(f"extractor_mode={a('extractor_mode')!r} is not supported "
                              "(the released models use 'default': GroupNorm in the first conv)")
    if a("conv_bias"):
        raise ConversionError("conv_bias=True is not supported (the released models have bias-free convs)")
    if a("layer_norm_first"):
        raise ConversionError("layer_norm_first=True (pre-LN) is not supported (the released models are post-LN)")
    if a("activation_fn") != "gelu":
        raise ConversionError(f"activation_fn={a('activation_fn')!r} is not supported (gelu only)")
    n_conv = _count(sd, r"feature_extractor\.conv_layers\.(\d+)\.0\.weight")
    if n_conv == 0:
        raise ConversionError("no conv feature-extractor weights (feature_extractor.conv_layers.N.0.weight) in the audio encoder")
    shapes = [_shape(sd, f"feature_extractor.conv_layers.{i}.0.weight", "the conv feature extractor") for i in range(n_conv)]
    spec = parse_conv_feature_layers(a("conv_feature_layers"))
    if [(d, k) for d, k, _ in spec] != [(s[0], s[-1]) for s in shapes]:
        raise ConversionError(
            f"conv_feature_layers={a('conv_feature_layers')!r} does not match the checkpoint's conv layers "
            f"(dim, kernel) {[(s[0], s[-1]) for s in shapes]}")
    hidden, conv_out = _shape(sd, "post_extract_proj.weight", "the hidden size")
    ffn = _shape(sd, "encoder.layers.0.fc1.weight", "the FFN size")[0]
    pos_key = next((k for k in ("encoder.pos_conv.0.weight_v", "pos_conv.0.weight_v",
                                "encoder.pos_conv.0.parametrizations.weight.original1",
                                "pos_conv.0.parametrizations.weight.original1") if k in sd), None)
    if pos_key is None:
        raise ConversionError("no positional-conv weight (pos_conv.0.weight_v) in the audio encoder")
    _, per_group, conv_pos = sd[pos_key].shape
    _check_sizes(kind, [("encoder_embed_dim", a.given.get("encoder_embed_dim"), hidden),
                        ("encoder_ffn_embed_dim", a.given.get("encoder_ffn_embed_dim"), ffn),
                        ("conv_pos", a.given.get("conv_pos"), conv_pos),
                        ("conv_pos_groups", a.given.get("conv_pos_groups"), hidden // per_group)])
    return dict(
        hidden_size=hidden,
        num_heads=int(a("encoder_attention_heads")),
        intermediate_size=ffn,
        num_layers=num_layers,
        conv_dim=[d for d, _, _ in spec],
        conv_kernel=[k for _, k, _ in spec],
        conv_stride=[s for _, _, s in spec],
        num_conv_pos_embeddings=conv_pos,
        num_conv_pos_embedding_groups=hidden // per_group,
        dropout=float(a("dropout")),
        attention_dropout=float(a("attention_dropout")),
        layer_norm_eps=1e-5,  # fairseq LayerNorm
        freeze_conv=float(a("feature_grad_mult")) == 0.0,
        reinit_last=0,
        pretrained=None,
        official_compat=True,
        **extra,
    )


def _pad_samples(a: _Args) -> Optional[int]:
    seconds = a("val_audio_feat_len")
    return None if seconds is None else int(SAMPLE_RATE * float(seconds))


# ----------------------------------------------------------------------------- FaST-VGS (+)


def _convert_fast_vgs(state: Mapping[str, torch.Tensor], a: _Args, kind: str) -> OfficialConversion:
    from .models.fast_vgs import FaSTVGSConfig

    audio = _strip_prefix(state, "dual_encoder.conv1_trm1_trm3.")
    n_layers = _count(audio, r"encoder\.layers\.(\d+)\.")
    layer_use = int(a("layer_use"))
    if kind == "fast_vgs" and n_layers != layer_use + 1:
        hint = " (a FaST-VGS+ checkpoint keeps all 12 layers: use --kind fast_vgs_plus)" if n_layers > layer_use + 1 else ""
        raise ConversionError(f"FaST-VGS: the checkpoint has {n_layers} Trm1 layers, layer_use={layer_use} needs {layer_use + 1}{hint}")
    if n_layers < layer_use + 1:
        raise ConversionError(f"{kind}: the checkpoint has {n_layers} Trm1 layers, layer_use={layer_use} needs at least {layer_use + 1}")
    # NOTE(original): FaST-VGS datasets always normalise each waveform (the --normalize flag is unused there).
    speech = _speech_config(audio, a, kind, n_layers, backbone="wav2vec2", cls_position="before_pos_conv", normalize_waveform=True)

    stages = {int(m.group(1)) for k in state for m in [re.match(r"dual_encoder\.conv2\.layer(\d+)\.", k)] if m}
    n_stages = len(stages)
    if n_stages == 0 or stages != set(range(1, n_stages + 1)):
        raise ConversionError(f"{kind}: ResDAVEnet stages dual_encoder.conv2.layerN must be numbered 1..N, found {sorted(stages)}")
    widths = [_shape(state, "dual_encoder.conv2.linear.weight", "the ResDAVEnet widths")[0]]
    blocks = []
    for i in range(1, n_stages + 1):
        widths.append(_shape(state, f"dual_encoder.conv2.layer{i}.0.conv1.weight", "the ResDAVEnet widths")[0])
        blocks.append(_count(state, rf"dual_encoder\.conv2\.layer{i}\.(\d+)\.conv1\.weight"))
    kernel = _shape(state, "dual_encoder.conv2.layer1.0.conv1.weight", "the ResDAVEnet kernel")[-1]
    hidden, _ = _shape(state, "dual_encoder.trm2_proj.weight", "hidden_size")
    inter = _shape(state, "dual_encoder.trm2.intermediate.dense.weight", "intermediate_size")[0]
    _, visual_feat_dim = _shape(state, "dual_encoder.visn_fc.visn_fc.weight", "visual_feat_dim")
    _, visual_pos_dim = _shape(state, "dual_encoder.visn_fc.box_fc.weight", "visual_pos_dim")
    trm_layers = _count(state, r"dual_encoder\.trm\.(\d+)\.")
    xtrm_layers = _count(state, r"cross_encoder\.xtrm\.(\d+)\.")
    if xtrm_layers == 0:
        raise ConversionError(f"{kind}: no cross-encoder weights (cross_encoder.xtrm.N); a FaST-VGS model needs its cross encoder")
    _check_sizes(kind, [("hidden_size", a.given.get("hidden_size"), hidden),
                        ("intermediate_size", a.given.get("intermediate_size"), inter),
                        ("visual_feat_dim", a.given.get("visual_feat_dim"), visual_feat_dim),
                        ("visual_pos_dim", a.given.get("visual_pos_dim"), visual_pos_dim),
                        ("trm_layers", a.given.get("trm_layers"), trm_layers),
                        ("xtrm_layers", a.given.get("xtrm_layers"), xtrm_layers)])
    config = FaSTVGSConfig.from_dict(dict(
        speech=speech,
        layer_use=layer_use,
        hidden_size=hidden,
        num_attention_heads=int(a("num_attention_heads")),
        intermediate_size=inter,
        hidden_dropout_prob=float(a("hidden_dropout_prob")),
        attention_probs_dropout_prob=float(a("attention_probs_dropout_prob")),
        trm_layers=trm_layers,
        xtrm_layers=xtrm_layers,
        visual_feat_dim=visual_feat_dim,
        visual_pos_dim=visual_pos_dim,
        img_feat_len=int(a("img_feat_len")),
        resdavenet_widths=widths,
        resdavenet_layers=blocks,
        resdavenet_kernel=kernel,
        margin=float(a("margin")),
        coarse_matching_weight=float(a("coarse_matching_weight")),
        fine_matching_weight=float(a("fine_matching_weight")),
        keep_dead_params=False,
    ))

    from .models.fast_vgs import official_key_rules

    mapped, dropped = apply_key_rules(state, official_key_rules(), kind)
    return OfficialConversion(kind, "fast_vgs", config, mapped, dropped, _pad_samples(a))


# ----------------------------------------------------------------------------- VG-HuBERT


def split_fused_qkv(prefix: str, part: str):
    """Fused DINO ``qkv`` rows (q, then k, then v; heads inside each) -> HF query/key/value."""

    def split(t: torch.Tensor):
        if t.shape[0] % 3:
            raise ConversionError(f"fused qkv {part} of {prefix} has {t.shape[0]} rows, not a multiple of 3")
        q, k, v = t.chunk(3, dim=0)
        return [(f"{prefix}attention.attention.{n}.{part}", x.clone()) for n, x in (("query", q), ("key", k), ("value", v))]

    return split


def _convert_vg_hubert(state: Mapping[str, torch.Tensor], a: _Args, kind: str) -> OfficialConversion:
    from .models.vg_mim import SpeechGuidedMIMConfig

    if a.has("cls_loss") and not a("cls_loss"):
        raise ConversionError("vg_hubert: cls_loss=False models (mean-pooled feat_loss only) are not supported; "
                              "retrieval uses the CLS projections")
    audio = _strip_prefix(state, "dual_encoder.audio_encoder.")
    n_layers = _count(audio, r"encoder\.layers\.(\d+)\.")
    layer_use = int(a("layer_use"))
    # NOTE(original): the official encoder keeps layer_use + 1 layers and reads the last one's CLS.
    if n_layers != layer_use + 1:
        raise ConversionError(f"vg_hubert: the checkpoint has {n_layers} HuBERT layers, layer_use={layer_use} needs {layer_use + 1}")
    speech = _speech_config(audio, a, kind, n_layers, backbone="hubert", cls_position="after_pos_conv",
                            normalize_waveform=bool(a("normalize")))

    vit = _strip_prefix(state, "dual_encoder.trm.")
    dim, _, patch, patch_w = _shape(vit, "patch_embed.proj.weight", "the ViT width and patch size")
    if patch != patch_w:
        raise ConversionError(f"vg_hubert: non-square ViT patches {patch}x{patch_w} are not supported")
    n_pos = _shape(vit, "pos_embed", "the ViT image size")[1] - 1
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ConversionError(f"vg_hubert: ViT pos_embed has {n_pos} patch positions, not a square grid")
    depth = _count(vit, r"blocks\.(\d+)\.")
    mlp = _shape(vit, "blocks.0.mlp.fc1.weight", "the ViT MLP size")[0]
    if a.has("vit_num_heads"):
        heads = int(a("vit_num_heads"))
    else:
        arch = a("vit_arch")
        if arch not in _VIT_ARCHS:
            raise ConversionError(f"vg_hubert: unknown vit_arch {arch!r}; known {sorted(_VIT_ARCHS)}, or give vit_num_heads")
        arch_dim, heads = _VIT_ARCHS[arch]
        if arch_dim != dim:
            raise ConversionError(
                f"vg_hubert: the ViT is {dim} wide but vit_arch={arch!r} is {arch_dim} wide, so its head count is "
                f"unknown: give vit_num_heads in args")
    embed, proj_hidden = _shape(state, "dual_encoder.audio_cls_token_proj.2.weight", "common_embed_dim")
    v_hidden = _shape(state, "dual_encoder.visual_cls_token_proj.0.weight", "the visual projection")[0]
    if v_hidden != proj_hidden:
        raise ConversionError(f"vg_hubert: audio ({proj_hidden}) and visual ({v_hidden}) projection hidden widths differ")
    _check_sizes(kind, [("vit_patch_size", a.given.get("vit_patch_size"), patch),
                        ("common_embed_dim", a.given.get("common_embed_dim"), embed)])
    config = SpeechGuidedMIMConfig.from_dict(dict(
        audio=speech,
        image=dict(image_size=grid * patch, patch_size=patch, num_channels=3, hidden_size=dim, num_layers=depth,
                   num_heads=heads, intermediate_size=mlp, layer_norm_eps=1e-6, dropout=0.0, attention_dropout=0.0,
                   qkv_bias="blocks.0.attn.qkv.bias" in vit, pretrained=None, official_compat=True),
        image_pooling="cls",
        projection="mlp",
        proj_hidden_size=proj_hidden,
        embed_dim=embed,
        loss="masked_margin",
        margin=float(a("margin")),
        mim="none",
        train_randaugment=False,
        train_hflip=True,
    ))

    from .models.vg_mim import official_key_rules

    mapped, dropped = apply_key_rules(state, official_key_rules(), kind)
    return OfficialConversion(kind, "vg_mim", config, mapped, dropped, _pad_samples(a))


# ----------------------------------------------------------------------------- public API


def convert_official(state_dict: Mapping[str, torch.Tensor], args: Any, kind: str) -> OfficialConversion:
    """Map an official state dict onto our model's config and key names (no model is built).

    Args:
        state_dict: official key names with their ``dual_encoder.`` /
            ``cross_encoder.`` prefixes (as in ``reference/parity``).
        args: the official arguments (mapping or ``argparse.Namespace``);
            missing entries fall back to the released models' script values.
            ``vit_num_heads`` (not an official flag) gives the ViT head count
            when the ViT is not one of DINO's ``vit_arch`` sizes.
        kind: "fast_vgs", "fast_vgs_plus" or "vg_hubert".
    """
    if kind not in KINDS:
        raise ConversionError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ConversionError("state_dict must be a non-empty mapping of official key names to tensors")
    bad = sorted(k for k, v in state_dict.items() if not isinstance(k, str) or not torch.is_tensor(v))
    if bad:
        raise ConversionError(f"state_dict entries that are not tensors under string keys: {bad[:20]}")
    expected = ("dual_encoder.", "cross_encoder.") if kind != "vg_hubert" else ("dual_encoder.",)
    foreign = sorted(k for k in state_dict if not k.startswith(expected))
    if foreign:
        raise ConversionError(f"official {kind} keys must start with {' or '.join(expected)}; got {foreign[:20]}")
    a = _Args(args, kind)
    if kind == "vg_hubert":
        return _convert_vg_hubert(state_dict, a, kind)
    return _convert_fast_vgs(state_dict, a, kind)


def from_official(state_dict: Mapping[str, torch.Tensor], args: Any, kind: str) -> torch.nn.Module:
    """Our model (eval mode, ``official_compat`` on) holding an official checkpoint's weights.

    Dropped keys (dead or pretraining-only heads) are logged and kept on the
    model as ``model.dropped_official_keys`` (key -> reason).

    Example:
        >>> import json
        >>> from safetensors.torch import load_file
        >>> tensors = load_file("fast_vgs_small_A.safetensors")
        >>> args = json.load(open("fast_vgs_small_A.json"))["official_args"]
        >>> sd = {k: v for k, v in tensors.items() if k.startswith(("dual_encoder.", "cross_encoder."))}
        >>> model = from_official(sd, args, "fast_vgs")
        >>> audio = model.encode_audio(tensors["in.audio"], tensors["in.audio_length"])
    """
    conv = convert_official(state_dict, args, kind)
    model = conv.build()
    model.dropped_official_keys = dict(conv.dropped)
    model.official_pad_samples = conv.pad_samples
    if conv.dropped:
        logger.info("from_official(%s): dropped %d keys: %s", kind, len(conv.dropped), sorted(conv.dropped))
    return model


def pad_like_official(wavs: Sequence[torch.Tensor], pad_samples: int, normalize: bool = False
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Crop / zero-pad 1-D waveforms to ``pad_samples`` as the official datasets do.

    NOTE(original): the official loaders crop to ``audio_feat_len`` seconds,
    normalise the cropped, unpadded clip (FaST-VGS: zero mean, unit population
    std) and zero-pad to exactly that length; the models' outputs depend on it.

    Returns:
        wavs (B, pad_samples) and lengths (B,).
    """
    if pad_samples <= 0:
        raise ValueError(f"pad_samples must be > 0, got {pad_samples}")
    out = torch.zeros(len(wavs), pad_samples)
    lengths = torch.zeros(len(wavs), dtype=torch.long)
    for i, w in enumerate(wavs):
        w = torch.as_tensor(w, dtype=torch.float32).reshape(-1)[:pad_samples]
        if normalize:
            w = (w - w.mean()) / w.std(unbiased=False)
        out[i, : w.numel()] = w
        lengths[i] = w.numel()
    return out, lengths


# ----------------------------------------------------------------------------- files


class _Refused(pickle.UnpicklingError):
    """A pickle that asks for something the args unpickler does not admit."""


class _FrozenClass(type):
    """Metaclass of :class:`_ArgsUnpickler`'s stand-in: its class attributes cannot be set."""

    def __setattr__(cls, name, value):
        raise _Refused(f"refusing to set attribute {name!r} of argparse.Namespace")

    def __delattr__(cls, name):
        raise _Refused(f"refusing to delete attribute {name!r} of argparse.Namespace")


class _ArgsUnpickler(pickle.Unpickler):
    """Admits ``argparse.Namespace`` and the plain values pickle builds without globals.

    ``argparse.Namespace`` is never handed to the pickle: ``find_class`` returns
    a stand-in class made for this one load, whose instances are plain objects
    (read back as dicts by :func:`load_official_args`) and whose class
    attributes cannot be set. So a pickle that BUILDs on the class itself
    cannot rebind anything of the real ``argparse.Namespace``, nor of anything
    else in the process.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.namespace = _FrozenClass("Namespace", (), {"__slots__": ("__dict__",), "__module__": "argparse"})

    def find_class(self, module: str, name: str):
        if (module, name) == ("argparse", "Namespace"):
            return self.namespace
        raise _Refused(f"refusing to load global {module}.{name} (only argparse.Namespace is allowed)")

    def persistent_load(self, pid):
        raise _Refused("refusing persistent ids (only argparse.Namespace and plain values are allowed)")


def load_official_args(path: str | Path) -> Dict[str, Any]:
    """Read an official ``args.pkl`` (a pickled ``argparse.Namespace``) without running code.

    Raises:
        ConversionError: unreadable file, or a pickle that needs anything but
            ``argparse.Namespace`` and plain values (such a file is refused
            before any of its code can run).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConversionError(f"{path}: cannot read ({e.strerror or e})") from None
    unpickler = _ArgsUnpickler(io.BytesIO(data))
    try:
        obj = unpickler.load()
    except _Refused as e:
        raise ConversionError(f"{path}: not a plain argparse.Namespace pickle: {e}") from None
    except Exception as e:  # truncated or corrupt pickles raise many types
        raise ConversionError(f"{path}: unreadable pickle ({type(e).__name__}: {str(e)[:200]})") from None
    if type(obj) is unpickler.namespace:
        obj = dict(vars(obj))
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ConversionError(f"{path}: expected an argparse.Namespace, got {type(obj).__name__}")
    for name, value in obj.items():
        if not _plain(value):
            raise ConversionError(f"{path}: argument {name!r} holds a {type(value).__name__}, not plain data")
        try:
            _check_arg(name, value)
        except ConversionError as e:
            raise ConversionError(f"{path}: {e}") from None
    return dict(obj)


def _plain(value: Any, depth: int = 0) -> bool:
    """Numbers, strings, None and (shallow) lists/tuples/dicts of them: what argparse stores."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    if depth < 4 and isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if depth < 4 and isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def load_official_bundle(path: str | Path, kind: str) -> Dict[str, torch.Tensor]:
    """The model weights of an official ``best_bundle.pth`` / ``bundle.pth`` under prefixed official names.

    Weights-only loading: tensors, plain containers and numbers only (the
    optimizer and sampler state in the bundle are of that kind and are
    ignored). A leading ``module.`` (DataParallel) is stripped from each key.
    """
    if kind not in KINDS:
        raise ConversionError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path}: refused by weights-only loading (it holds more than tensors and plain data): {first}") from None
    except Exception as e:
        raise ConversionError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(bundle, Mapping):
        raise ConversionError(f"{path}: expected a dict with 'dual_encoder', got {type(bundle).__name__}")
    parts = ["dual_encoder"] + (["cross_encoder"] if kind != "vg_hubert" else [])
    missing = [p for p in parts if not isinstance(bundle.get(p), Mapping)]
    if missing:
        raise ConversionError(f"{path}: no {' / '.join(missing)} state dict (keys present: {sorted(map(str, bundle))})")
    state: Dict[str, torch.Tensor] = {}
    for part in parts:
        for k, v in bundle[part].items():
            if not torch.is_tensor(v):
                raise ConversionError(f"{path}: {part}[{k!r}] is a {type(v).__name__}, not a tensor")
            k = k[len("module."):] if k.startswith("module.") else k
            state[f"{part}.{k}"] = v
    return state


@console_script("vgs-convert")
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``vgs-convert``: an official bundle (+ args.pkl) -> our model directory."""
    parser = argparse.ArgumentParser(
        prog="vgs-convert",
        description="Convert an official FaST-VGS / FaST-VGS+ / VG-HuBERT checkpoint into an s3prl_vgs model directory.")
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--bundle", required=True, help="best_bundle.pth (or bundle.pth) of the official code")
    parser.add_argument("--args", help="the args.pkl beside it (default: the released models' script values)")
    parser.add_argument("--out", required=True, help="model directory to write (config.yaml + model.safetensors)")
    opts = parser.parse_args(argv)
    from .checkpoint import CheckpointError, save_model

    try:
        state = load_official_bundle(opts.bundle, opts.kind)
        args = load_official_args(opts.args) if opts.args else {}
        if not opts.args:
            print("vgs-convert: no --args given; using the released models' script values for what the weights do not show",
                  file=sys.stderr)
        conv = convert_official(state, args, opts.kind)
        model = conv.build()
        extra = conv.summary()
        extra.update(bundle=str(opts.bundle), args=str(opts.args) if opts.args else None)
        save_model(model, opts.out, extra={"converted_from_official": extra})
    except (ConversionError, CheckpointError) as e:
        print(f"vgs-convert: error: {e}", file=sys.stderr)
        return 1
    print(f"vgs-convert: {opts.kind} -> {conv.model_name} model in {opts.out} "
          f"({len(conv.state_dict)} tensors, {len(conv.dropped)} official keys dropped)")
    for key, why in sorted(conv.dropped.items()):
        print(f"  dropped {key}: {why}")
    if conv.pad_samples:
        print(f"  the official eval padded audio to {conv.pad_samples} samples; outputs depend on it "
              f"(s3prl_vgs.convert.pad_like_official)")
    return 0


__all__ = [
    "KINDS",
    "ConversionError",
    "OfficialConversion",
    "convert_official",
    "from_official",
    "parse_conv_feature_layers",
    "pad_like_official",
    "load_official_args",
    "load_official_bundle",
    "main",
]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
