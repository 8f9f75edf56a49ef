#!/usr/bin/env python3
"""Export a model trained by VGSTask to a model directory (recipe stage 7).

The output (``config.yaml`` + ``model.safetensors``) is what
``s3prl_vgs.load_model``, ``vgs-evaluate`` and the S3PRL hub entries read.
With ``--speech_only`` only the speech branch is written (no image encoder,
cross encoder, MIM decoder or momentum encoder): the S3PRL upstream that stage
7 exports; its ``encode_audio`` is the full model's, bit for bit.
The ESPnet checkpoint is read with ``torch.load(weights_only=True)`` and the
experiment's ``config.yaml`` with ``yaml.safe_load``.

Example:
    vgs-export --exp exp/fast_vgs_tiny --out exp/fast_vgs_tiny/model
    vgs-export --exp exp/fast_vgs_tiny --out exp/fast_vgs_tiny/upstream --speech_only
    vgs-export --exp exp/fast_vgs_tiny --checkpoint 3epoch.pth --out /tmp/model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from s3prl_vgs.cli import console_script


class ExportError(RuntimeError):
    """An experiment directory or checkpoint that cannot be exported; the message names the file."""


PREFIX = "model."  # ESPnetVGSModel keeps our model as .model


def default_checkpoint(exp: Path, config: Dict[str, Any]) -> Path:
    """``<phase>.<metric>.best.pth`` of the first ``best_model_criterion``, else ``latest.pth``."""
    candidates = [exp / f"{phase}.{metric}.best.pth" for phase, metric, *_ in config.get("best_model_criterion") or []]
    candidates.append(exp / "latest.pth")
    for c in candidates:
        if c.exists():
            return c
    raise ExportError(f"{exp}: no checkpoint found (looked for {', '.join(c.name for c in candidates)}); "
                      "has stage 5 finished an epoch?")


def build_inner_model(config: Dict[str, Any], where: Path) -> torch.nn.Module:
    """Our model as VGSTask built it (``--model`` names are the model registry's), weights not loaded."""
    from s3prl_vgs.checkpoint import without_pretrained
    from s3prl_vgs.config import ConfigError
    from s3prl_vgs.models import get_model_class

    try:
        cls = get_model_class(config["model"])
        conf = dict(config.get("model_conf") or {})
        model_config = cls.config_class.preset(conf.pop("preset", "base"), **conf)
        return cls(cls.config_class.from_dict(without_pretrained(model_config.to_dict())))
    except (KeyError, ValueError, ConfigError) as e:
        raise ExportError(f"{where}: cannot build the model ({e})") from None


def export(exp: str, out: str, checkpoint: Optional[str] = None, speech_only: bool = False) -> Path:
    """Write the model of experiment ``exp`` (its ``config.yaml`` and a checkpoint) to ``out``.

    ``speech_only``: only what ``encode_audio`` uses (an S3PRL upstream directory).
    """
    from s3prl_vgs.checkpoint import CheckpointError, load_state_dict_checked, save_model

    exp_dir = Path(exp)
    config_file = exp_dir / "config.yaml"
    if not config_file.is_file():
        raise ExportError(f"{config_file}: missing; --exp must be a VGSTask output dir")
    from s3prl_vgs.io import TextFileError, load_yaml

    try:
        config = load_yaml(config_file)  # strict UTF-8, yaml.safe_load; errors name the file and line
    except TextFileError as e:
        raise ExportError(str(e)) from None
    if not isinstance(config, dict) or "model" not in config:
        raise ExportError(f"{config_file}: not an ESPnet VGSTask config (no 'model')")
    ckpt = Path(checkpoint) if checkpoint else default_checkpoint(exp_dir, config)
    if not ckpt.is_absolute() and not ckpt.exists():
        ckpt = exp_dir / ckpt
    if not ckpt.is_file():
        raise ExportError(f"{ckpt}: no such checkpoint")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files
        raise ExportError(f"{ckpt}: not a loadable weights file ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # checkpoint.pth holds {"model", "optimizers", ...}
    if not isinstance(state, dict) or not any(k.startswith(PREFIX) for k in state):
        raise ExportError(f"{ckpt}: no '{PREFIX}*' weights; not a VGSTask model state")
    inner = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    model = build_inner_model(config, config_file)
    try:
        load_state_dict_checked(model, inner, source=ckpt)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    extra = {"exported_from": {"espnet_config": str(config_file), "checkpoint": str(ckpt)}}
    if speech_only:
        from s3prl_vgs.upstream.export import export_speech_only

        return export_speech_only(model.eval(), out, extra=extra)
    return save_model(model, out, extra=extra)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--exp", required=True, help="VGSTask output dir (holds config.yaml and the *.pth files)")
    p.add_argument("--out", required=True, help="model directory to write, e.g. EXP/model or EXP/upstream")
    p.add_argument("--speech_only", action="store_true",
                   help="write only the speech branch (the S3PRL upstream; load_model reads it too)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file, absolute or relative to --exp (default: the best by the first "
                        "best_model_criterion, else latest.pth)")
    return p


@console_script("vgs-export")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        path = export(args.exp, args.out, args.checkpoint, speech_only=args.speech_only)
    except ExportError as e:
        print(f"vgs-export: error: {e}", file=sys.stderr)
        return 1
    print(f"vgs-export: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
