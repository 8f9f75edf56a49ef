"""The ZeroSpeech 2021 dataset layout: read it and check it before any work starts.

What is read (``zerospeech2021-dataset.zip``, or the tiny set of
:mod:`s3prl_vgs.zerospeech.synthetic`)::

    DATASET/phonetic/<subset>/<utt>.wav, DATASET/phonetic/<subset>/<subset>.item
    DATASET/semantic/<kind>/{librispeech,synthetic}/<token>.wav
    DATASET/semantic/<kind>/gold.csv, pairs.csv

``subset`` is dev-clean and dev-other (test-clean, test-other with
``include_test``), ``kind`` is dev (and test). The test gold files are not
public, so test parts are exported but never scored. Every problem is a
:class:`ZR2021DatasetError` naming the file (and line), raised before any
feature is written: a missing part, an item line without 7 fields, an item
that names no wav, a wav that is not 16 kHz mono.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..data.audio import SAMPLE_RATE, AudioError, audio_info
from ..errors import FileProblem
from ..io import read_text

PHONETIC_DEV = ("dev-clean", "dev-other")
PHONETIC_TEST = ("test-clean", "test-other")
SEMANTIC_SUBSETS = ("librispeech", "synthetic")
GOLD_COLUMNS = ("type", "filename", "voice", "word")
PAIRS_COLUMNS = ("type", "dataset", "word_1", "word_2", "similarity", "relatedness")


class ZR2021DatasetError(FileProblem):
    """A ZR2021 dataset that cannot be used; the message names the file or folder."""


@dataclass(frozen=True)
class Item:
    """One ABX item: a triphone of a file, the central ``phone`` between ``prev`` and ``next``."""

    file: str
    onset: float
    offset: float
    phone: str
    prev: str
    next: str
    speaker: str


@dataclass
class PhoneticSubset:
    name: str  # dev-clean, ...
    wavs: Dict[str, Path]  # utt id (file stem) -> wav
    item_file: Optional[Path] = None  # None for test subsets (not public)
    items: List[Item] = field(default_factory=list)


@dataclass(frozen=True)
class GoldToken:
    type: str  # librispeech | synthetic
    filename: str
    voice: str  # synthetic only; "" for librispeech
    word: str


@dataclass(frozen=True)
class WordPair:
    type: str
    dataset: str
    word_1: str
    word_2: str
    score: float  # the human similarity or relatedness (whichever the dataset has)


@dataclass
class SemanticSet:
    kind: str  # dev | test
    wavs: Dict[str, Dict[str, Path]]  # subset -> token stem -> wav
    gold: List[GoldToken] = field(default_factory=list)  # empty for test
    pairs: List[WordPair] = field(default_factory=list)


@dataclass
class ZR2021Dataset:
    root: Path
    phonetic: Dict[str, PhoneticSubset] = field(default_factory=dict)
    semantic: Dict[str, SemanticSet] = field(default_factory=dict)

    def wav_jobs(self) -> List[tuple]:
        """``(part path inside a submission, stem, wav)`` for every wav to export, in a fixed order."""
        jobs = []
        for name, sub in self.phonetic.items():
            jobs += [(f"phonetic/{name}", stem, wav) for stem, wav in sorted(sub.wavs.items())]
        for kind, sem in self.semantic.items():
            for subset, wavs in sem.wavs.items():
                jobs += [(f"semantic/{kind}/{subset}", stem, wav) for stem, wav in sorted(wavs.items())]
        return jobs


def _wavs(folder: Path) -> Dict[str, Path]:
    if not folder.is_dir():
        raise ZR2021DatasetError(folder, "missing folder (not a ZeroSpeech 2021 dataset, or an incomplete one)")
    wavs = {p.stem: p for p in sorted(folder.glob("*.wav"))}
    if not wavs:
        raise ZR2021DatasetError(folder, "no .wav files")
    return wavs


def read_item_file(path: Path) -> List[Item]:
    """The ``.item`` lines after the header: ``file onset offset phone prev next speaker``."""
    lines = read_text(path).splitlines()
    items = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split()
        if len(f) != 7:
            raise ZR2021DatasetError(path, f"expected 7 fields (#file onset offset #phone prev-phone next-phone speaker), got {len(f)}", line=n)
        try:
            onset, offset = float(f[1]), float(f[2])
        except ValueError:
            raise ZR2021DatasetError(path, f"onset/offset {f[1]!r} {f[2]!r} are not numbers", line=n) from None
        if not (math.isfinite(onset) and math.isfinite(offset) and 0 <= onset < offset):
            raise ZR2021DatasetError(path, f"need 0 <= onset < offset, got {onset} {offset}", line=n)
        items.append(Item(f[0], onset, offset, f[3], f[4], f[5], f[6]))
    if not items:
        raise ZR2021DatasetError(path, "no items (a header line, then one line per item)")
    return items


def _read_csv(path: Path, columns: Sequence[str]) -> List[Dict[str, str]]:
    if not path.is_file():
        raise ZR2021DatasetError(path, "missing file")
    rows = list(csv.reader(io.StringIO(read_text(path))))
    if not rows or [c.strip() for c in rows[0][: len(columns)]] != list(columns):
        raise ZR2021DatasetError(path, f"expected the header {','.join(columns)}", line=1)
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < len(columns):
            raise ZR2021DatasetError(path, f"expected {len(columns)} fields, got {len(row)}", line=n)
        rec = dict(zip(columns, (c.strip() for c in row)))
        rec["_line"] = n
        out.append(rec)
    return out


def read_gold(path: Path, wavs: Dict[str, Dict[str, Path]]) -> List[GoldToken]:
    tokens = []
    for r in _read_csv(path, GOLD_COLUMNS):
        if r["type"] not in SEMANTIC_SUBSETS:
            raise ZR2021DatasetError(path, f"type {r['type']!r} is not one of {SEMANTIC_SUBSETS}", line=r["_line"])
        if r["filename"] not in wavs[r["type"]]:
            raise ZR2021DatasetError(path, f"{r['type']}/{r['filename']}.wav does not exist", line=r["_line"])
        tokens.append(GoldToken(r["type"], r["filename"], r["voice"] if r["type"] == "synthetic" else "", r["word"]))
    if not tokens:
        raise ZR2021DatasetError(path, "no tokens")
    return tokens


def read_pairs(path: Path, gold: Sequence[GoldToken]) -> List[WordPair]:
    words = {(t.type, t.word) for t in gold}
    pairs = []
    for r in _read_csv(path, PAIRS_COLUMNS):
        raw = r["similarity"] or r["relatedness"]
        try:
            score = float(raw)
        except ValueError:
            raise ZR2021DatasetError(path, f"no numeric similarity or relatedness ({raw!r})", line=r["_line"]) from None
        for w in (r["word_1"], r["word_2"]):
            if (r["type"], w) not in words:
                raise ZR2021DatasetError(path, f"word {w!r} has no {r['type']} token in gold.csv", line=r["_line"])
        pairs.append(WordPair(r["type"], r["dataset"], r["word_1"], r["word_2"], score))
    if not pairs:
        raise ZR2021DatasetError(path, "no pairs")
    return pairs


def check_wav(path: Path) -> None:
    try:
        rate, channels, frames = audio_info(path)
    except AudioError as e:
        raise ZR2021DatasetError(path, e.reason) from None
    if rate != SAMPLE_RATE:
        raise ZR2021DatasetError(path, f"sample rate {rate} Hz; ZeroSpeech 2021 audio is {SAMPLE_RATE} Hz")
    if channels != 1:
        raise ZR2021DatasetError(path, f"{channels} channels; ZeroSpeech 2021 audio is mono")
    if frames == 0:
        raise ZR2021DatasetError(path, "empty audio (0 samples)")


def read_dataset(root, tasks: Sequence[str] = ("phonetic", "semantic"), include_test: bool = False,
                 check_audio: bool = True) -> ZR2021Dataset:
    """Read and check the parts of ``root`` that ``tasks`` need (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise ZR2021DatasetError(root, "not a directory")
    ds = ZR2021Dataset(root)
    if "phonetic" in tasks:
        for name in PHONETIC_DEV:
            folder = root / "phonetic" / name
            wavs = _wavs(folder)
            item_file = folder / f"{name}.item"
            if not item_file.is_file():
                raise ZR2021DatasetError(item_file, "missing item file")
            items = read_item_file(item_file)
            missing = sorted({it.file for it in items} - set(wavs))
            if missing:
                raise ZR2021DatasetError(item_file, f"{len(missing)} item file id(s) have no wav in {folder} "
                                                    f"(first: {missing[0]}.wav)")
            ds.phonetic[name] = PhoneticSubset(name, wavs, item_file, items)
        if include_test:
            for name in PHONETIC_TEST:
                if (root / "phonetic" / name).is_dir():
                    ds.phonetic[name] = PhoneticSubset(name, _wavs(root / "phonetic" / name))
    if "semantic" in tasks:
        kinds = ["dev"] + (["test"] if include_test and (root / "semantic" / "test").is_dir() else [])
        for kind in kinds:
            base = root / "semantic" / kind
            wavs = {s: _wavs(base / s) for s in SEMANTIC_SUBSETS}
            sem = SemanticSet(kind, wavs)
            if kind == "dev":
                sem.gold = read_gold(base / "gold.csv", wavs)
                sem.pairs = read_pairs(base / "pairs.csv", sem.gold)
            ds.semantic[kind] = sem
    if not ds.phonetic and not ds.semantic:
        raise ZR2021DatasetError(root, "nothing to do: no task selected")
    if check_audio:
        # A header read per file (no decoding): a bad rate is found before hours of extraction.
        for _, _, wav in ds.wav_jobs():
            check_wav(wav)
    return ds


__all__ = [
    "ZR2021Dataset", "ZR2021DatasetError", "PhoneticSubset", "SemanticSet", "Item", "GoldToken", "WordPair",
    "read_dataset", "read_item_file", "read_gold", "read_pairs", "check_wav",
    "PHONETIC_DEV", "PHONETIC_TEST", "SEMANTIC_SUBSETS",
]
