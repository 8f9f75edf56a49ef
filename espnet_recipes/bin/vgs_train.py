#!/usr/bin/env python3
"""Train (or collect stats for) a VGS model with ESPnet's trainer.

Run as ``python -m espnet_recipes.bin.vgs_train``: spawned DDP workers import
``espnet_recipes.tasks.vgs`` again, which registers our data types and scheduler.

Bad input is one line ``vgs_train: error: <file>: <problem>`` and exit status 1
(the traceback with ``--debug`` or ``S3PRL_VGS_DEBUG=1``): the ``--config`` file
is checked before ESPnet reads it (a mapping, a known ``model``, a
``model_conf`` mapping whose keys and types the model's config accepts).
``--check_config FILE`` does only that check and prints the model name (the
recipe's pre-flight check).
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

from s3prl_vgs.cli import console_script
from s3prl_vgs.errors import VGSError


class TrainConfigError(VGSError, ValueError):
    """A training config that cannot train a VGS model; the message names the file."""


def check_train_config(path: str | os.PathLike) -> str:
    """Check an ESPnet training config for VGSTask; return its ``model`` (default ``fast_vgs``)."""
    from s3prl_vgs.config import ConfigError
    from s3prl_vgs.io import load_yaml
    from s3prl_vgs.models import available_models, get_model_class

    config = load_yaml(path)
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise TrainConfigError(f"{path}: expected a mapping of ESPnet options, got {type(config).__name__}")
    model = config.get("model", "fast_vgs")
    if not isinstance(model, str) or model not in available_models():
        raise TrainConfigError(f"{path}: model {model!r} is not one of {available_models()}")
    conf = config.get("model_conf") or {}
    if not isinstance(conf, dict):
        raise TrainConfigError(f"{path}: model_conf must be a mapping, got {type(conf).__name__}")
    conf = dict(conf)
    preset = conf.pop("preset", "base")
    if not isinstance(preset, str):
        raise TrainConfigError(f"{path}: model_conf.preset must be a preset name, got {type(preset).__name__}")
    try:
        get_model_class(model).config_class.preset(preset, **conf)
    except (ConfigError, TypeError, ValueError, KeyError) as e:
        raise TrainConfigError(f"{path}: model_conf: {' '.join(str(e).split())}") from None
    return model


def _option(args: Sequence[str], name: str) -> Optional[str]:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a[len(name) + 1:]
    return None


def get_parser():
    from espnet_recipes.tasks.vgs import VGSTask

    return VGSTask.get_parser()


@console_script("vgs_train")
def main(cmd: Optional[List[str]] = None) -> int:
    r"""VGS training.

    Example:
        % python -m espnet_recipes.bin.vgs_train --print_config --model fast_vgs --model_conf preset=tiny
        % python -m espnet_recipes.bin.vgs_train --config conf/train_fast_vgs_tiny.yaml \
            --train_data_path_and_name_and_type dump/espnet/train/wav.scp,speech,sound ...
        % python -m espnet_recipes.bin.vgs_train --check_config conf/train_fast_vgs_tiny.yaml
    """
    args = list(sys.argv[1:] if cmd is None else cmd)
    only = _option(args, "--check_config")
    if only is not None:
        print(check_train_config(only))
        return 0
    config = _option(args, "--config")
    if config is not None:
        check_train_config(config)
    from espnet_recipes.tasks.vgs import VGSTask

    VGSTask.main(cmd=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
