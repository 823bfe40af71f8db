"""The ``text`` plugin: registers the ``pydoc`` and ``tinystories`` character-level language-modelling tasks."""

from __future__ import annotations

from esper_core.hookspecs import TaskRegistrar, hookimpl
from esper_core.registry import TaskKind
from esper_text.pydoc_task import PydocConfig, build_pydoc
from esper_text.tinystories import TinyStoriesConfig, build_tinystories

DEFAULT_HOST = "transformer"


@hookimpl
def esper_register_tasks(register: TaskRegistrar) -> None:
    register(
        TaskKind(
            name="pydoc",
            build=build_pydoc,
            default_host=DEFAULT_HOST,
            config_class=PydocConfig,
            description="character-level language modelling on CPython's bundled pydoc help text (no files)",
        )
    )
    register(
        TaskKind(
            name="tinystories",
            build=build_tinystories,
            default_host=DEFAULT_HOST,
            config_class=TinyStoriesConfig,
            description="character-level language modelling on TinyStories from a local .txt/.json/.jsonl file",
        )
    )
