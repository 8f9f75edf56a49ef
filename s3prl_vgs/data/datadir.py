"""Kaldi-style data directories: ``wav.scp``, ``utt2img``, ``img.scp``, ``text``, ``utt2spk``.

Each file maps a key to a value, one ``key value`` line per entry, sorted by
key. Values may contain spaces (``text``); keys may not. Keys are utterance ids
(``wav.scp``, ``utt2img``, ``text``, ``utt2spk``) or image ids (``img.scp``).
Image ids follow each corpus's official convention so that HDF5 features keyed
the official way line up: the COCO file stem, the Places relative image path
(which contains ``/``), the Flickr8k file name. Whatever the corpus, every key
is free of whitespace. Relative paths in values are relative to the current
directory, as in Kaldi.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import VGSError
from ..io import TextFileError, atomic_dir, read_lines

FILES = ("wav.scp", "utt2img", "img.scp", "text", "utt2spk")
REQUIRED = ("wav.scp", "utt2img", "img.scp")


class DataDirError(VGSError, ValueError):
    """A malformed data-dir file; the message names the file and line."""


def parse_scp_line(line: str) -> Optional[Tuple[str, str]]:
    """``(key, value)`` of one line split at the first whitespace; None if it has no value."""
    parts = line.strip().split(None, 1)
    if len(parts) != 2:
        return None
    return parts[0], parts[1].strip()


def read_scp_lines(path: str | os.PathLike) -> List[Tuple[int, str, str]]:
    """``(line_number, key, value)`` for every non-empty line, in file order."""
    out = []
    try:
        lines = read_lines(path)
    except TextFileError as e:
        raise DataDirError(str(e)) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parsed = parse_scp_line(line)
        if parsed is None:
            raise DataDirError(f"{path}:{n}: expected 'key value', got {line.rstrip()[:80]!r}")
        out.append((n, *parsed))
    return out


def read_scp(path: str | os.PathLike) -> Dict[str, str]:
    """Read a ``key value`` file into a dict; duplicate keys are an error."""
    out: Dict[str, str] = {}
    for n, key, value in read_scp_lines(path):
        if key in out:
            raise DataDirError(f"{path}:{n}: duplicate key {key!r}")
        out[key] = value
    return out


def scp_text(path: str | os.PathLike, mapping: Dict[str, str]) -> str:
    """The sorted ``key value`` lines of ``mapping``; DataDirError (naming ``path``) for a bad entry."""
    lines = []
    for key in sorted(mapping):
        if not isinstance(key, str) or not key or any(c.isspace() for c in key):
            raise DataDirError(f"{path}: key {key!r} is empty or contains whitespace")
        value = str(mapping[key]).replace("\r", " ").replace("\n", " ").strip()
        if not value:
            raise DataDirError(f"{path}: key {key!r} has an empty value")
        lines.append(f"{key} {value}\n")
    return "".join(lines)


def write_scp(path: str | os.PathLike, mapping: Dict[str, str]) -> None:
    """Write sorted ``key value`` lines atomically (every entry is checked before anything is written)."""
    from ..io import atomic_write_text

    atomic_write_text(path, scp_text(path, mapping))


@dataclass
class DataDir:
    """One split: utterances, their images and optional transcripts/speakers."""

    wav: Dict[str, str] = field(default_factory=dict)  # utt -> wav path
    utt2img: Dict[str, str] = field(default_factory=dict)  # utt -> image id
    img: Dict[str, str] = field(default_factory=dict)  # image id -> image path
    text: Dict[str, str] = field(default_factory=dict)
    utt2spk: Dict[str, str] = field(default_factory=dict)

    _NAMES = {"wav": "wav.scp", "utt2img": "utt2img", "img": "img.scp", "text": "text", "utt2spk": "utt2spk"}

    @classmethod
    def read(cls, path: str | os.PathLike) -> "DataDir":
        path = Path(path)
        if not path.is_dir():
            raise DataDirError(f"{path}: not a directory")
        for name in REQUIRED:
            if not (path / name).is_file():
                raise DataDirError(f"{path / name}: missing (a data dir needs {', '.join(REQUIRED)})")
        kwargs = {}
        for attr, name in cls._NAMES.items():
            f = path / name
            kwargs[attr] = read_scp(f) if f.is_file() else {}
        return cls(**kwargs)

    def texts(self, path: str | os.PathLike) -> Dict[str, str]:
        """``{file name: content}`` of the dir at ``path``; DataDirError for a bad entry, nothing written."""
        path = Path(path)
        return {name: scp_text(path / name, getattr(self, attr))
                for attr, name in self._NAMES.items() if getattr(self, attr) or name in REQUIRED}

    def write(self, path: str | os.PathLike) -> Path:
        """Write the dir as a whole: every entry is checked first, then a temporary sibling
        replaces ``path`` at once. Files of an existing ``path`` that are not data-dir files
        (``FILES``) are kept; stale data-dir files from an earlier write are not."""
        path = Path(path)
        texts = self.texts(path)
        others = [p.name for p in path.iterdir() if p.name not in FILES] if path.is_dir() else []
        with atomic_dir(path, keep=others) as tmp:
            for name, text in texts.items():
                (tmp / name).write_text(text, encoding="utf-8")
        return path

    @property
    def utts(self) -> List[str]:
        return sorted(self.wav)

    def image_of(self, utt: str) -> Optional[str]:
        return self.utt2img.get(utt)

    def __len__(self) -> int:
        return len(self.wav)


__all__ = ["DataDir", "DataDirError", "parse_scp_line", "read_scp", "read_scp_lines", "write_scp", "FILES", "REQUIRED"]
