"""Tests of the ``shapes`` task: conformance, determinism per seed, balanced classes, normalisation."""

from __future__ import annotations

import pytest
import torch

from esper_core.tasks import TaskContext
from esper_core.testing import check_task_kind, registered_records
from esper_vision import plugin
from esper_vision.shapes import (
    CLASS_NAMES,
    NUM_CLASSES,
    ShapesConfig,
    build_shapes,
    generate_shapes,
    stream_generator,
)

CPU = torch.device("cpu")
SMALL = ShapesConfig(train_size=200, val_size=60)


def _generate(seed: int, count: int = 300, **options: float) -> tuple[torch.Tensor, torch.Tensor]:
    settings = {"noise": 0.1, "distractors": 3, "clutter_lines": 2, **options}
    return generate_shapes(count, stream_generator(seed, 0), **settings)


def test_shapes_passes_conformance() -> None:
    task = check_task_kind(registered_records(plugin, "tasks")["shapes"], config=SMALL)
    assert task.info.input_shape == (3, 32, 32)
    assert task.info.num_classes == NUM_CLASSES == len(CLASS_NAMES) == 10
    assert (task.info.train_size, task.info.val_size) == (200, 60)
    assert task.info.topology == "image"


def test_same_seed_gives_the_same_data() -> None:
    first_images, first_labels = _generate(seed=11)
    again_images, again_labels = _generate(seed=11)
    assert torch.equal(first_images, again_images)
    assert torch.equal(first_labels, again_labels)


def test_different_seeds_give_different_data() -> None:
    first_images, first_labels = _generate(seed=11)
    other_images, other_labels = _generate(seed=12)
    assert not torch.equal(first_labels, other_labels)
    assert (first_images - other_images).abs().mean() > 0.1


def test_config_seed_overrides_the_run_seed() -> None:
    pinned = ShapesConfig(train_size=50, val_size=20, seed=4)
    a = build_shapes(pinned, TaskContext(device=CPU, seed=0))
    b = build_shapes(pinned, TaskContext(device=CPU, seed=99))
    assert torch.equal(a.train_inputs, b.train_inputs)
    unpinned = ShapesConfig(train_size=50, val_size=20)
    c = build_shapes(unpinned, TaskContext(device=CPU, seed=0))
    d = build_shapes(unpinned, TaskContext(device=CPU, seed=99))
    assert not torch.equal(c.train_inputs, d.train_inputs)
    e = build_shapes(unpinned, TaskContext(device=CPU, seed=4))
    assert torch.equal(a.train_inputs, e.train_inputs)


def test_validation_set_does_not_depend_on_the_training_size() -> None:
    small = build_shapes(ShapesConfig(train_size=40, val_size=30, seed=1), TaskContext(device=CPU, seed=0))
    large = build_shapes(ShapesConfig(train_size=90, val_size=30, seed=1), TaskContext(device=CPU, seed=0))
    assert torch.equal(small.val_targets, large.val_targets)
    # the train sets differ, so do their normalisation statistics: compare standardised validation sets
    def standardised(images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(0, 2, 3), keepdim=True)
        return (images - mean) / images.std(dim=(0, 2, 3), keepdim=True)

    assert torch.allclose(standardised(small.val_inputs), standardised(large.val_inputs), atol=1e-4)


def test_classes_are_balanced() -> None:
    _, labels = _generate(seed=3, count=1005)
    counts = torch.bincount(labels, minlength=NUM_CLASSES)
    assert int(counts.min()) >= 100 and int(counts.max()) <= 101


def test_images_are_colour_images_in_the_unit_range_with_clutter_and_noise() -> None:
    images, _ = _generate(seed=5)
    assert images.shape == (300, 3, 32, 32) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    clean, _ = _generate(seed=5, noise=0.0, distractors=0, clutter_lines=0)
    assert (images - clean).abs().mean() > 0.02
    assert not torch.equal(clean[:, 0], clean[:, 1])  # colour, not grey


def test_stripe_orientation_shows_in_the_images() -> None:
    images, labels = _generate(seed=8, count=2000, noise=0.0, distractors=0, clutter_lines=0)
    # Even classes have horizontal stripes (pixels change from row to row), odd classes vertical ones
    # (pixels change from column to column).
    row_change = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
    col_change = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
    horizontal = labels % 2 == 0
    assert float((row_change - col_change)[horizontal].mean()) > 0.005
    assert float((col_change - row_change)[~horizontal].mean()) > 0.005


def test_train_inputs_are_normalised_with_train_statistics() -> None:
    task = build_shapes(SMALL, TaskContext(device=CPU, seed=0))
    mean = task.train_inputs.mean(dim=(0, 2, 3))
    std = task.train_inputs.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(std, torch.ones(3), atol=1e-4)


def test_training_batches_are_augmented_deterministically() -> None:
    task = build_shapes(SMALL, TaskContext(device=CPU, seed=0))
    indices = torch.arange(64)
    first, targets = task.train_batch(indices, torch.Generator().manual_seed(3))
    again, _ = task.train_batch(indices, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert torch.equal(targets, task.train_targets[:64])
    assert not torch.equal(first, task.train_inputs[:64])


def test_sizes_beyond_free_memory_are_one_config_line_before_anything_is_allocated(monkeypatch) -> None:
    import esper_core.tasks
    from esper_core.errors import ConfigError
    from esper_vision import shapes

    monkeypatch.setattr(esper_core.tasks, "available_memory", lambda device: 2**30)  # 1 GiB free
    generated = []
    monkeypatch.setattr(shapes, "generate_shapes", lambda *args, **kwargs: generated.append(args))
    with pytest.raises(ConfigError) as raised:
        build_shapes(ShapesConfig(train_size=20_000, val_size=1_000), TaskContext(device=CPU, seed=0))
    message = str(raised.value)
    assert message.startswith("[task] train_size = 20000, val_size = 1000 (21000 images) needs about")
    assert "more than the 1.0 GiB available" in message and "\n" not in message
    assert generated == []  # refused before generating


def test_the_largest_allowed_sizes_are_refused_on_an_ordinary_machine() -> None:
    from esper_core.errors import ConfigError
    from esper_core.tasks import available_memory
    from esper_vision.shapes import GENERATION_BYTES_PER_IMAGE, MAX_IMAGES

    free = available_memory(CPU)
    if free is None or free >= 2 * MAX_IMAGES * GENERATION_BYTES_PER_IMAGE:
        pytest.skip("this machine could hold the largest allowed dataset")
    with pytest.raises(ConfigError, match=r"^\[task\] train_size = 10000000, val_size = 10000000"):
        build_shapes(ShapesConfig(train_size=MAX_IMAGES, val_size=MAX_IMAGES), TaskContext(device=CPU, seed=0))
