"""Image transforms for whole-image encoders (the MIM family, VG-HuBERT).

Training: a random resized crop to the encoder's input size (+ RandAugment
for speech-guided MIM, + horizontal flip for VG-HuBERT). Evaluation: resize
the short side, then a center crop. Both end with ImageNet mean/std
normalisation, which MAE and DINO were trained with.

What we chose: the paper says "cropped to 224 x 224 and RandAugment"; we crop
with ``RandomResizedCrop`` (bicubic), as VG-HuBERT, its base, does, and use
torchvision's RandAugment defaults (2 ops, magnitude 9). The evaluation resize
is ``image_size * 256 / 224`` (256 for 224), VG-HuBERT's ratio.
"""

from __future__ import annotations

from typing import Optional, Sequence

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_resize_size(image_size: int) -> int:
    """Short side before the center crop: 256 for 224, the same ratio elsewhere."""
    return int(round(image_size * 256 / 224))


def build_image_transform(
    train: bool,
    image_size: int = 224,
    *,
    resize_size: Optional[int] = None,
    randaugment: bool = True,
    randaugment_num_ops: int = 2,
    randaugment_magnitude: int = 9,
    hflip: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
):
    """A torchvision transform: PIL image -> (3, image_size, image_size) float tensor.

    Args:
        train: training augmentation if True, else the deterministic evaluation path.
        image_size: the encoder's input size.
        resize_size: evaluation short side before the crop (default :func:`eval_resize_size`).
        randaugment, randaugment_num_ops, randaugment_magnitude: RandAugment (training only).
        hflip: random horizontal flip (training only).
        mean, std: per-channel normalisation.
    """
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    if train:
        steps = [T.RandomResizedCrop(image_size, interpolation=bicubic)]
        if hflip:
            steps.append(T.RandomHorizontalFlip(0.5))
        if randaugment:
            steps.append(T.RandAugment(num_ops=randaugment_num_ops, magnitude=randaugment_magnitude))
    else:
        steps = [T.Resize(resize_size or eval_resize_size(image_size), interpolation=bicubic), T.CenterCrop(image_size)]
    steps += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    return T.Compose(steps)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_image_transform", "eval_resize_size"]
