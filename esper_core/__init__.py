"""Esper core: contracts, hook specs, plugin manager, config, Kasmina, Tolaria and the ``esper`` CLI."""

from esper_core.hookspecs import hookimpl

__version__ = "0.2.0"
#: The plugin API this core implements: a plugin written against it declares
#: ``esper-core>=0.2,<0.3`` in its dependencies (see docs/plugin-author-guide.md and CHANGELOG.md).
PLUGIN_API_VERSION = "0.2"

__all__ = ["PLUGIN_API_VERSION", "__version__", "hookimpl"]
