"""Tests of the batched augmentations: shapes kept, deterministic per generator state, real crops and flips."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esper_vision.augment import RandomCropFlip, RandomTranslate, random_crop, random_horizontal_flip


def _images(batch: int = 16, channels: int = 3, side: int = 12) -> torch.Tensor:
    return torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(5))


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_flip_keeps_shape_and_dtype_and_changes_images() -> None:
    images = _images()
    augmented = RandomCropFlip(4, torch.zeros(3))(images, _generator())
    assert augmented.shape == images.shape
    assert augmented.dtype == images.dtype
    changed = (augmented != images).flatten(1).any(dim=1)
    assert changed.sum() >= images.shape[0] // 2


def test_augmentation_is_deterministic_for_a_generator_state() -> None:
    images = _images()
    augment = RandomCropFlip(4, torch.zeros(3))
    generator = _generator(7)
    state = generator.get_state()
    first = augment(images, generator)
    generator.set_state(state)
    again = augment(images, generator)
    assert torch.equal(first, again)
    different = augment(images, generator)  # the generator has moved on
    assert not torch.equal(first, different)


def test_each_crop_is_a_window_of_the_padded_image() -> None:
    images = _images(batch=32)
    fill = torch.tensor([0.5, -1.0, 2.0])
    padding = 2
    cropped = random_crop(images, _generator(3), padding, fill)
    padded = F.pad(images - fill.view(1, 3, 1, 1), (padding,) * 4) + fill.view(1, 3, 1, 1)
    side = images.shape[-1]
    offsets = set()
    for index in range(images.shape[0]):
        matches = [
            (row, col)
            for row in range(2 * padding + 1)
            for col in range(2 * padding + 1)
            if torch.equal(cropped[index], padded[index, :, row : row + side, col : col + side])
        ]
        assert matches, f"image {index} is not a window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets differ per image


def test_translate_border_uses_the_fill_colour_and_never_flips() -> None:
    image = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).repeat(64, 1, 1, 1)
    fill = torch.tensor([-3.0])
    shifted = RandomTranslate(1, fill)(image, _generator(1))
    padded = F.pad(image[0] + 3.0, (1, 1, 1, 1)) - 3.0
    windows = {(row, col): padded[:, row : row + 8, col : col + 8] for row in range(3) for col in range(3)}
    seen = set()
    for sample in shifted:
        offset = next(key for key, window in windows.items() if torch.equal(sample, window))
        seen.add(offset)
    assert len(seen) == 9  # every shift in {-1, 0, 1}^2 occurs, and nothing else (no mirror images)
    assert (shifted == -3.0).any()


def test_flip_mirrors_exactly_the_drawn_images() -> None:
    images = _images(batch=64)
    flipped = random_horizontal_flip(images, _generator(2))
    mirrored = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(flipped, images)])
    unchanged = torch.tensor([torch.equal(a, b) for a, b in zip(flipped, images)])
    assert bool((mirrored ^ unchanged).all())
    assert 16 < int(mirrored.sum()) < 48
    assert torch.equal(random_horizontal_flip(images, _generator(2), probability=1.0), images.flip(-1))
    assert torch.equal(random_horizontal_flip(images, _generator(2), probability=0.0), images)
