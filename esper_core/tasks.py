"""The task contract (data, loss, metric) and a preloaded-tensor classification task plugins can reuse."""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Callable

import attrs
import torch
import torch.nn.functional as F

from esper_core.errors import ConfigError
from esper_core.validators import one_of

__all__ = [
    "Augmentation",
    "Task",
    "TaskContext",
    "TaskInfo",
    "TensorClassificationTask",
    "available_memory",
    "require_memory",
]

#: A batched augmentation: (inputs on device, generator) -> augmented inputs of the same shape.
Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@attrs.frozen
class TaskInfo:
    """What hosts and policies need to know about a task.

    ``topology`` is the activation layout hosts produce for it (``"image"`` or ``"sequence"``).
    ``metric_name`` names the validation metric; it is always *higher is better*.
    ``score_basis`` says what counterfactual contributions and rewards are measured on: ``"metric"``
    (the score is the metric) or ``"loss"`` (the score is ``-ln(validation loss)``, e.g. language
    modelling, where accuracy is too coarse). Either way a higher score is better, so a positive
    contribution always means the seed helps. The log makes score differences *relative*: a difference
    of 0.01 is about 1 % lower loss, on any task and at any loss level, as 0.01 of accuracy is one
    accuracy point; so one set of reward settings serves image and text tasks alike.
    """

    name: str
    topology: str
    input_shape: tuple[int, ...]
    num_classes: int
    metric_name: str
    train_size: int
    val_size: int
    score_basis: str = attrs.field(default="metric", validator=one_of("metric", "loss"))

    def score(self, metric: float, loss: float) -> float:
        """The higher-is-better number contributions and rewards use: the metric, or -ln(loss)."""
        if self.score_basis == "metric":
            return metric
        return -math.log(loss) if loss > 0.0 else math.inf  # a zero loss is a perfect score


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (CPU: the kernel's MemAvailable); None when unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def require_memory(needed_bytes: int, device: torch.device, *, what: str, advice: str = "lower it") -> None:
    """Raise ``ConfigError`` before allocating when ``needed_bytes`` exceed what ``device`` has free.

    ``what`` names the options responsible, as a config error line starts (``"[task] train_size = ..."``);
    a task calls this with its own estimate before it builds large tensors, so a size typed with a few
    zeros too many is one line naming the key, not an allocation failure deep inside torch.
    """
    free = available_memory(device)
    if free is not None and needed_bytes > free:
        gib = 1024**3
        raise ConfigError(
            [f"{what} needs about {needed_bytes / gib:.1f} GiB of memory on {device}, more than the "
             f"{free / gib:.1f} GiB available; {advice}"]
        )


@attrs.frozen
class TaskContext:
    """Handed to a task's ``build``: where tensors go and the run seed (for procedural data)."""

    device: torch.device
    seed: int


class Task(abc.ABC):
    """A task: training data in a per-environment order, a fixed validation set, a loss and a metric.

    Data stays on the device as preloaded tensors; batches are gathered by index and augmented as
    whole batches (no per-sample Python work, no loader processes).
    """

    info: TaskInfo

    @abc.abstractmethod
    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """A permutation of training indices for one epoch, drawn from ``generator``."""

    @abc.abstractmethod
    def train_batch(
        self, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (augmented) training batch at ``indices``."""

    @abc.abstractmethod
    def validation_batches(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The whole fixed validation set in batches; identical on every call and for every env."""

    @abc.abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean training loss of a batch (a scalar tensor)."""

    @abc.abstractmethod
    def metric_sums(self, outputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-variant sums over a batch: (sum of per-sample losses, sum of per-sample metric).

        ``outputs`` carries a leading variant dimension (V, B, ...): variant 0 is the full model,
        the others are counterfactual ablations. Returns two device tensors of shape (V,). (The score
        contributions and rewards use is ``TaskInfo.score`` of the resulting mean metric and loss.)
        """


class TensorClassificationTask(Task):
    """A classification task over preloaded tensors: cross-entropy loss, accuracy metric."""

    def __init__(
        self,
        *,
        name: str,
        topology: str,
        train_inputs: torch.Tensor,
        train_targets: torch.Tensor,
        val_inputs: torch.Tensor,
        val_targets: torch.Tensor,
        num_classes: int,
        device: torch.device,
        augment: Augmentation | None = None,
    ) -> None:
        if train_inputs.shape[0] != train_targets.shape[0]:
            raise ValueError(f"task {name}: {train_inputs.shape[0]} train inputs but {train_targets.shape[0]} targets")
        if val_inputs.shape[0] != val_targets.shape[0]:
            raise ValueError(f"task {name}: {val_inputs.shape[0]} val inputs but {val_targets.shape[0]} targets")
        if train_inputs.shape[1:] != val_inputs.shape[1:]:
            raise ValueError(f"task {name}: train and val inputs differ in shape")
        self.train_inputs = train_inputs.to(device)
        self.train_targets = train_targets.to(device=device, dtype=torch.long)
        self.val_inputs = val_inputs.to(device)
        self.val_targets = val_targets.to(device=device, dtype=torch.long)
        self.augment = augment
        self.info = TaskInfo(
            name=name,
            topology=topology,
            input_shape=tuple(train_inputs.shape[1:]),
            num_classes=num_classes,
            metric_name="accuracy",
            train_size=int(train_inputs.shape[0]),
            val_size=int(val_inputs.shape[0]),
        )
        self._val_cache: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.info.train_size, generator=generator, device=generator.device)

    def train_batch(
        self, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.train_inputs.index_select(0, indices)
        if self.augment is not None:
            inputs = self.augment(inputs, generator)
        return inputs, self.train_targets.index_select(0, indices)

    def validation_batches(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if batch_size not in self._val_cache:
            self._val_cache[batch_size] = [
                (self.val_inputs[start : start + batch_size], self.val_targets[start : start + batch_size])
                for start in range(0, self.info.val_size, batch_size)
            ]
        return self._val_cache[batch_size]

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def metric_sums(self, outputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        variants, batch, classes = outputs.shape
        flat = outputs.reshape(variants * batch, classes)
        expanded = target.repeat(variants)
        losses = F.cross_entropy(flat, expanded, reduction="none").view(variants, batch)
        correct = (flat.argmax(dim=-1) == expanded).view(variants, batch).to(losses.dtype)
        return losses.sum(dim=1), correct.sum(dim=1)
