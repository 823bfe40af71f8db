"""Esper's first-party image classification tasks: ``digits``, ``shapes`` and ``cifar10``."""

__version__ = "0.1.0"
