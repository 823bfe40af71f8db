"""Per-channel normalisation of image tensors with statistics measured on the training split."""

from __future__ import annotations

import attrs
import torch

from esper_core.errors import DataError


@attrs.frozen
class ChannelStatistics:
    """Per-channel mean and standard deviation, each of shape (C,)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, train_images: torch.Tensor, task_name: str) -> ChannelStatistics:
        """Measure float32 (B, C, H, W) training images; a constant channel is a ``DataError``."""
        variance, mean = torch.var_mean(train_images, dim=(0, 2, 3), correction=0)
        std = variance.sqrt()
        constant = (std == 0).nonzero().flatten().tolist()
        if constant:
            raise DataError(f"task {task_name}: channel(s) {constant} are constant over the training images")
        return cls(mean=mean, std=std)

    def normalize_(self, images: torch.Tensor) -> torch.Tensor:
        """``(images - mean) / std`` per channel, in place on a float32 (B, C, H, W) tensor; returns it."""
        if images.dtype != torch.float32:
            raise TypeError(f"normalize_ expects float32 images, got {images.dtype}")
        shape = (1, -1, 1, 1)
        return images.sub_(self.mean.view(shape)).div_(self.std.view(shape))

    def normalized_value(self, raw_value: float) -> torch.Tensor:
        """What a raw pixel value becomes in every channel after normalisation, shape (C,)."""
        return (raw_value - self.mean) / self.std
