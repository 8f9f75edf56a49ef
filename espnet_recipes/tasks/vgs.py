"""VGSTask: visually grounded speech (speech <-> image retrieval training) for ESPnet2.

Wires ``--model {fast_vgs,vg_mim}`` (``--model_conf``: ``preset`` plus
overrides of the model's config dataclass), the data names, the collate
function and the preprocessor. Importing this module registers our ESPnet
data types (``roi_feats``, ``roi_boxes``, ``image``) and the ``warmuplinear``
scheduler, so every process that unpickles the task (spawned DDP workers
included) has them.

Data (``--{train,valid}_data_path_and_name_and_type PATH,NAME,TYPE``):

==========  ===========  ====================================================
name        type         file (written by ``espnet_recipes.bin.vgs_dump``)
==========  ===========  ====================================================
speech      sound        ``wav.scp``
image_id    text_int     ``image_id``: utterance -> integer image index
roi_feats   roi_feats    ``roi.scp``: utterance -> ``STORE.h5:IMAGE_ID`` (RoI models)
roi_boxes   roi_boxes    ``roi.scp`` again (RoI models)
image       image        ``image.scp``: utterance -> image file (pixel models)
==========  ===========  ====================================================
"""

from __future__ import annotations

import argparse
import logging
from typing import Callable, Collection, Dict, List, Optional, Tuple

import numpy as np
import torch
from espnet2.tasks.abs_task import AbsTask
from espnet2.train.abs_espnet_model import AbsESPnetModel
from espnet2.train.class_choices import ClassChoices
from espnet2.train.collate_fn import CommonCollateFn
from espnet2.utils.types import float_or_none, str2bool, str_or_none

from s3prl_vgs.models import available_models, get_model_class

from ..vgs import data_types, scheduler
from ..vgs.espnet_model import ESPnetVGSModel, wrapper_class
from ..vgs.preprocessor import VGSPreprocessor
from ..vgs.trainer import VGSTrainer

data_types.register()
scheduler.register()

# Fixed-size per-utterance arrays: stacked by the collate function, no *_lengths.
NOT_SEQUENCE = ("image_id", "roi_feats", "roi_boxes", "image")

model_choices = ClassChoices(
    "model",
    # One choice per registry entry (a new family needs no edit here).
    classes={name: wrapper_class(name) for name in available_models()},
    type_check=AbsESPnetModel,
    default="fast_vgs",
)


def image_transform_for(args: argparse.Namespace, train: bool) -> Optional[Callable]:
    """The model's image transform, from its config alone (the model is not built)."""
    model_class = model_choices.get_class(args.model)
    conf = dict(args.model_conf)
    preset = conf.pop("preset", "base")
    # The model's own call (model.image_transform delegates to it); None for RoI-feature models.
    return get_model_class(model_class.model_name).config_class.preset(preset, **conf).image_transform(train)


class VGSTask(AbsTask):
    num_optimizers: int = 1
    class_choices_list = [model_choices]  # --model and --model_conf
    trainer = VGSTrainer

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser):
        group = parser.add_argument_group(description="Task related")
        group.add_argument("--speech_crop_sec", type=float_or_none, default=None,
                           help="Training: keep the first N seconds of each caption (official: 8 COCO/Flickr8k, 18 Places)")
        group.add_argument("--valid_speech_crop_sec", type=float_or_none, default=None,
                           help="Validation: keep the first N seconds (official: 10 COCO/Flickr8k, 25 Places)")
        group.add_argument("--image_augment", type=str2bool, default=True,
                           help="Training images get the model's augmentation (random crop, RandAugment, flip); "
                                "false: the evaluation transform (e.g. when captions name positions and colours)")
        group.add_argument("--valid_utt2subset", type=str_or_none, default=None,
                           help="Validation by subset: a Kaldi-style '<utt_id> <subset>' file covering the valid set; "
                                "each subset is scored against its own gallery (<subset>_r1 ...) and retrieval_r1 is "
                                "the mean over subsets (Places: dev_seen, dev_unseen)")
        for class_choices in cls.class_choices_list:
            class_choices.add_arguments(group)

    @classmethod
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> Callable[
        [Collection[Tuple[str, Dict[str, np.ndarray]]]], Tuple[List[str], Dict[str, torch.Tensor]]
    ]:
        return CommonCollateFn(float_pad_value=0.0, int_pad_value=-1, not_sequence=NOT_SEQUENCE)

    @classmethod
    def build_preprocess_fn(cls, args: argparse.Namespace, train: bool) -> Optional[
        Callable[[str, Dict[str, np.ndarray]], Dict[str, np.ndarray]]
    ]:
        crop = args.speech_crop_sec if train else args.valid_speech_crop_sec
        augment = train and args.image_augment
        return VGSPreprocessor(train=train, crop_sec=crop, image_transform=image_transform_for(args, augment))

    @classmethod
    def required_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        # Which image inputs a batch needs depends on --model; the model says so clearly if one is missing.
        return ("speech",) if inference else ("speech", "image_id")

    @classmethod
    def optional_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        return ("image_id", "roi_feats", "roi_boxes", "image") if inference else ("roi_feats", "roi_boxes", "image")

    @classmethod
    def build_model(cls, args: argparse.Namespace) -> ESPnetVGSModel:
        model_class = model_choices.get_class(args.model)
        model = model_class(**args.model_conf)
        if getattr(model.model.config, "visual_feat_mvn", False):
            # RoI feature statistics of the training set, into the model's buffers (a resumed
            # or --init_param run overwrites them with the checkpoint's, which are the same).
            from espnet_recipes.vgs.data_types import roi_feats_loader

            scps = [p for p, name, _ in getattr(args, "train_data_path_and_name_and_type", None) or [] if name == "roi_feats"]
            if not scps:
                raise ValueError("model_conf.visual_feat_mvn needs the training set's roi_feats (roi.scp) to compute statistics")
            mean, std = roi_feats_loader(scps[0]).feature_stats()
            model.model.set_visual_feat_stats(torch.from_numpy(mean).float(), torch.from_numpy(std).float())
            logging.info(f"visual_feat_mvn: RoI feature statistics from {scps[0]}")
        return model


__all__ = ["VGSTask", "model_choices", "NOT_SEQUENCE"]
