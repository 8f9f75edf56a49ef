"""``s3prl-vgs-downstream``: s3prl's ``run_downstream.py`` with our hub entries.

What it adds to the stock runner: our entries registered in this process;
weights-only ``torch.load`` admitted to s3prl's own checkpoints (their
``Args`` is an ``argparse.Namespace``; that one class, nothing more), so
``-m evaluate -e CKPT`` and resuming with ``-e`` work on torch >= 2.6;
``torchrun``'s ``LOCAL_RANK`` and ``torch.distributed.launch``'s
``--local-rank`` passed on as ``--local_rank`` (the 0.4.18 runner reads only
that flag); a shipped downstream config when ``-c`` is not given (the
s3prl wheel ships none); and ``--device cpu`` working on a CUDA machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Mapping, Optional

from ..cli import console_script

CONFIGS = Path(__file__).parent / "configs"


def _downstream_name(argv: List[str]) -> Optional[str]:
    for flag in ("-d", "--downstream"):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            return argv[argv.index(flag) + 1]
    return None


def runner_argv(argv: List[str], environ: Mapping[str, str]) -> List[str]:
    """The argument list for s3prl's runner: rank flags normalised, a config filled in."""
    out: List[str] = []
    for a in argv:
        if a.startswith("--local-rank"):  # torch.distributed.launch (torch >= 2.0) spelling
            a = "--local_rank" + a[len("--local-rank"):]
        out.extend(a.split("=", 1) if a.startswith("--local_rank=") else [a])
    if "LOCAL_RANK" in environ and "--local_rank" not in out:
        out += ["--local_rank", environ["LOCAL_RANK"]]
    name = _downstream_name(out)
    if not ({"-c", "--config", "-e", "--past_exp"} & set(out)) and name:
        shipped = CONFIGS / f"{name}.yaml"
        if not shipped.is_file():
            raise SystemExit(f"s3prl-vgs-downstream: no config shipped for downstream {name!r}; pass -c CONFIG "
                             f"(shipped: {sorted(p.stem for p in CONFIGS.glob('*.yaml'))})")
        out += ["-c", str(shipped)]
    return out


def _device(argv: List[str]) -> Optional[str]:
    for i, a in enumerate(argv):
        if a == "--device" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--device="):
            return a.split("=", 1)[1]
    return None


@console_script("s3prl-vgs-downstream")
def main(argv: Optional[List[str]] = None) -> None:
    argv = runner_argv(list(sys.argv[1:] if argv is None else argv), os.environ)
    if _device(argv) == "cpu":
        # The 0.4.18 runner's evaluate() enters torch.cuda.device(args.device) whenever CUDA is
        # available, which fails for "cpu": hide the GPUs from a CPU run (CUDA reads this at its
        # first use, which importing torch does not make).
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    from s3prl_vgs_startup import admit_s3prl_checkpoints

    from . import register

    admit_s3prl_checkpoints()
    register()
    from s3prl import run_downstream

    sys.argv = ["run_downstream.py", *argv]
    run_downstream.main()


if __name__ == "__main__":
    sys.exit(main())
