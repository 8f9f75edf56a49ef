"""``vgs-synth``: a tiny synthetic spoken-caption corpus for the demo, CI and tests.

Real corpora are tens of gigabytes; this one is made in seconds and still has
what the models need to learn something checkable: each 224x224 image shows
1-3 non-overlapping objects (shape x color x size on a plain gray background)
and has 5 spoken captions from templates ("a big red circle next to a small
blue square"), spoken by ``espeak-ng`` with several voices at varied speed and
pitch and resampled to 16 kHz mono 16-bit.

It is written in the SpokenCOCO layout so that the demo runs the real reader
(``vgs-prepare --corpus spokencoco --root OUT``)::

    OUT/SpokenCOCO/SpokenCOCO_{train,val,test}_karpathy.json   per image: image, captions[text, speaker, uttid, wav]
    OUT/SpokenCOCO/wavs/{split}/<uttid>.wav
    OUT/images/{split}/synth_{split}_NNNNNN.png                 image id = file stem
    OUT/boxes.json      {image_id: [[x1, y1, x2, y2], ...]}     pixels; object pixels lie in x1 <= x < x2, y1 <= y < y2
    OUT/objects.json    {image_id: [{shape, color, size, box}, ...]}
    OUT/fluent_commands/data/{train,valid,test}_data.csv       s3prl's fluent_commands layout (probing)
    OUT/fluent_commands/wavs/speakers/<voice>/<id>.wav
    OUT/synth_info.json the arguments; marks OUT as vgs-synth output

Deterministic: every image draws from its own ``random.Random`` seeded by
(seed, split, index), espeak-ng is deterministic for fixed arguments, and
resampling is a fixed polyphase filter, so the same seed gives byte-identical
files however many workers run.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from math import gcd
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..cli import console_script
from ..config import atomic_write_text
from .audio import SAMPLE_RATE

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 160, 40),
    "blue": (30, 60, 230),
    "yellow": (245, 215, 0),
    "purple": (140, 30, 180),
    "orange": (255, 130, 0),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
SIZES = {"small": (32, 44), "big": (72, 92)}  # side of the square box, pixels
BACKGROUND_GRAY = (100, 160)  # plain gray background; never equal to an object color
VOICES = ("en-us+m1", "en-us+m2", "en-us+m3", "en-us+f1", "en-us+f2")
# The demo's split of espeak-ng voices: training captions use DEMO_TRAIN_VOICES only;
# val and test captions use DEMO_TEST_VOICES only, so retrieval is measured on unseen speakers.
DEMO_TRAIN_VOICES = ("en-us+m1", "en-us+m2", "en-us+m3", "en-us+m5", "en-us+m6", "en-us+m7",
                     "en-us+f1", "en-us+f2", "en-us+f4", "en-gb+m1", "en-gb+f1", "en-gb+m3")
DEMO_TEST_VOICES = ("en-us+m4", "en-us+f3", "en-us+m8", "en-gb+f2")
IMAGE_SIZE = 224
CAPTIONS_PER_IMAGE = 5
MARGIN = 4  # pixels between objects, and between an object and the border
SPEED = (130, 190)  # espeak-ng words per minute
PITCH = (30, 70)  # espeak-ng pitch, 0-99
SPLITS = ("train", "val", "test")
INFO_FILE = "synth_info.json"
PARTIAL_FILE = ".vgs-synth-incomplete"  # present while vgs-synth writes; a killed run leaves it, so a rerun may reuse OUT
OUTPUTS = ("SpokenCOCO", "images", "fluent_commands", "boxes.json", "objects.json", INFO_FILE)


class SynthError(RuntimeError):
    """The corpus cannot be generated (no espeak-ng, unknown voice, bad output dir)."""


@dataclass
class SynthObject:
    shape: str
    color: str
    size: str
    box: Tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive) in pixels

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"

    @property
    def center(self) -> Tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


# ---------------------------------------------------------------- images


def _overlaps(a, b, gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def sample_scene(rng: random.Random) -> Tuple[int, List[SynthObject]]:
    """A background gray level and 1-3 objects with distinct (shape, color) and disjoint boxes."""
    gray = rng.randint(*BACKGROUND_GRAY)
    n = rng.randint(1, 3)
    objects: List[SynthObject] = []
    for _ in range(1000):
        if len(objects) == n:
            return gray, objects
        shape, color, size = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES))
        if any(o.shape == shape and o.color == color for o in objects):
            continue  # keep every caption unambiguous
        side = rng.randint(*SIZES[size])
        x1 = rng.randint(MARGIN, IMAGE_SIZE - MARGIN - side)
        y1 = rng.randint(MARGIN, IMAGE_SIZE - MARGIN - side)
        box = (x1, y1, x1 + side, y1 + side)
        if not any(_overlaps(box, o.box, MARGIN) for o in objects):
            objects.append(SynthObject(shape, color, size, box))
    raise RuntimeError("could not place the objects")  # unreachable for these sizes


def _unit_polygon(shape: str) -> List[Tuple[float, float]]:
    if shape == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "diamond":
        return [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.4
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        # stretch to fill the box, so the box is tight
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in pts]
    raise ValueError(shape)


def draw_object(draw: ImageDraw.ImageDraw, obj: SynthObject) -> None:
    """Draw ``obj`` without anti-aliasing, touching every side of its box and nothing outside."""
    fill = COLORS[obj.color]
    x1, y1, x2, y2 = obj.box
    left, top, right, bottom = x1, y1, x2 - 1, y2 - 1  # PIL coordinates are inclusive
    if obj.shape == "circle":
        draw.ellipse([left, top, right, bottom], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([left, top, right, bottom], fill=fill)
    elif obj.shape == "cross":
        t = (right - left) // 6  # half the bar thickness
        cx, cy = (left + right) // 2, (top + bottom) // 2
        draw.rectangle([left, cy - t, right, cy + t], fill=fill)
        draw.rectangle([cx - t, top, cx + t, bottom], fill=fill)
    else:
        w, h = right - left, bottom - top
        draw.polygon([(round(left + u * w), round(top + v * h)) for u, v in _unit_polygon(obj.shape)], fill=fill)


def render_scene(gray: int, objects: Sequence[SynthObject]) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (gray, gray, gray))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj)
    return image


# ---------------------------------------------------------------- captions


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _relation(a: SynthObject, b: SynthObject) -> str:
    """Where ``a`` is relative to ``b``, along the axis on which they are further apart."""
    (ax, ay), (bx, by) = a.center, b.center
    if abs(bx - ax) >= abs(by - ay):
        return "to the left of" if bx > ax else "to the right of"
    return "above" if by > ay else "below"


def _region(obj: SynthObject) -> str:
    cx, cy = obj.center
    col = "left" if cx < IMAGE_SIZE / 3 else "right" if cx > 2 * IMAGE_SIZE / 3 else ""
    row = "top" if cy < IMAGE_SIZE / 3 else "bottom" if cy > 2 * IMAGE_SIZE / 3 else ""
    if row and col:
        return f"in the {row} {col} corner"
    if row:
        return f"at the {row}"
    if col:
        return f"on the {col}"
    return "in the middle"


def make_captions(objects: Sequence[SynthObject], rng: random.Random, n: int = CAPTIONS_PER_IMAGE) -> List[str]:
    """``n`` distinct true descriptions of the scene, from templates over every object order."""
    candidates: List[str] = []
    for order in itertools.permutations(objects):
        listed = _join([o.phrase for o in order])
        candidates += [listed, f"a picture of {listed}", f"there is {listed}", f"i see {listed}",
                       f"{listed} on a gray background"]
        if len(order) >= 2:
            a, b = order[0], order[1]
            candidates += [f"{a.phrase} next to {b.phrase}", f"{a.phrase} {_relation(a, b)} {b.phrase}"]
    if len(objects) == 1:
        o = objects[0]
        candidates += [f"{o.phrase} {_region(o)}", f"a picture of {o.phrase} {_region(o)}"]
    unique = list(dict.fromkeys(candidates))
    return rng.sample(unique, n)


# ---------------------------------------------------------------- speech


def _espeak_exe() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SynthError("espeak-ng not found on PATH; install it (Debian/Ubuntu: apt-get install espeak-ng)")
    return exe


def _parse_wav(buf: bytes) -> Tuple[int, np.ndarray]:
    """espeak-ng --stdout writes a streaming WAV whose size fields are placeholders; read the chunks ourselves."""
    if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
        raise SynthError("espeak-ng wrote no WAV data")
    pos, rate = 12, None
    while pos + 8 <= len(buf):
        cid, size = buf[pos:pos + 4], struct.unpack("<I", buf[pos + 4:pos + 8])[0]
        if cid == b"fmt ":
            fmt, channels, rate = struct.unpack("<HHI", buf[pos + 8:pos + 16])
            bits = struct.unpack("<H", buf[pos + 22:pos + 24])[0]
            if (fmt, channels, bits) != (1, 1, 16):
                raise SynthError(
                    f"espeak-ng wrote format {fmt}, {channels} channels, {bits} bits; expected 16-bit mono PCM"
                )
        elif cid == b"data":
            if rate is None:
                break
            data = buf[pos + 8:]  # streaming: the size field is not the real size
            return rate, np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
        pos += 8 + size + (size & 1)
    raise SynthError("espeak-ng wrote a WAV without fmt/data chunks")


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """``text`` spoken by espeak-ng as int16 samples at 16 kHz."""
    from scipy.signal import resample_poly

    proc = subprocess.run(
        [_espeak_exe(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    if proc.returncode != 0:
        raise SynthError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.decode(errors='replace').strip()}")
    rate, pcm = _parse_wav(proc.stdout)
    if rate != SAMPLE_RATE:
        g = gcd(SAMPLE_RATE, rate)
        y = resample_poly(pcm.astype(np.float64), SAMPLE_RATE // g, rate // g)
        pcm = np.clip(np.round(y), -32768, 32767).astype(np.int16)
    return pcm


def check_voices(voices: Sequence[str]) -> None:
    """Fail early, naming the voice, instead of after half the corpus."""
    exe = _espeak_exe()
    for voice in voices:
        proc = subprocess.run([exe, "-v", voice, "-q", "x"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0 or proc.stderr.strip():
            raise SynthError(f"espeak-ng cannot use voice {voice!r} (`espeak-ng --voices` lists the voices)")


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(str(tmp), pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


@dataclass
class _SpeechJob:
    text: str
    voice: str
    speed: int
    pitch: int
    path: Path

    def __call__(self) -> None:
        _write_wav(self.path, speak(self.text, self.voice, self.speed, self.pitch))


def _run_speech(jobs: Sequence[_SpeechJob], workers: int, desc: str, progress: bool) -> None:
    # espeak-ng runs in its own process, so threads are enough to keep 2 cores busy;
    # each job writes its own file, so the order of completion does not matter.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in tqdm(pool.map(lambda j: j(), jobs), total=len(jobs), desc=desc, disable=not progress):
            pass


def _tag(voice: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", voice)


def _speech_params(rng: random.Random) -> Tuple[int, int]:
    return rng.randint(*SPEED), rng.randint(*PITCH)


# ---------------------------------------------------------------- fluent commands

FSC_COLUMNS = ["", "path", "speakerId", "transcription", "action", "object", "location"]
FSC_LOCATIONS = ("kitchen", "bedroom", "washroom", "none")


def command_intents() -> List[Tuple[str, str, str, str]]:
    """``(transcription, action, object, location)`` in the Fluent Speech Commands label scheme."""
    out = []

    def where(loc: str) -> str:
        return "" if loc == "none" else f" in the {loc}"

    for obj, locs in (("lights", FSC_LOCATIONS), ("heat", FSC_LOCATIONS), ("lamp", ("none",)), ("music", ("none",))):
        for loc in locs:
            for on, action in (("on", "activate"), ("off", "deactivate")):
                out.append((f"Turn {on} the {obj}{where(loc)}", action, obj, loc))
                out.append((f"Switch {on} the {obj}{where(loc)}", action, obj, loc))
    for obj, locs in (("heat", FSC_LOCATIONS), ("volume", ("none",))):
        for loc in locs:
            out.append((f"Increase the {obj}{where(loc)}", "increase", obj, loc))
            out.append((f"Turn the {obj} up{where(loc)}", "increase", obj, loc))
            out.append((f"Decrease the {obj}{where(loc)}", "decrease", obj, loc))
            out.append((f"Turn the {obj} down{where(loc)}", "decrease", obj, loc))
    for obj in ("juice", "socks", "shoes", "newspaper"):
        out.append((f"Bring me my {obj}", "bring", obj, "none"))
        out.append((f"Get me the {obj}", "bring", obj, "none"))
    for lang in ("English", "German", "Korean", "Chinese"):
        out.append((f"Change the language to {lang}", "change language", lang, "none"))
        out.append((f"Switch the language to {lang}", "change language", lang, "none"))
    return out


def _split_sizes(n: int) -> Dict[str, int]:
    n_valid = max(1, round(0.2 * n))
    n_test = max(1, round(0.2 * n))
    return {"train": n - n_valid - n_test, "valid": n_valid, "test": n_test}


def _sample_commands(rng: random.Random, n: int) -> Dict[str, List[Tuple[str, str, str, str]]]:
    """Train covers every slot value it can first; valid/test only use values seen in train.

    s3prl builds its label maps from train_data.csv alone, so an unseen value in
    valid/test would be a KeyError at evaluation.
    """
    intents = command_intents()
    sizes = _split_sizes(n)
    order = intents[:]
    rng.shuffle(order)
    cover, seen = [], set()
    for it in order:
        values = {("action", it[1]), ("object", it[2]), ("location", it[3])}
        if not values <= seen:
            cover.append(it)
            seen |= values
    train = cover[: sizes["train"]] + [rng.choice(intents) for _ in range(sizes["train"] - len(cover))]
    known = {s: {it[i] for it in train} for s, i in (("action", 1), ("object", 2), ("location", 3))}
    allowed = [
        it for it in intents if it[1] in known["action"] and it[2] in known["object"] and it[3] in known["location"]
    ]
    out = {"train": train}
    for split in ("valid", "test"):
        out[split] = [rng.choice(allowed) for _ in range(sizes[split])]
    return out


def _write_csv(path: Path, rows: List[List[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FSC_COLUMNS)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())


def _fluent_commands(out: Path, n: int, seed: int, voices: Sequence[str]) -> List[_SpeechJob]:
    """Write the CSVs of s3prl's fluent_commands layout; return the speech jobs for their wavs."""
    rng = random.Random(f"{seed}/fluent_commands")
    base = out / "fluent_commands"
    jobs: List[_SpeechJob] = []
    for split, commands in _sample_commands(rng, n).items():
        rows = []
        for i, (text, action, obj, loc) in enumerate(commands):
            voice = rng.choice(list(voices))
            speed, pitch = _speech_params(rng)
            rel = f"wavs/speakers/{_tag(voice)}/{split}_{i:05d}.wav"
            rows.append([str(i), rel, _tag(voice), text, action, obj, loc])
            jobs.append(_SpeechJob(text.lower(), voice, speed, pitch, base / rel))
        _write_csv(base / "data" / f"{split}_data.csv", rows)
    return jobs


# ---------------------------------------------------------------- corpus


def _prepare_out(out: Path) -> None:
    """OUT must be new, empty, or an earlier vgs-synth output (whose files are replaced)."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not ((out / INFO_FILE).is_file() or (out / PARTIAL_FILE).is_file()):
            raise SynthError(f"{out}: not empty and not written by vgs-synth (no {INFO_FILE}); choose a new directory")
        for name in OUTPUTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    # INFO_FILE (written last) marks a finished corpus; until then this marks ours and unfinished.
    (out / PARTIAL_FILE).write_text("vgs-synth is writing here (or was killed); rerun vgs-synth to finish\n")


def _dump(obj) -> str:
    return json.dumps(obj, indent=1) + "\n"


def generate(
    out: str | os.PathLike,
    n_train: int = 20,
    n_val: int = 5,
    n_test: int = 5,
    seed: int = 0,
    voices: Sequence[str] = VOICES,
    n_commands: int = 60,
    jobs: int = 2,
    progress: bool = True,
    test_voices: Optional[Sequence[str]] = None,
) -> Dict[str, int]:
    """Write the synthetic corpus to ``out`` (layout in the module docstring); return counts.

    ``voices`` speak the train captions (and the commands); ``test_voices``, when
    given, speak the val and test captions instead, so that evaluation is on
    speakers the model never heard (the demo uses DEMO_TRAIN_VOICES / DEMO_TEST_VOICES).
    """
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if any(v < 0 for v in counts.values()) or sum(counts.values()) == 0:
        raise SynthError("image counts must be >= 0 and not all 0")
    if n_commands < 3:
        raise SynthError("--n-commands must be at least 3 (one per train/valid/test split)")
    voices = list(voices)
    if not voices:
        raise SynthError("at least one voice is needed")
    held_out = voices if test_voices is None else list(test_voices)
    if not held_out:
        raise SynthError("--test-voices needs at least one voice")
    check_voices(list(dict.fromkeys(voices + held_out)))
    out = Path(out)
    _prepare_out(out)

    speech: List[_SpeechJob] = []
    boxes: Dict[str, List[List[int]]] = {}
    objects_json: Dict[str, List[dict]] = {}
    for split, n in counts.items():
        if n == 0:
            continue
        entries = []
        for i in tqdm(range(n), desc=f"images {split}", disable=not progress, leave=False):
            rng = random.Random(f"{seed}/{split}/{i}")
            gray, objects = sample_scene(rng)
            image_id = f"synth_{split}_{i:06d}"
            rel_image = f"images/{split}/{image_id}.png"
            (out / rel_image).parent.mkdir(parents=True, exist_ok=True)
            tmp = out / f"images/{split}/.{image_id}.png.tmp"
            render_scene(gray, objects).save(tmp, format="PNG")
            os.replace(tmp, out / rel_image)
            boxes[image_id] = [list(o.box) for o in objects]
            objects_json[image_id] = [{**asdict(o), "box": list(o.box)} for o in objects]
            order = (voices if split == "train" else held_out)[:]
            rng.shuffle(order)
            captions = []
            for k, text in enumerate(make_captions(objects, rng)):
                voice = order[k % len(order)]
                speed, pitch = _speech_params(rng)
                uttid = f"{_tag(voice)}-{image_id}_{k}"
                wav = f"wavs/{split}/{uttid}.wav"
                captions.append({"text": text, "speaker": voice, "uttid": uttid, "wav": wav})
                speech.append(_SpeechJob(text, voice, speed, pitch, out / "SpokenCOCO" / wav))
            entries.append({"image": rel_image, "captions": captions})
        (out / "SpokenCOCO").mkdir(exist_ok=True)
        atomic_write_text(out / "SpokenCOCO" / f"SpokenCOCO_{split}_karpathy.json", _dump({"data": entries}))
    atomic_write_text(out / "boxes.json", _dump(boxes))
    atomic_write_text(out / "objects.json", _dump(objects_json))
    commands = _fluent_commands(out, n_commands, seed, voices)

    _run_speech(speech, jobs, "captions", progress)
    _run_speech(commands, jobs, "commands", progress)
    info = {"generator": "vgs-synth", "seed": seed, **{f"n_{s}": n for s, n in counts.items()},
            "voices": voices, "test_voices": held_out, "n_commands": n_commands}
    atomic_write_text(out / INFO_FILE, _dump(info))
    (out / PARTIAL_FILE).unlink(missing_ok=True)
    return {**counts, "captions": len(speech), "commands": len(commands)}


@console_script("vgs-synth")
def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vgs-synth",
        description="Write the synthetic spoken-caption corpus (shapes on gray, captions spoken by espeak-ng) "
        "in the SpokenCOCO layout, plus boxes.json, objects.json and a fluent_commands probing set.",
    )
    parser.add_argument("--out", required=True, help="output dir (new, empty, or an earlier vgs-synth output)")
    parser.add_argument("--n-train", type=int, default=20, help="train images (5 captions each; default 20)")
    parser.add_argument("--n-val", type=int, default=5, help="val images (default 5)")
    parser.add_argument("--n-test", type=int, default=5, help="test images (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical corpus (default 0)")
    parser.add_argument(
        "--voices", nargs="+", default=list(VOICES), help=f"espeak-ng voices (default: {' '.join(VOICES)})"
    )
    parser.add_argument(
        "--test-voices", nargs="+", default=None,
        help="espeak-ng voices of the val and test captions (default: the --voices); "
        "disjoint from --voices, the test speakers are unseen in training",
    )
    parser.add_argument("--n-commands", type=int, default=60, help="spoken commands over train/valid/test (default 60)")
    parser.add_argument("--jobs", type=int, default=2, help="espeak-ng processes at once (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(None if argv is None else list(argv))
    start = time.time()
    try:
        counts = generate(
            args.out, args.n_train, args.n_val, args.n_test, args.seed, args.voices, args.n_commands,
            jobs=args.jobs, progress=not args.quiet, test_voices=args.test_voices,
        )
    except SynthError as e:
        print(f"vgs-synth: error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.out}: {counts['train']}/{counts['val']}/{counts['test']} train/val/test images, "
        f"{counts['captions']} captions, {counts['commands']} commands in {time.time() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


__all__ = ["SHAPES", "COLORS", "SIZES", "VOICES", "DEMO_TRAIN_VOICES", "DEMO_TEST_VOICES", "SynthObject", "SynthError", "sample_scene", "render_scene",
           "make_captions", "speak", "command_intents", "generate", "main"]

if __name__ == "__main__":
    sys.exit(main())
