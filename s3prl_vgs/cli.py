"""The one wrapper of every console script's ``main``: bad input is one line, never a traceback.

``@console_script("vgs-tool")`` on a ``main(argv=None) -> int`` makes it:

- run ``main`` with ``--debug`` removed from the arguments;
- turn any exception into one line ``vgs-tool: error: <file>[:<line>]: <problem>``
  on stderr and exit status 1 (130 on Ctrl-C). Errors about input derive from
  :class:`s3prl_vgs.errors.VGSError` and carry the file in their message; an
  ``OSError`` names its file; anything else is reported by type, as a bug;
- with ``--debug`` or ``S3PRL_VGS_DEBUG=1``: let the exception propagate with
  its full traceback.

Outputs are written atomically elsewhere (:mod:`s3prl_vgs.io`), so an error or
a kill never leaves a file that looks complete.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, List, Optional, Sequence

from .errors import FileProblem, VGSError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "S3PRL_VGS_DEBUG"


def debug_enabled(argv: Sequence[str] = ()) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def describe(e: BaseException) -> str:
    """``<file>[:<line>]: <problem>`` for the known kinds of error."""
    if isinstance(e, VGSError):
        return one_line(e)
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {one_line(e.strerror or type(e).__name__)}"
    if isinstance(e, UnicodeDecodeError):
        return f"input is not UTF-8 text ({one_line(e)})"
    if isinstance(e, MemoryError):
        return "out of memory (is an input far larger than expected?)"
    return (f"unexpected {type(e).__name__}{_origin(e)}: {one_line(e)[:300]} "
            f"(a bug; rerun with {DEBUG_FLAG} for the traceback)")


def _origin(e: BaseException) -> str:
    """`` at file.py:line`` of the innermost frame, so a bug report without --debug still points somewhere."""
    tb = e.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = tb.tb_frame.f_code.co_filename
    for marker in ("/site-packages/", "/s3prl_vgs/", "/espnet_recipes/"):
        if marker in path:
            path = path[path.rindex(marker) + (len(marker) if marker == "/site-packages/" else 1):]
            break
    return f" at {path}:{tb.tb_lineno}"


def console_script(tool: str) -> Callable[[Callable[..., Optional[int]]], Callable[..., int]]:
    """Decorate ``main(argv=None)``; see the module docstring."""

    def wrap(main: Callable[..., Optional[int]]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(argv: Optional[Sequence[str]] = None) -> int:
            args: List[str] = list(sys.argv[1:] if argv is None else argv)
            debug = debug_enabled(args)
            args = [a for a in args if a != DEBUG_FLAG]
            if debug:
                return main(args) or 0
            try:
                return main(args) or 0
            except KeyboardInterrupt:
                print(f"{tool}: error: interrupted", file=sys.stderr)
                return 130
            except SystemExit:
                raise  # argparse's usage errors and explicit exits keep their status and message
            except Exception as e:  # noqa: BLE001 -- the point: no traceback for the user
                print(f"{tool}: error: {describe(e)}", file=sys.stderr)
                return 1

        wrapped.tool = tool  # type: ignore[attr-defined]
        return wrapped

    return wrap


def fail(tool: str, e: BaseException) -> int:
    """Print ``e`` the wrapper's way and return exit status 1 (for mains that catch their own errors)."""
    print(f"{tool}: error: {describe(e)}", file=sys.stderr)
    return 1


__all__ = ["VGSError", "FileProblem", "console_script", "debug_enabled", "describe", "fail", "DEBUG_ENV", "DEBUG_FLAG"]
