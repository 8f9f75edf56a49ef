"""The one base class of the errors that bad input raises.

Every error about a user's file or option derives from :class:`VGSError`, so
the console-script wrapper (:mod:`s3prl_vgs.cli`) can tell "your input is
wrong" (one line, exit 1) from a bug. Subclasses keep their older bases too
(``ValueError``, ``RuntimeError``) so existing ``except`` clauses still work.
"""

from __future__ import annotations

import os
from typing import Optional


class VGSError(Exception):
    """Bad input; ``str(e)`` is ``<file>[:<line>]: <problem>`` when a file is known."""


class FileProblem(VGSError, ValueError):
    """``FileProblem(path, reason, line=None)`` keeps the parts (``.path``, ``.line``,
    ``.reason``) so a validator can list problems by file; ``FileProblem(message)`` also works."""

    def __init__(self, path: str | os.PathLike, reason: Optional[str] = None, line: Optional[int] = None):
        if reason is None:
            super().__init__(str(path))
            self.path, self.reason, self.line = None, str(path), None
        else:
            where = f"{path}:{line}" if line is not None else str(path)
            super().__init__(f"{where}: {reason}")
            self.path, self.reason, self.line = str(path), reason, line


__all__ = ["VGSError", "FileProblem"]
