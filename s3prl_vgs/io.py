"""The one place where text files are read and where outputs are written.

Reading: every text file (scp, corpus JSON and lists, ``config.yaml``, an
exported experiment config) goes through :func:`read_text`, which decodes
UTF-8 strictly and turns every failure into a :class:`TextFileError` naming
the file and, where there is one, the line. :func:`load_json` and
:func:`load_yaml` add the parser's line to its message, and refuse input
nested deeper than the parser's stack.

Writing: nothing half-written may look complete. :func:`atomic_write_text`
writes a temporary sibling and renames it over the target; :func:`atomic_dir`
does the same for a whole directory (a data dir, a model dir, a dump dir):
the caller fills a temporary sibling and the directory takes its place at
once (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, where a
kill in between leaves no directory rather than a mixed one).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, List, Optional

from .errors import FileProblem

MAX_TEXT_BYTES = 1 << 31  # a text input larger than 2 GiB is not one of ours


class TextFileError(FileProblem):
    """A text file that cannot be read or parsed; the message names the file and line."""


# ----------------------------------------------------------------------------- reading


def _os_reason(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "missing"
    if isinstance(e, IsADirectoryError):
        return "is a directory, expected a file"
    return f"unreadable ({e.strerror or type(e).__name__})"


def read_bytes(path: str | os.PathLike) -> bytes:
    try:
        if os.path.getsize(path) > MAX_TEXT_BYTES:
            raise TextFileError(path, f"larger than {MAX_TEXT_BYTES >> 30} GiB; not a text input")
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TextFileError(path, _os_reason(e)) from None


def decode_text(data: bytes, path: str | os.PathLike) -> str:
    """``data`` as UTF-8 (a leading BOM is dropped); TextFileError naming the line otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise TextFileError(path, f"not UTF-8 text (byte 0x{data[e.start]:02x} at column {col})", line=line) from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: str | os.PathLike) -> str:
    """The whole file as text (strict UTF-8)."""
    return decode_text(read_bytes(path), path)


def read_lines(path: str | os.PathLike) -> List[str]:
    """The file's lines without their line ends (``\\n``, ``\\r\\n``); line ``n`` is ``[n - 1]``."""
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def parse_json(text: str, path: str | os.PathLike) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TextFileError(path, f"not valid JSON ({e.msg}, column {e.colno})", line=e.lineno) from None
    except RecursionError:
        raise TextFileError(path, "not valid JSON (nested too deeply)") from None


def load_json(path: str | os.PathLike) -> Any:
    return parse_json(read_text(path), path)


def parse_yaml(text: str, path: str | os.PathLike) -> Any:
    """``yaml.safe_load`` of ``text`` with errors naming ``path`` and the line."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        line = None if mark is None else mark.line + 1
        raise TextFileError(path, f"not valid YAML ({problem})", line=line) from None
    except yaml.YAMLError as e:
        raise TextFileError(path, f"not valid YAML ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise TextFileError(path, "not valid YAML (nested too deeply)") from None


def load_yaml(path: str | os.PathLike) -> Any:
    return parse_yaml(read_text(path), path)


# ----------------------------------------------------------------------------- writing


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see the old or the new file, never half of one."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text written atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put directory ``tmp`` at ``path`` as a whole; an old ``path`` directory is removed."""
    tmp, path = Path(tmp), Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FileProblem(path, "exists and is not a directory")
    if not path.exists():
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):
        shutil.rmtree(tmp)  # now holds the old directory
        return
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, keep: Optional[List[str]] = None) -> Iterator[Path]:
    """Fill the yielded temporary sibling of ``path``; on success it replaces ``path`` whole.

    On an exception the temporary directory is removed and ``path`` is left
    as it was. ``keep``: names of entries of an existing ``path`` that are
    not part of this output and are carried over (hard links, else copies).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    try:
        yield tmp
        for name in keep or ():
            src, dst = path / name, tmp / name
            if dst.exists() or not src.exists():
                continue
            if src.is_dir():
                shutil.copytree(src, dst, symlinks=True)
            else:
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; a data or model dir is as shareable as any mkdir
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask can only be read by setting it


__all__ = [
    "TextFileError",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "decode_text",
    "load_json",
    "load_yaml",
    "parse_json",
    "parse_yaml",
    "read_bytes",
    "read_lines",
    "read_text",
    "replace_dir",
]
