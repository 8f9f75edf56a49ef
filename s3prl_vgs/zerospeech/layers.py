"""Which hidden state a ZeroSpeech task reads: layer names, per-family defaults, frame shifts.

A layer is ``STREAM:INDEX`` over the model's hidden-state streams
(``AudioOutput.hidden_state_sets()``): ``hidden_states`` (every family: the
speech trunk's projected conv features at index 0, then transformer layer
``k`` at index ``k``; 20 ms frames) and, for FaST-VGS, ``trm2_hidden_states``
(index 0 = Conv2 output, 1 = Trm2 output; 320 ms frames). ``trm1`` and
``trm2`` (``layer`` for a one-stream model) are accepted as short names, and a bare ``INDEX`` means
``hidden_states:INDEX``. Index ``k`` is therefore the paper's "layer k"
(layer numbers start from 1 in the FaST-VGS-Family README).

The frame shift of a stream is ``input_spec.downsample_rates[stream] /
sample_rate``: the exact value that goes into ``meta.yaml`` and into the ABX
slicing (a wrong one silently gives wrong ABX, see reference/zerospeech.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from ..errors import VGSError

ALIASES = {"trm1": "hidden_states", "trm2": "trm2_hidden_states"}


class LayerError(VGSError, ValueError):
    """A layer name that the model does not have; the message lists what it has."""


@dataclass(frozen=True)
class Layer:
    """One hidden state: ``stream`` (an ``AudioOutput.hidden_state_sets()`` key) and its index."""

    stream: str
    index: int
    frame_shift: float  # seconds per frame, exact for this stream
    short_stream: str = field(default="", compare=False)  # "trm1"/"trm2" for FaST-VGS, "layer" for one-stream models

    @property
    def name(self) -> str:
        return f"{self.stream}:{self.index}"

    @property
    def short_name(self) -> str:
        """``trm1:6`` / ``trm2:1`` (FaST-VGS), ``layer:6`` (one stream), for tables and plots."""
        return f"{self.short_stream or self.stream}:{self.index}"


@dataclass(frozen=True)
class LayerInventory:
    """The streams a model has: ``{stream: (number of hidden states, samples per frame)}``."""

    streams: Dict[str, Tuple[int, int]]
    sample_rate: int = 16000

    @classmethod
    def of(cls, model) -> "LayerInventory":
        spec = model.input_spec
        depth = {"hidden_states": _trunk_states(model)}
        if "trm2_hidden_states" in spec.downsample_rates:
            depth["trm2_hidden_states"] = 2  # Conv2 output, Trm2 output (FaSTVGSAudioOutput)
        missing = set(spec.downsample_rates) - set(depth)
        if missing:
            raise LayerError(f"{type(model).__name__}: no layer count known for streams {sorted(missing)}")
        return cls({s: (depth[s], spec.downsample_rates[s]) for s in spec.downsample_rates}, spec.sample_rate)

    def layer(self, stream: str, index: int) -> Layer:
        n, rate = self.streams[stream]
        if len(self.streams) == 1:
            short = "layer"
        else:
            short = {v: k for k, v in ALIASES.items()}.get(stream, stream)
        return Layer(stream, index, rate / self.sample_rate, short)

    def all_layers(self, stream: str = "hidden_states") -> List[Layer]:
        return [self.layer(stream, i) for i in range(self.streams[stream][0])]

    def describe(self) -> str:
        return ", ".join(f"{s}:0..{n - 1} ({rate / self.sample_rate * 1000:g} ms)" for s, (n, rate) in self.streams.items())

    def parse(self, text: str, option: str = "layer") -> Layer:
        """``"6"``, ``"trm1:6"``, ``"hidden_states:6"``, ``"trm2:1"`` -> :class:`Layer` (range checked)."""
        raw = str(text).strip()
        stream, _, index = raw.rpartition(":")
        stream = {**ALIASES, "layer": "hidden_states"}.get(stream, stream) or "hidden_states"
        if stream not in self.streams:
            raise LayerError(f"--{option} {raw!r}: this model has no stream {stream!r}; it has {self.describe()}")
        try:
            i = int(index)
        except ValueError:
            raise LayerError(f"--{option} {raw!r}: expected [STREAM:]INDEX (e.g. 6, trm1:6, trm2:1)") from None
        n = self.streams[stream][0]
        if not 0 <= i < n:
            raise LayerError(f"--{option} {raw!r}: layer index out of range; this model has {self.describe()}")
        return self.layer(stream, i)


def _trunk_states(model) -> int:
    """Hidden states of the speech trunk: conv projection + one per transformer layer."""
    from ..modules.speech_trunk import SpeechTrunk

    trunks = [m for m in model.modules() if isinstance(m, SpeechTrunk)]
    if len(trunks) != 1:
        raise LayerError(f"{type(model).__name__}: expected one speech trunk, found {len(trunks)}")
    return trunks[0].config.num_layers + 1


# FaST-VGS: the paper's choice (Peng & Harwath 2022, Tab. 4; FaST-VGS-Family README):
# Trm1 layer 6 for ABX, Trm2 layer 1 max-pooled for sSIMI. A smaller trunk than
# the paper's 8 layers (the tiny preset) uses its deepest Trm1 layer instead.
FAST_VGS_PHONETIC = 6
# The MIM family (speech-guided MIM, VG-HuBERT: a HuBERT-base trunk whose last
# 3 layers are re-initialised and trained by the VG loss) has no published
# ZeroSpeech layer; we use the same relative depth as FaST-VGS for ABX (layer
# L/2 = 6 of 12, inside the layers kept from HuBERT pre-training, where phone
# information sits) and the last layer for sSIMI (the layer whose CLS is the
# retrieval vector, i.e. the one the visual grounding shapes most, as Trm2 is
# for FaST-VGS). `--phonetic-layer all` measures the ABX choice on your data.


def default_layers(model, inventory: LayerInventory) -> Tuple[Layer, Layer]:
    """(phonetic, semantic) defaults for the model's family."""
    n_trunk = inventory.streams["hidden_states"][0] - 1  # transformer layers
    if "trm2_hidden_states" in inventory.streams:
        return (inventory.layer("hidden_states", min(FAST_VGS_PHONETIC, n_trunk)),
                inventory.layer("trm2_hidden_states", 1))
    return inventory.layer("hidden_states", max(1, round(n_trunk / 2))), inventory.layer("hidden_states", n_trunk)


__all__ = ["Layer", "LayerInventory", "LayerError", "default_layers", "ALIASES"]
