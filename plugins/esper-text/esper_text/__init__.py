"""Esper's first-party character-level language-modelling tasks: ``pydoc`` and ``tinystories``."""

__version__ = "0.1.0"
