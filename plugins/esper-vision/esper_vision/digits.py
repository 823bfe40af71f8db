"""The ``digits`` task: scikit-learn's bundled 8x8 handwritten digits with a fixed stratified split."""

from __future__ import annotations

import attrs
import numpy as np
import torch

from esper_core.tasks import TaskContext, TensorClassificationTask
from esper_core.validators import in_range, int_in_range
from esper_vision.augment import RandomTranslate
from esper_vision.image_task import build_image_task

TASK_NAME = "digits"
NUM_CLASSES = 10
IMAGE_SIDE = 8
#: Pixel values in scikit-learn's digits run from 0 to 16.
MAX_PIXEL_VALUE = 16.0
MAX_SHIFT_PIXELS = 1


@attrs.frozen
class DigitsConfig:
    """Options of the ``digits`` task.

    ``val_fraction`` of the 1797 images (stratified by class) form the validation set; the split is
    drawn from ``split_seed`` and never from the run seed, so every run sees the same split.
    """

    val_fraction: float = attrs.field(default=0.2, validator=in_range(0.01, 0.5))
    #: scikit-learn takes seeds below 2**32
    split_seed: int = attrs.field(default=0, validator=int_in_range(0, 2**32 - 1))


def split_digits(config: DigitsConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, val images, val labels): float32 images (N, 1, 8, 8) in [0, 1]."""
    # scikit-learn is imported here, not at module level: plugin discovery imports this module on every
    # `esper` command, and sklearn costs ~1 s and ~85 MiB that only the digits task needs.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.data.astype(np.float32) / MAX_PIXEL_VALUE).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    labels = bunch.target.astype(np.int64)
    train_images, val_images, train_labels, val_labels = train_test_split(
        images,
        labels,
        test_size=config.val_fraction,
        random_state=config.split_seed,
        shuffle=True,
        stratify=labels,
    )
    return train_images, train_labels, val_images, val_labels


def build_digits(config: DigitsConfig, context: TaskContext) -> TensorClassificationTask:
    """The ``digits`` task on ``context.device``; the run seed does not affect the data."""
    train_images, train_labels, val_images, val_labels = split_digits(config)
    return build_image_task(
        name=TASK_NAME,
        train_images=torch.from_numpy(np.ascontiguousarray(train_images)),
        train_labels=torch.from_numpy(train_labels),
        val_images=torch.from_numpy(np.ascontiguousarray(val_images)),
        val_labels=torch.from_numpy(val_labels),
        num_classes=NUM_CLASSES,
        device=context.device,
        augmentation=lambda border: RandomTranslate(MAX_SHIFT_PIXELS, border),
    )
