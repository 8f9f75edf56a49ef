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

FILES = ("wav.scp", "utt2img", "img.scp", "text", "utt2spk")
REQUIRED = ("wav.scp", "utt2img", "img.scp")


class DataDirError(ValueError):
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
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parsed = parse_scp_line(line)
            if parsed is None:
                raise DataDirError(f"{path}:{n}: expected 'key value', got {line.rstrip()!r}")
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


def write_scp(path: str | os.PathLike, mapping: Dict[str, str]) -> None:
    """Write sorted ``key value`` lines atomically."""
    path = Path(path)
    lines = []
    for key in sorted(mapping):
        if not key or any(c.isspace() for c in key):
            raise DataDirError(f"{path}: key {key!r} is empty or contains whitespace")
        value = str(mapping[key]).replace("\r", " ").replace("\n", " ").strip()
        if not value:
            raise DataDirError(f"{path}: key {key!r} has an empty value")
        lines.append(f"{key} {value}\n")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, path)


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

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for attr, name in self._NAMES.items():
            mapping = getattr(self, attr)
            if mapping or name in REQUIRED:
                write_scp(path / name, mapping)
            elif (path / name).is_file():  # a stale file from an earlier write would no longer match
                (path / name).unlink()
        return path

    @property
    def utts(self) -> List[str]:
        return sorted(self.wav)

    def image_of(self, utt: str) -> Optional[str]:
        return self.utt2img.get(utt)

    def __len__(self) -> int:
        return len(self.wav)


__all__ = ["DataDir", "DataDirError", "parse_scp_line", "read_scp", "read_scp_lines", "write_scp", "FILES", "REQUIRED"]
