"""``s3prl-vgs-downstream``: s3prl's ``run_downstream.py`` with our hub entries.

What it adds to the stock runner: our entries registered in this process,
``torchrun``'s ``LOCAL_RANK`` passed on as ``--local_rank`` (the 0.4.18 runner
reads only the flag), and a shipped downstream config when ``-c`` is not given
(the s3prl wheel ships none).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

CONFIGS = Path(__file__).parent / "configs"


def _downstream_name(argv: List[str]) -> Optional[str]:
    for flag in ("-d", "--downstream"):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            return argv[argv.index(flag) + 1]
    return None


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "LOCAL_RANK" in os.environ and "--local_rank" not in argv:
        argv += ["--local_rank", os.environ["LOCAL_RANK"]]
    name = _downstream_name(argv)
    if not ({"-c", "--config", "-e", "--past_exp"} & set(argv)) and name:
        shipped = CONFIGS / f"{name}.yaml"
        if not shipped.is_file():
            sys.exit(f"s3prl-vgs-downstream: no config shipped for downstream {name!r}; pass -c CONFIG "
                     f"(shipped: {sorted(p.stem for p in CONFIGS.glob('*.yaml'))})")
        argv += ["-c", str(shipped)]

    from . import register

    register()
    from s3prl import run_downstream

    sys.argv = ["run_downstream.py", *argv]
    run_downstream.main()


if __name__ == "__main__":
    main()
