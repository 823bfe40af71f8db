"""Tests that the esper-sinks plugin is discovered through its entry point and every sink meets the core contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper_core.plugins import PluginManager
from esper_core.registry import SinkKind
from esper_core.telemetry import TelemetrySink
from esper_core.testing import check_sink_kind
from esper_sinks.console import ConsoleSinkConfig
from esper_sinks.jsonl import JsonlSinkConfig
from esper_sinks.tensorboard import TensorBoardSinkConfig

SINK_NAMES = ("console", "jsonl", "tensorboard")


@pytest.fixture(scope="module")
def plugin_manager() -> PluginManager:
    return PluginManager()


def test_entry_point_registers_all_three_sinks(plugin_manager: PluginManager) -> None:
    assert not plugin_manager.failures, plugin_manager.failure_note()
    assert set(SINK_NAMES) <= set(plugin_manager.registry.names("telemetry_sinks"))
    for name in SINK_NAMES:
        assert plugin_manager.registry.owner("telemetry_sinks", name) == "sinks"
    info = next(info for info in plugin_manager.plugins if info.name == "sinks")
    assert info.distribution == "esper-sinks"
    assert info.registered == {"telemetry_sinks": SINK_NAMES}


@pytest.mark.parametrize(
    ("name", "config_class"),
    [("console", ConsoleSinkConfig), ("jsonl", JsonlSinkConfig), ("tensorboard", TensorBoardSinkConfig)],
)
def test_each_sink_has_description_and_config_class(plugin_manager: PluginManager, name: str, config_class: type) -> None:
    kind = plugin_manager.registry.get("telemetry_sinks", name)
    assert isinstance(kind, SinkKind)
    assert kind.config_class is config_class
    assert kind.description


@pytest.mark.parametrize("name", SINK_NAMES)
def test_each_sink_passes_the_conformance_check(plugin_manager: PluginManager, name: str, tmp_path: Path) -> None:
    if name == "tensorboard":
        pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    sink = check_sink_kind(plugin_manager.registry.get("telemetry_sinks", name), tmp_path / "run")
    assert isinstance(sink, TelemetrySink)


def test_conformance_run_leaves_the_expected_files(plugin_manager: PluginManager, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    run_dir = tmp_path / "run"
    check_sink_kind(plugin_manager.registry.get("telemetry_sinks", "jsonl"), run_dir)
    check_sink_kind(plugin_manager.registry.get("telemetry_sinks", "tensorboard"), run_dir)
    # one line per scalar event of the kit's samples: round, epoch, reward, subtarget switch, policy update,
    # two anomalies
    assert len((run_dir / "scalars.jsonl").read_text(encoding="utf-8").splitlines()) == 7
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
