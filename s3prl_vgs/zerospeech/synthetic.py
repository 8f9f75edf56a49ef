"""``vgs-synth-zr2021``: a tiny ZeroSpeech 2021 dataset spoken by espeak-ng, in the real layout.

The real dataset is 10 GB behind a download form; this one is made in a
few seconds, so the tests, the recipe (stage 9 without ``--zr2021_dir``) and
the demo run the real scorers on something with known structure:

- phonetic (ABX): nonsense CVC syllables in controlled contexts: central
  vowel ``a``/``i``/``u`` between ``p_t``, ``k_s``, ``m_n``; each file is
  one voice saying all nine syllables (shuffled) with pauses between them,
  three files per voice at different speed and pitch; three voices per
  subset, other voices in dev-other, which also gets white noise (20 dB
  SNR) to be the harder condition. A real ``.item`` file marks each
  syllable as one triphone item (onset/offset from the waveform's energy).
- semantic (sSIMI): 14 words of the synthetic demo corpus (colours,
  shapes, sizes) as single-word wavs, with 16 word pairs and given
  similarity scores (0-10: colour-colour or shape-shape high, across kinds
  low). ``synthetic``: one token per word for each of three voices (the
  ``voice`` column); ``librispeech``: two tokens per word from three other
  voices (no voice column, as natural speech).

Layout (as ``zerospeech2021-dataset``)::

    OUT/phonetic/{dev-clean,dev-other}/<utt>.wav + <subset>.item
    OUT/semantic/dev/{librispeech,synthetic}/<token>.wav, gold.csv, pairs.csv
    OUT/synth_zr2021.json     the arguments; marks OUT as this tool's output

Deterministic for a seed (espeak-ng is deterministic; the noise is seeded).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import shutil
import subprocess
import tempfile
from math import gcd
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..cli import console_script
from ..data.audio import SAMPLE_RATE
from ..errors import VGSError
from ..io import atomic_dir

VOWELS = {"a": "a", "i": "i:", "u": "u:"}  # item label -> espeak-ng phoneme
CONTEXTS = (("p", "t"), ("k", "s"), ("m", "n"))  # (previous, next) consonants, same symbols in espeak-ng
PHONETIC_VOICES = {
    "dev-clean": ("en-us+m1", "en-us+f1", "en-us+m3"),
    "dev-other": ("en-gb+m1", "en-gb+f2", "en-us+f3"),
}
TOKEN_STYLES = ((140, 40), (170, 55), (200, 70))  # (words per minute, pitch) of the 3 files per voice
OTHER_SNR_DB = 20.0
WORD_GAP = 20  # espeak-ng -g: extra pause between words (10 ms units at the default speed), after the comma pause
SEMANTIC_SYNTH_VOICES = ("en-us+m2", "en-us+f2", "en-gb+m3")
SEMANTIC_NATURAL = (("en-us+m4", 140, 45), ("en-us+f4", 165, 60), ("en-gb+f1", 155, 50))  # voice, speed, pitch
NATURAL_TOKENS = 2
WORDS = ("red", "orange", "blue", "purple", "green", "yellow", "black", "white",
         "circle", "square", "triangle", "star", "small", "big")
PAIRS = (  # word_1, word_2, similarity 0-10
    ("red", "orange", 7.5), ("blue", "purple", 7.0), ("red", "blue", 6.0), ("green", "yellow", 6.2),
    ("black", "white", 5.5), ("circle", "square", 6.0), ("triangle", "square", 6.5), ("star", "circle", 4.5),
    ("small", "big", 5.0), ("red", "circle", 1.5), ("blue", "square", 1.0), ("green", "triangle", 1.2),
    ("big", "yellow", 0.5), ("small", "star", 1.8), ("white", "big", 0.8), ("orange", "triangle", 0.7),
)
PAIR_DATASET = "toy-sim"
INFO_FILE = "synth_zr2021.json"
MIN_GAP_S = 0.15  # silences longer than this separate syllables / words (stop closures are shorter)


class SynthZRError(VGSError, RuntimeError):
    """The set cannot be generated (no espeak-ng, a voice it lacks, bad output dir)."""


def _espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's waveform of ``text`` as float32 at 16 kHz."""
    import soundfile as sf
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SynthZRError("espeak-ng not found on PATH; install it (Debian/Ubuntu: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        proc = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(WORD_GAP),
                               "-w", str(path), text], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0 or not path.is_file() or proc.stderr.strip():
            raise SynthZRError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.decode(errors='replace').strip()}")
        x, rate = sf.read(str(path), dtype="float32")
    if x.ndim > 1:
        x = x.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = gcd(SAMPLE_RATE, rate)
        x = resample_poly(x.astype(np.float64), SAMPLE_RATE // g, rate // g).astype(np.float32)
    return x


def segments(x: np.ndarray, min_gap: float = MIN_GAP_S, hop: int = 160, rel_threshold: float = 0.03) -> List[Tuple[int, int]]:
    """[start, end) samples of the sounding stretches separated by silences longer than ``min_gap``."""
    n = len(x) // hop
    rms = np.sqrt((x[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1))
    loud = rms > rel_threshold * rms.max()
    segs, start, quiet = [], None, 0
    max_quiet = int(round(min_gap * SAMPLE_RATE / hop))
    for i, on in enumerate(loud):
        if on:
            if start is None:
                start = i
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet > max_quiet:
                segs.append((start * hop, (i - quiet + 1) * hop))
                start, quiet = None, 0
    if start is not None:
        segs.append((start * hop, (n - quiet) * hop))
    return segs


def _write_wav(path: Path, x: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(x, -1, 1), SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _speaker(voice: str) -> str:
    return voice.replace("en-", "").replace("+", "").replace("-", "")  # en-us+m1 -> usm1


def _phonetic(out: Path, subset: str, voices: Sequence[str], rng: random.Random, noise: np.random.Generator) -> int:
    folder = out / "phonetic" / subset
    syllables = [(prev, v, nxt) for prev, nxt in CONTEXTS for v in VOWELS]
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    for voice in voices:
        spk = _speaker(voice)
        for t, (speed, pitch) in enumerate(TOKEN_STYLES):
            order = syllables[:]
            rng.shuffle(order)
            text = ", ".join(f"[[{prev}'{VOWELS[v]}{nxt}]]" for prev, v, nxt in order)
            x = _espeak(text, voice, speed, pitch)
            segs = segments(x)
            if len(segs) != len(order):
                raise SynthZRError(f"espeak-ng voice {voice}: found {len(segs)} syllables in {text!r}, expected {len(order)}")
            if subset == "dev-other":
                power = float((x.astype(np.float64) ** 2).mean())
                x = x + noise.normal(0, np.sqrt(power / 10 ** (OTHER_SNR_DB / 10)), len(x)).astype(np.float32)
            utt = f"{spk}-{t:04d}"
            _write_wav(folder / f"{utt}.wav", x)
            for (prev, v, nxt), (a, b) in zip(order, segs):
                lines.append(f"{utt} {a / SAMPLE_RATE:.4f} {b / SAMPLE_RATE:.4f} {v} {prev} {nxt} {spk}")
    (folder / f"{subset}.item").write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def _words(voice: str, speed: int, pitch: int) -> List[np.ndarray]:
    """Each word of WORDS as its own waveform (one espeak-ng call, cut at the pauses, 30 ms margins)."""
    x = _espeak(", ".join(WORDS), voice, speed, pitch)
    segs = segments(x)
    if len(segs) != len(WORDS):
        raise SynthZRError(f"espeak-ng voice {voice}: found {len(segs)} words, expected {len(WORDS)}")
    m = int(0.03 * SAMPLE_RATE)
    return [x[max(0, a - m): b + m] for a, b in segs]


def _csv(path: Path, rows: List[List]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue())


def _semantic(out: Path) -> Tuple[int, int]:
    base = out / "semantic" / "dev"
    gold = [["type", "filename", "voice", "word"]]
    for voice in SEMANTIC_SYNTH_VOICES:
        for word, x in zip(WORDS, _words(voice, 170, 50)):
            name = f"syn-{word}-{_speaker(voice)}"
            _write_wav(base / "synthetic" / f"{name}.wav", x)
            gold.append(["synthetic", name, _speaker(voice), word])
    k = 0
    for voice, speed, pitch in SEMANTIC_NATURAL:
        for t in range(NATURAL_TOKENS):
            for word, x in zip(WORDS, _words(voice, speed + 20 * t, pitch)):
                name = f"lib-{word}-{k:03d}"
                k += 1
                _write_wav(base / "librispeech" / f"{name}.wav", x)
                gold.append(["librispeech", name, "", word])
    _csv(base / "gold.csv", gold)
    pairs = [["type", "dataset", "word_1", "word_2", "similarity", "relatedness"]]
    for typ in ("librispeech", "synthetic"):
        pairs += [[typ, PAIR_DATASET, w1, w2, s, ""] for w1, w2, s in PAIRS]
    _csv(base / "pairs.csv", pairs)
    return len(gold) - 1, len(pairs) - 1


def generate(out, seed: int = 0) -> Dict[str, int]:
    """Write the set to ``out`` (replaced whole; a previous set by this tool only). Returns counts."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / INFO_FILE).is_file():
        raise SynthZRError(f"{out}: exists and is not a vgs-synth-zr2021 output; choose an empty or new directory")
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    counts: Dict[str, int] = {}
    with atomic_dir(out) as tmp:
        for subset, voices in PHONETIC_VOICES.items():
            counts[f"items_{subset}"] = _phonetic(tmp, subset, voices, rng, noise)
        counts["semantic_tokens"], counts["semantic_pairs"] = _semantic(tmp)
        (tmp / INFO_FILE).write_text(json.dumps({"tool": "vgs-synth-zr2021", "seed": seed, "counts": counts}, indent=1) + "\n")
    return counts


@console_script("vgs-synth-zr2021")
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="vgs-synth-zr2021", description="Write a tiny ZeroSpeech 2021 dataset "
                                "(ABX syllables + sSIMI word pairs) spoken by espeak-ng, in the ZR2021 layout.")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    counts = generate(args.out, args.seed)
    print(f"vgs-synth-zr2021: wrote {args.out} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return 0


__all__ = ["generate", "segments", "main", "WORDS", "PAIRS", "VOWELS", "CONTEXTS"]


if __name__ == "__main__":
    raise SystemExit(main())
