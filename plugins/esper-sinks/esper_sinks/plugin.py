"""The esper-sinks plugin module: registers the ``console``, ``jsonl`` and ``tensorboard`` telemetry sinks."""

from __future__ import annotations

from esper_core.hookspecs import SinkRegistrar, hookimpl
from esper_core.registry import SinkKind
from esper_sinks.console import ConsoleSink, ConsoleSinkConfig
from esper_sinks.jsonl import JsonlSink, JsonlSinkConfig
from esper_sinks.tensorboard import TensorBoardSink, TensorBoardSinkConfig


@hookimpl
def esper_register_telemetry_sinks(register: SinkRegistrar) -> None:
    register(
        SinkKind(
            name="console",
            build=ConsoleSink,
            config_class=ConsoleSinkConfig,
            description="rich progress bar over the run's epochs, seed and rollback lines, end-of-run summary table",
        )
    )
    register(
        SinkKind(
            name="jsonl",
            build=JsonlSink,
            config_class=JsonlSinkConfig,
            description="flat scalar records (epochs, rewards, policy updates, rounds), one JSON object per line",
        )
    )
    register(
        SinkKind(
            name="tensorboard",
            build=TensorBoardSink,
            config_class=TensorBoardSinkConfig,
            description="TensorBoard scalars per environment, reward components, policy metrics, seed counts "
            "(needs the 'tensorboard' extra)",
        )
    )
