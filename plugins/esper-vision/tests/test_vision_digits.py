"""Tests of the ``digits`` task: conformance, a split fixed by its own seed and stratified, normalisation."""

from __future__ import annotations

import numpy as np
import torch

from esper_core.tasks import TaskContext
from esper_core.testing import check_task_kind, registered_records
from esper_vision import plugin
from esper_vision.digits import DigitsConfig, build_digits, split_digits

CPU = torch.device("cpu")


DIGITS = registered_records(plugin, "tasks")["digits"]


def test_digits_passes_conformance() -> None:
    task = check_task_kind(DIGITS)
    assert task.info.input_shape == (1, 8, 8)
    assert task.info.num_classes == 10
    assert task.info.topology == "image"
    assert task.info.train_size + task.info.val_size == 1797
    assert task.info.val_size == 360  # 20% of 1797, rounded up by scikit-learn
    assert task.train_inputs.dtype == torch.float32


def test_split_does_not_depend_on_the_run_seed() -> None:
    first = build_digits(DigitsConfig(), TaskContext(device=CPU, seed=0))
    second = build_digits(DigitsConfig(), TaskContext(device=CPU, seed=12345))
    assert torch.equal(first.val_inputs, second.val_inputs)
    assert torch.equal(first.val_targets, second.val_targets)
    assert torch.equal(first.train_inputs, second.train_inputs)


def test_split_seed_changes_the_split() -> None:
    _, _, val_a, _ = split_digits(DigitsConfig(split_seed=0))
    _, _, val_b, _ = split_digits(DigitsConfig(split_seed=1))
    assert val_a.shape == val_b.shape
    assert not np.array_equal(val_a, val_b)


def test_split_is_stratified_and_disjoint() -> None:
    config = DigitsConfig(val_fraction=0.25)
    train_images, train_labels, val_images, val_labels = split_digits(config)
    all_labels = np.concatenate([train_labels, val_labels])
    for digit in range(10):
        expected = config.val_fraction * np.sum(all_labels == digit)
        assert abs(np.sum(val_labels == digit) - expected) <= 1.0
    train_rows = {row.tobytes() for row in train_images.reshape(len(train_images), -1)}
    val_rows = [row.tobytes() for row in val_images.reshape(len(val_images), -1)]
    # the digits data holds a few exact duplicates; a split that leaked rows would share hundreds
    assert sum(row in train_rows for row in val_rows) < 5


def test_train_inputs_are_normalised_with_train_statistics() -> None:
    task = build_digits(DigitsConfig(), TaskContext(device=CPU, seed=0))
    mean = task.train_inputs.mean(dim=(0, 2, 3))
    std = task.train_inputs.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(mean, torch.zeros(1), atol=1e-4)
    assert torch.allclose(std, torch.ones(1), atol=1e-4)
    assert not torch.allclose(task.val_inputs.mean(dim=(0, 2, 3)), torch.zeros(1), atol=1e-6)


def test_training_batches_are_shifted_by_at_most_one_pixel_and_never_mirrored() -> None:
    task = build_digits(DigitsConfig(), TaskContext(device=CPU, seed=0))
    indices = torch.arange(256)
    batch, targets = task.train_batch(indices, torch.Generator().manual_seed(0))
    originals = task.train_inputs[indices]
    assert torch.equal(targets, task.train_targets[indices])
    assert batch.shape == originals.shape
    border = float(task.augment.fill[0])
    padded = torch.nn.functional.pad(originals - border, (1, 1, 1, 1)) + border
    shifts_seen = set()
    for sample, image in zip(batch, padded):
        shift = next(
            (row, col)
            for row in range(3)
            for col in range(3)
            if torch.equal(sample, image[:, row : row + 8, col : col + 8])
        )
        shifts_seen.add(shift)
    assert len(shifts_seen) == 9
    # the border is raw 0, the digits' background (their darkest pixel), not the normalised mean 0
    assert border == float(task.train_inputs.min())
