"""Turns raw image tensors into an Esper task: train-set normalisation, batched augmentation, device placement."""

from __future__ import annotations

from collections.abc import Callable

import torch

from esper_core.tasks import Augmentation, TensorClassificationTask
from esper_vision.normalization import ChannelStatistics

IMAGE_TOPOLOGY = "image"

#: Builds the task's augmentation from its border colour (raw black after normalisation, (C,) on the device).
AugmentationFactory = Callable[[torch.Tensor], Augmentation]


def build_image_task(
    *,
    name: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
    device: torch.device,
    augmentation: AugmentationFactory,
) -> TensorClassificationTask:
    """A classification task over float32 (B, C, H, W) images with raw values in [0, 1].

    Both splits are normalised in place with the training split's per-channel mean and std, so the
    validation set never leaks into the statistics. Padding introduced by augmentation is raw black.
    """
    statistics = ChannelStatistics.of(train_images, name)
    statistics.normalize_(train_images)
    statistics.normalize_(val_images)
    border = statistics.normalized_value(0.0).to(device)
    return TensorClassificationTask(
        name=name,
        topology=IMAGE_TOPOLOGY,
        train_inputs=train_images,
        train_targets=train_labels,
        val_inputs=val_images,
        val_targets=val_labels,
        num_classes=num_classes,
        device=device,
        augment=augmentation(border),
    )
