"""The ``vision`` plugin: registers the ``digits``, ``shapes`` and ``cifar10`` image classification tasks."""

from __future__ import annotations

from esper_core.hookspecs import TaskRegistrar, hookimpl
from esper_core.registry import TaskKind
from esper_vision.cifar10 import Cifar10Config, build_cifar10
from esper_vision.digits import DigitsConfig, build_digits
from esper_vision.shapes import ShapesConfig, build_shapes

DEFAULT_HOST = "cnn"


@hookimpl
def esper_register_tasks(register: TaskRegistrar) -> None:
    register(
        TaskKind(
            name="digits",
            build=build_digits,
            default_host=DEFAULT_HOST,
            config_class=DigitsConfig,
            description="scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), fixed stratified split",
        )
    )
    register(
        TaskKind(
            name="shapes",
            build=build_shapes,
            default_host=DEFAULT_HOST,
            config_class=ShapesConfig,
            description="procedural 32x32 striped shapes among clutter (10 classes), generated from the seed",
        )
    )
    register(
        TaskKind(
            name="cifar10",
            build=build_cifar10,
            default_host=DEFAULT_HOST,
            config_class=Cifar10Config,
            description="CIFAR-10 from a local folder in torchvision's python format (never downloaded)",
        )
    )
