"""Errors about one input file: the message names the file and the problem.

The class lives in :mod:`s3prl_vgs.errors` (the base of every bad-input error);
this module keeps the old import path.
"""

from __future__ import annotations

from ..errors import FileProblem, VGSError

__all__ = ["FileProblem", "VGSError"]
