"""Where the project's shared reference material lies: ``../shared`` beside the clone (CI) or $S3PRL_VGS_SHARED."""

import os
from pathlib import Path

SHARED = Path(os.environ.get("S3PRL_VGS_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
REFERENCE = SHARED / "reference"
