"""Anomaly telemetry through the engine: gradient and policy anomalies as events, thresholds from config,
counted in the summary and ``esper report``, exact across a resume; and a run on a plugin's own topology."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from esper_core import hookimpl
from esper_core.config import parse_config
from esper_core.errors import RunAborted
from esper_core.registry import HostFamily, LadderKind, PolicyKind, TaskKind, TopologyKind
from esper_core.tasks import TensorClassificationTask
from esper_core.testing import toy_plugin_manager
from esper_core.testing.builders import events_of, toy_run_data
from esper_core.testing.toy_plugin import ScriptedConfig, ScriptedPolicy
from esper_core.tolaria.engine import resume_run, start_run
from tests.test_conformance import AUDIO, AUDIO_FAMILY, AudioHost
from tests.test_tolaria import comparable


class CollapsedPolicy(ScriptedPolicy):
    """The scripted policy reporting a collapsed ``op`` head and a value loss that blows up in round 3."""

    def end_episode(self, round_index: int) -> dict[str, float]:
        return {"entropy/op": 0.0, "value_loss": 1000.0 if round_index == 3 else 1.0 + round_index * 0.01}


class CollapsedPlugin:
    @staticmethod
    @hookimpl
    def esper_register_policies(register) -> None:
        register(PolicyKind(name="collapsed", build=CollapsedPolicy, config_class=ScriptedConfig))


def anomalies(run_dir, event: str) -> list[dict[str, Any]]:
    return [record["data"] for record in events_of(run_dir) if record["event"] == event]


@pytest.fixture
def manager():
    return toy_plugin_manager(CollapsedPlugin)


def config(manager, tmp_path, **sections):
    return parse_config(toy_run_data(tmp_path / "runs", **sections), manager)


def test_a_nan_host_emits_a_non_finite_gradient_anomaly(manager, tmp_path):
    run_dir = start_run(config(manager, tmp_path, faults={"host_nan": [{"epoch": 2, "env": 1}]}), manager)
    found = anomalies(run_dir, "GRADIENT_ANOMALY")
    assert [(a["env_id"], a["epoch"], a["where"], a["name"], a["kind"], a["threshold"]) for a in found] == [
        (1, 2, "host_segment", "host", "non_finite", None)
    ]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["anomalies"]["gradient"]["non_finite"] == 1
    assert summary["anomalies"]["gradient"]["exploding"] == 0


def test_thresholds_from_config_decide_what_fires(manager, tmp_path):
    quiet = start_run(config(manager, tmp_path), manager)
    assert anomalies(quiet, "GRADIENT_ANOMALY") == []
    script = {"1": {"op": 1, "slot": 0}}
    loud = start_run(
        config(manager, tmp_path, policy={"name": "scripted", "script": script},
               anomalies={"exploding_grad_norm": 1e-6, "vanishing_grad_norm": 1e-9}),
        manager,
    )
    found = anomalies(loud, "GRADIENT_ANOMALY")
    assert {a["kind"] for a in found} == {"exploding"}
    assert all(a["threshold"] == 1e-6 and a["value"] > 1e-6 for a in found)
    hosts = [(a["env_id"], a["epoch"]) for a in found if a["where"] == "host_segment"]
    assert sorted(hosts) == [(env, epoch) for env in range(2) for epoch in range(8)]  # every env, every epoch
    seeds = [a for a in found if a["where"] == "seed"]
    assert seeds and all(a["name"] == "r0c0" and a["seed_id"] for a in seeds)


def test_a_collapsed_policy_emits_policy_anomalies_counted_by_the_report(manager, tmp_path, capsys):
    from esper_core.cli import main

    run_dir = start_run(config(manager, tmp_path, run={"rounds": 5, "episode_length": 2}, policy={"name": "collapsed"}),
                        manager)
    found = anomalies(run_dir, "POLICY_ANOMALY")
    collapsed = [a for a in found if a["kind"] == "entropy_collapse"]
    assert [a["round"] for a in collapsed] == [0, 1, 2, 3, 4] and {a["head"] for a in collapsed} == {"op"}
    blowups = [a for a in found if a["kind"] == "value_loss_blowup"]
    assert [(a["round"], a["value"]) for a in blowups] == [(3, 1000.0)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["anomalies"]["policy"]["entropy_collapse"] == 5
    assert summary["anomalies"]["policy"]["value_loss_blowup"] == 1
    assert main(["report", str(run_dir)]) == 0
    assert "entropy_collapse 5" in capsys.readouterr().out


def test_resume_judges_value_losses_exactly_as_the_uninterrupted_run(manager, tmp_path):
    sections = {"run": {"rounds": 5, "episode_length": 2}, "policy": {"name": "collapsed"},
                "faults": {"host_nan": [{"round": 3, "epoch": 1, "env": 0}]}}
    reference = start_run(config(manager, tmp_path, **sections), manager)
    created = []
    aborted = {**sections, "faults": {**sections["faults"], "abort": {"round": 2, "epoch": 1}}}
    with pytest.raises(RunAborted):
        start_run(config(manager, tmp_path, **aborted), manager, on_run_dir=created.append)
    resumed = resume_run(created[0], manager)
    records = comparable(events_of(resumed))
    assert records == comparable(events_of(reference))
    assert any(event == "POLICY_ANOMALY" and '"value_loss_blowup"' in data for event, data in records)


# -- a host on a plugin's own topology, with a third-party ladder kind -------------------------------


def build_clips(config: Any, context: Any) -> TensorClassificationTask:
    generator = torch.Generator().manual_seed(context.seed)
    inputs = torch.randn(48, 3, 12, generator=generator)
    targets = (inputs.mean(dim=(1, 2)) > 0).long()
    return TensorClassificationTask(
        name="clips", topology="audio", train_inputs=inputs[:32], train_targets=targets[:32],
        val_inputs=inputs[32:], val_targets=targets[32:], num_classes=2, device=context.device,
    )


class RecordingPolicy(ScriptedPolicy):
    """The scripted policy keeping every observation it was shown."""

    def act(self, observations, masks):
        self.seen = [*getattr(self, "seen", []), *observations]
        return super().act(observations, masks)


class AudioRunPlugin:
    """A third-party plugin: its own topology, host, task, seed family and ladder kind."""

    @staticmethod
    @hookimpl
    def esper_register_topologies(register) -> None:
        register(AUDIO)

    @staticmethod
    @hookimpl
    def esper_register_ladder_kinds(register) -> None:
        register(LadderKind(name="audio_taps", code=13, description="test: filter taps"))

    @staticmethod
    @hookimpl
    def esper_register_seed_families(register) -> None:
        register(AUDIO_FAMILY)

    @staticmethod
    @hookimpl
    def esper_register_hosts(register) -> None:
        register(HostFamily(name="audio_host", build=AudioHost, topology="audio"))

    @staticmethod
    @hookimpl
    def esper_register_tasks(register) -> None:
        register(TaskKind(name="clips", build=build_clips, default_host="audio_host"))

    @staticmethod
    @hookimpl
    def esper_register_policies(register) -> None:
        register(PolicyKind(name="recording", build=RecordingPolicy, config_class=ScriptedConfig))


def test_a_host_on_a_plugin_topology_runs_through_the_engine(tmp_path):
    manager = toy_plugin_manager(AudioRunPlugin)
    assert not manager.failures, [failure.describe() for failure in manager.failures]
    script = {"1": {"op": 1, "slot": 0, "style": 2}}  # germinate audio_conv with a learned (topology) gate
    data = toy_run_data(tmp_path / "runs", task={"name": "clips"}, run={"episode_length": 3, "envs": 1},
                        policy={"name": "recording", "script": script},
                        morphogenesis={"seed_families": ["audio_conv"], "slots": ["r0c0", "r0c1"]})
    run_dir = start_run(parse_config(data, manager), manager)
    records = events_of(run_dir)
    assert [r["data"]["epoch"] for r in records if r["event"] == "EPOCH_COMPLETED"] == [0, 1, 2]
    assert [r["data"]["blueprint_id"] for r in records if r["event"] == "SEED_GERMINATED"] == ["audio_conv"]
    from esper_core.testing.toy_plugin import INSTANCES

    seen = INSTANCES[-1].seen
    assert seen and all(observation.ladder_kind_codes["audio_taps"] == 13 for observation in seen)
