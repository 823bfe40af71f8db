"""A slow check that ``shapes`` rewards capacity: a larger CNN beats a small one and neither is perfect."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_core.tasks import TaskContext, TensorClassificationTask
from esper_vision.shapes import NUM_CLASSES, ShapesConfig, build_shapes

EPOCHS = 6
BATCH_SIZE = 64


def plain_cnn(widths: tuple[int, ...]) -> nn.Sequential:
    """Conv3x3-BatchNorm-ReLU-MaxPool per width, then global average pooling and a linear classifier."""
    layers: list[nn.Module] = []
    in_channels = 3
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, NUM_CLASSES)]
    return nn.Sequential(*layers)


def train_and_validate(model: nn.Module, task: TensorClassificationTask, seed: int) -> float:
    """Train with Adam and the task's own augmented batches; return the validation accuracy."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _epoch in range(EPOCHS):
        model.train()
        order = task.epoch_order(generator)
        for start in range(0, task.info.train_size, BATCH_SIZE):
            inputs, targets = task.train_batch(order[start : start + BATCH_SIZE], generator)
            loss = task.loss(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, targets in task.validation_batches(256):
            correct += int((model(inputs).argmax(dim=1) == targets).sum())
    return correct / task.info.val_size


@pytest.mark.slow
def test_a_larger_cnn_reaches_higher_accuracy_on_shapes() -> None:
    # A reduced set without distractors or clutter lines, so that a few epochs on two CPU cores suffice.
    config = ShapesConfig(train_size=2048, val_size=512, noise=0.05, distractors=0, clutter_lines=0, seed=0)
    task = build_shapes(config, TaskContext(device=torch.device("cpu"), seed=0))
    torch.manual_seed(0)
    small = train_and_validate(plain_cnn((8, 16)), task, seed=0)
    torch.manual_seed(0)
    larger = train_and_validate(plain_cnn((16, 32, 64)), task, seed=0)
    print(f"shapes validation accuracy after {EPOCHS} epochs: small {small:.3f}, larger {larger:.3f}")
    chance = 1 / NUM_CLASSES
    assert small > 1.5 * chance
    assert larger > small + 0.05
    assert larger < 0.95
