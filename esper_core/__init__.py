"""Esper core: contracts, hook specs, plugin manager, config, Kasmina, Tolaria and the ``esper`` CLI."""

from esper_core.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
