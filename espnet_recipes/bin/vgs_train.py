#!/usr/bin/env python3
"""Train (or collect stats for) a VGS model with ESPnet's trainer.

Run as ``python -m espnet_recipes.bin.vgs_train``: spawned DDP workers import
``espnet_recipes.tasks.vgs`` again, which registers our data types and scheduler.
"""

from espnet_recipes.tasks.vgs import VGSTask


def get_parser():
    return VGSTask.get_parser()


def main(cmd=None):
    r"""VGS training.

    Example:
        % python -m espnet_recipes.bin.vgs_train --print_config --model fast_vgs --model_conf preset=tiny
        % python -m espnet_recipes.bin.vgs_train --config conf/train_fast_vgs_tiny.yaml \
            --train_data_path_and_name_and_type dump/espnet/train/wav.scp,speech,sound ...
    """
    VGSTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
