"""Batched image augmentations (random crop/translation, horizontal flip) as tensor ops on the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _draw_integers(high: int, count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``count`` integers in ``[0, high)`` drawn from ``generator`` (on its device), then put on ``device``."""
    values = torch.randint(0, high, (count,), generator=generator, device=generator.device)
    return values.to(device)


def random_crop(
    images: torch.Tensor, generator: torch.Generator, padding: int, fill: torch.Tensor
) -> torch.Tensor:
    """Pad every image by ``padding`` pixels of colour ``fill`` and crop back to size at a random offset.

    ``images`` is (B, C, H, W); ``fill`` is (C,) on the same device. Each image gets its own offset in
    ``[-padding, padding]`` along each axis, so ``padding=1`` is a random translation by at most one pixel.
    """
    if images.dim() != 4:
        raise ValueError(f"random_crop expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    if fill.shape != (images.shape[1],):
        raise ValueError(f"fill has shape {tuple(fill.shape)}, expected ({images.shape[1]},)")
    if padding == 0:
        return images
    batch, channels, height, width = images.shape
    fill_image = fill.view(1, channels, 1, 1).to(images.dtype)
    # Pad with zeros around (images - fill), then add fill back: a per-channel constant border.
    padded = F.pad(images - fill_image, (padding, padding, padding, padding)) + fill_image
    span = 2 * padding + 1
    row_offsets = _draw_integers(span, batch, generator, images.device)
    col_offsets = _draw_integers(span, batch, generator, images.device)
    rows = row_offsets.view(batch, 1, 1, 1) + torch.arange(height, device=images.device).view(1, 1, height, 1)
    cols = col_offsets.view(batch, 1, 1, 1) + torch.arange(width, device=images.device).view(1, 1, 1, width)
    padded_width = width + 2 * padding
    cropped_rows = padded.gather(2, rows.expand(batch, channels, height, padded_width))
    return cropped_rows.gather(3, cols.expand(batch, channels, height, width))


def random_horizontal_flip(
    images: torch.Tensor, generator: torch.Generator, probability: float = 0.5
) -> torch.Tensor:
    """Mirror each image left-right with ``probability`` (an independent draw per image)."""
    draws = torch.rand(images.shape[0], generator=generator, device=generator.device).to(images.device)
    flip = (draws < probability).view(-1, *([1] * (images.dim() - 1)))
    return torch.where(flip, images.flip(-1), images)


class RandomTranslate:
    """An ``Augmentation``: shift each image by up to ``max_shift`` pixels per axis, no flips."""

    def __init__(self, max_shift: int, fill: torch.Tensor) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift
        self.fill = fill

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_crop(images, generator, self.max_shift, self.fill)


class RandomCropFlip:
    """An ``Augmentation``: random crop after ``padding`` pixels of ``fill``, then a random horizontal flip."""

    def __init__(self, padding: int, fill: torch.Tensor, flip_probability: float = 0.5) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability}")
        self.padding = padding
        self.fill = fill
        self.flip_probability = flip_probability

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cropped = random_crop(images, generator, self.padding, self.fill)
        return random_horizontal_flip(cropped, generator, self.flip_probability)
