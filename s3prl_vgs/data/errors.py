"""Errors about one input file: the message names the file and the problem."""

from __future__ import annotations

import os


class FileProblem(ValueError):
    """``FileProblem(path, reason)`` keeps both parts (``.path``, ``.reason``)
    so a validator can list problems by file; ``FileProblem(message)`` also works."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        if reason is None:
            super().__init__(str(path))
            self.path, self.reason = None, str(path)
        else:
            super().__init__(f"{path}: {reason}")
            self.path, self.reason = str(path), reason
