"""Check a data dir before training: list every problem, each with its file and reason.

Training on a corpus of hundreds of thousands of files should not stop at
hour three on one bad wav, so this reads every header up front (``sf.info``
and PIL's header check plus the truncation check of
:func:`s3prl_vgs.data.image.image_info`, not full decodes) and reports all
problems at once.
Audio must already be 16 kHz mono: the validator says so instead of fixing it,
because formatting is stage 2's job and silent resampling hides slow input.

Library use: ``validate_data_dir(path) -> List[Problem]`` (empty when clean).
Command line: ``vgs-validate DATA_DIR [DATA_DIR ...]``, exit 1 if any problem.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from tqdm import tqdm

from ..cli import console_script
from ..io import TextFileError, read_lines
from .audio import FORMAT_HINT, SAMPLE_RATE, AudioError, audio_info
from .datadir import FILES, REQUIRED, DataDir, parse_scp_line
from .image import ImageError, image_info, load_image



@dataclass(frozen=True)
class Problem:
    """One problem: the file it is in (or about) and why it is a problem."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


def _read_entries(path: Path, problems: List[Problem]) -> Dict[str, str]:
    """Parse one ``key value`` file, recording malformed lines and duplicate ids."""
    entries: Dict[str, str] = {}
    first_line: Dict[str, int] = {}
    try:
        lines = read_lines(path)
    except TextFileError as e:
        problems.append(Problem(f"{path}:{e.line}" if e.line else str(path), e.reason))
        return entries
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parsed = parse_scp_line(line)
        if parsed is None:
            problems.append(Problem(f"{path}:{n}", f"expected 'key value', got {line.rstrip()[:80]!r}"))
            continue
        key, value = parsed
        if key in entries:
            problems.append(Problem(f"{path}:{n}", f"duplicate id {key!r} (first at line {first_line[key]})"))
            continue
        entries[key] = value
        first_line[key] = n
    return entries


def _check_audio(path: str) -> Optional[str]:
    if path.endswith("|"):
        return "pipe commands are not supported here; write wav files (stage 2) instead"
    try:
        sr, channels, frames = audio_info(path)
    except AudioError as e:
        return e.reason
    if frames == 0:
        return "empty audio (0 samples)"
    reasons = []
    if sr != SAMPLE_RATE:
        reasons.append(f"sample rate {sr} Hz, expected {SAMPLE_RATE} Hz")
    if channels != 1:
        reasons.append(f"{channels} channels, expected mono")
    return f"{'; '.join(reasons)} ({FORMAT_HINT})" if reasons else None


def _check_image(path: str, full_decode: bool) -> Optional[str]:
    try:
        (load_image if full_decode else image_info)(path)
    except ImageError as e:
        return e.reason
    return None


def _check_files(
    items: Dict[str, str], check: Callable[[str], Optional[str]], desc: str, nj: int, progress: bool
) -> List[Tuple[str, str, str]]:
    """Run ``check`` once per distinct path; ``(path, reason, first key)`` for each failure.

    Header reads wait on the file system, so a few threads help on network disks.
    """
    first_key: Dict[str, str] = {}
    for key in sorted(items):
        first_key.setdefault(items[key], key)
    paths = list(first_key)
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:
        results = list(tqdm(pool.map(check, paths), total=len(paths), desc=desc, disable=not progress, leave=False))
    return [(p, r, first_key[p]) for p, r in zip(paths, results) if r is not None]


def validate_data_dir(
    path: str | os.PathLike, *, full_decode: bool = False, nj: int = 4, progress: bool = True
) -> List[Problem]:
    """Every problem of the data dir at ``path``; an empty list means it is ready to use.

    Args:
        path: directory with ``wav.scp``, ``utt2img``, ``img.scp`` and optional ``text``, ``utt2spk``.
        full_decode: decode every image fully (catches truncated JPEG pixel data, much slower).
        nj: threads for the header reads.
        progress: show tqdm bars.
    """
    path = Path(path)
    if not path.is_dir():
        return [Problem(str(path), "not a directory")]
    problems: List[Problem] = []
    tables: Dict[str, Dict[str, str]] = {}
    for name in FILES:
        f = path / name
        if f.is_file():
            tables[name] = _read_entries(f, problems)
        elif name in REQUIRED:
            problems.append(Problem(str(f), f"missing (a data dir needs {', '.join(REQUIRED)})"))
    return problems + _validate_tables(path, tables, full_decode=full_decode, nj=nj, progress=progress)


def validate_data(
    data: DataDir, path: str | os.PathLike, *, full_decode: bool = False, nj: int = 4, progress: bool = True
) -> List[Problem]:
    """The problems the data dir ``data`` would have once written to ``path`` (nothing is written).

    ``vgs-prepare`` checks every split this way before it writes any of them.
    """
    tables = {name: getattr(data, attr) for attr, name in DataDir._NAMES.items()
              if getattr(data, attr) or name in REQUIRED}
    return _validate_tables(Path(path), tables, full_decode=full_decode, nj=nj, progress=progress)


def _validate_tables(
    path: Path, tables: Dict[str, Dict[str, str]], *, full_decode: bool, nj: int, progress: bool
) -> List[Problem]:
    problems: List[Problem] = []
    wavs = tables.get("wav.scp", {})
    utt2img = tables.get("utt2img", {})
    imgs = tables.get("img.scp", {})

    if "wav.scp" in tables and not wavs:
        problems.append(Problem(str(path / "wav.scp"), "no utterances"))
    if "utt2img" in tables:
        for utt in sorted(set(wavs) - set(utt2img)):
            problems.append(Problem(str(path / "utt2img"), f"utterance {utt!r} has no image (it is in wav.scp)"))
    for name in ("utt2img", "text", "utt2spk"):
        if name not in tables or "wav.scp" not in tables:
            continue
        for utt in sorted(set(tables[name]) - set(wavs)):
            problems.append(Problem(str(path / name), f"utterance {utt!r} is not in wav.scp"))
        if name != "utt2img":
            for utt in sorted(set(wavs) - set(tables[name])):
                problems.append(Problem(str(path / name), f"utterance {utt!r} of wav.scp is missing"))
    if "img.scp" in tables:
        for utt in sorted(utt2img):
            if utt2img[utt] not in imgs:
                problems.append(
                    Problem(str(path / "utt2img"), f"utterance {utt!r}: image id {utt2img[utt]!r} has no img.scp entry")
                )

    for wav, reason, utt in _check_files(wavs, _check_audio, f"{path.name}: audio", nj, progress):
        problems.append(Problem(wav, f"{reason} [utterance {utt!r}]"))
    referenced = set(utt2img.values())
    used = {i: p for i, p in imgs.items() if i in referenced} if referenced else imgs

    def check_image(p: str) -> Optional[str]:
        return _check_image(p, full_decode)

    for img, reason, img_id in _check_files(used, check_image, f"{path.name}: images", nj, progress):
        problems.append(Problem(img, f"{reason} [image id {img_id!r}]"))
    return problems


def summarize(path: str | os.PathLike) -> str:
    """A one-line count of what a (valid) data dir holds."""
    from .datadir import DataDir

    dd = DataDir.read(path)
    return f"{len(dd)} utterances, {len(set(dd.utt2img.values()))} images"


def print_problems(problems: Sequence[Problem], limit: Optional[int] = None, out=None) -> None:
    """Print one problem per line (stdout by default), at most ``limit`` of them."""
    out = sys.stdout if out is None else out
    shown = problems if limit is None else problems[:limit]
    for p in shown:
        print(p, file=out)
    if len(problems) > len(shown):
        print(f"... and {len(problems) - len(shown)} more", file=out)


@console_script("vgs-validate")
def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vgs-validate",
        description="List every problem of one or more data dirs (missing, unreadable, empty or "
        "non-16 kHz-mono wavs, missing or unreadable images, unknown image ids, duplicate ids). "
        "Exit status 1 if there is any.",
    )
    parser.add_argument("data_dirs", nargs="+", metavar="DATA_DIR")
    parser.add_argument(
        "--full-decode", action="store_true", help="decode images fully (slow; catches truncated pixel data)"
    )
    parser.add_argument("--nj", type=int, default=4, help="threads for header reads (default 4)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(None if argv is None else list(argv))

    total = 0
    for d in args.data_dirs:
        problems = validate_data_dir(d, full_decode=args.full_decode, nj=args.nj, progress=not args.quiet)
        if problems:
            print_problems(problems)
            print(f"{d}: {len(problems)} problem(s)", file=sys.stderr)
        else:
            print(f"{d}: OK ({summarize(d)})", file=sys.stderr)
        total += len(problems)
    return 1 if total else 0


__all__ = ["Problem", "validate_data_dir", "print_problems", "main"]

if __name__ == "__main__":
    sys.exit(main())
