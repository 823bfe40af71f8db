"""Tests of the console sink: progress per epoch step, notable event lines, and the end-of-run summary."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from esper_core.leyline import TelemetryEvent, TelemetryEventType
from esper_core.leyline import telemetry as payloads
from esper_core.telemetry import SinkContext
from esper_sinks.console import ConsoleSink, ConsoleSinkConfig, format_duration, format_seed_stages


def plain_console() -> Console:
    """A console that is not a terminal, like CI logs or a pipe."""
    return Console(file=io.StringIO(), force_terminal=False, width=200)


def output_of(console: Console) -> str:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def make_context(tmp_path: Path, *, rounds: int = 2, envs: int = 2, episode_length: int = 3, start_round: int = 0) -> SinkContext:
    return SinkContext(
        run_dir=tmp_path, run_name="demo", rounds=rounds, envs=envs, episode_length=episode_length, start_round=start_round
    )


def event(event_type: TelemetryEventType, payload: Any) -> TelemetryEvent:
    return TelemetryEvent(event_type=event_type, payload=payload)


def epoch_completed(env_id: int, round_index: int, epoch: int, val_metric: float, *, seed_params: int = 0,
                    fossilized_params: int = 0, stage_counts: dict[str, int] | None = None) -> TelemetryEvent:
    return event(
        TelemetryEventType.EPOCH_COMPLETED,
        payloads.EpochCompletedPayload(
            env_id=env_id, round=round_index, epoch=epoch, train_loss=1.0, val_loss=0.9, val_metric=val_metric,
            host_params=1000, seed_params=seed_params, fossilized_params=fossilized_params,
            stage_counts=stage_counts if stage_counts is not None else {"DORMANT": 2},
            train_seconds=0.1, validate_seconds=0.05, effective_seed_params=0.0, alpha_delta_sq_sum=0.0,
        ),
    )


SEED = {"slot_id": "r0c1", "seed_id": "r1e0-r0c1-0", "blueprint_id": "conv_small"}


def germinated(env_id: int, round_index: int, epoch: int) -> TelemetryEvent:
    return event(
        TelemetryEventType.SEED_GERMINATED,
        payloads.SeedGerminatedPayload(env_id=env_id, round=round_index, epoch=epoch, style="ADD", alpha_target=1.0,
                                       seed_params=250, built_params=250, **SEED),
    )


def fossilized(env_id: int, round_index: int, epoch: int) -> TelemetryEvent:
    return event(
        TelemetryEventType.SEED_FOSSILIZED,
        payloads.SeedFossilizedPayload(env_id=env_id, round=round_index, epoch=epoch, seed_params=250, alpha=1.0,
                                       contribution=0.031, seed_age_epochs=2, **SEED),
    )


def pruned(env_id: int, round_index: int, epoch: int) -> TelemetryEvent:
    return event(
        TelemetryEventType.SEED_PRUNED,
        payloads.SeedPrunedPayload(env_id=env_id, round=round_index, epoch=epoch, reason="policy", contribution=None,
                                   seed_age_epochs=1, **SEED),
    )


def rollback(env_id: int, round_index: int, epoch: int) -> TelemetryEvent:
    return event(
        TelemetryEventType.GOVERNOR_ROLLBACK,
        payloads.GovernorRollbackPayload(env_id=env_id, round=round_index, epoch=epoch, reason="loss spike",
                                         loss=123.5, restored_epoch=0, pruned_slots=("r0c1",)),
    )


def run_finished(status: str = "completed", error: str | None = None) -> TelemetryEvent:
    return event(
        TelemetryEventType.RUN_FINISHED,
        payloads.RunFinishedPayload(status=status, rounds_completed=2, wall_seconds=65.2, error=error),
    )


def two_round_run() -> list[TelemetryEvent]:
    """Two rounds of two environments over three epochs, with seed events and one rollback in round 1."""
    events: list[TelemetryEvent] = []
    for round_index in range(2):
        for epoch in range(3):
            events.append(epoch_completed(0, round_index, epoch, 0.50 + 0.1 * epoch + round_index * 0.01,
                                          seed_params=250 if round_index == 1 else 0,
                                          stage_counts={"DORMANT": 1, "TRAINING": 1}))
            events.append(epoch_completed(1, round_index, epoch, 0.40 + 0.1 * epoch,
                                          fossilized_params=30 if round_index == 1 else 0, stage_counts={"DORMANT": 1, "BLENDING": 1}))
        events.append(event(TelemetryEventType.ROUND_COMPLETED,
                            payloads.RoundCompletedPayload(round=round_index, final_metrics=(0.7, 0.6),
                                                           final_params=(1000, 1000), mean_return=0.25)))
    events[1:1] = [germinated(0, 0, 0)]
    round_one = [germinated(0, 1, 0), germinated(1, 1, 0), fossilized(0, 1, 1), pruned(1, 1, 2), rollback(1, 1, 1)]
    events[-1:-1] = round_one
    events.append(run_finished())
    return events


def test_plain_console_prints_one_progress_line_per_epoch_step(tmp_path: Path) -> None:
    console = plain_console()
    sink = ConsoleSink(ConsoleSinkConfig(), make_context(tmp_path), console=console)
    assert sink._progress is None, "no live bar when the output is not a terminal"
    sink.handle(epoch_completed(0, 0, 0, 0.5, stage_counts={"DORMANT": 1, "TRAINING": 1}))
    assert "step" not in output_of(console), "the step is not complete until every environment reported"
    sink.handle(epoch_completed(1, 0, 0, 0.7, stage_counts={"DORMANT": 0, "TRAINING": 1, "BLENDING": 1}))
    first_line = output_of(console).strip()
    assert first_line.startswith("round 1/2 epoch 1/3  step 1/6  val 0.6000  seeds: TRAINING 2, BLENDING 1")
    for event_ in two_round_run()[2:]:
        sink.handle(event_)
    sink.flush()
    sink.close()
    progress_lines = [line for line in output_of(console).splitlines() if "  step " in line]
    assert len(progress_lines) == 6
    assert progress_lines[-1].startswith("round 2/2 epoch 3/3  step 6/6")
    assert sink.completed_steps == 6


def test_summary_table_and_rollback_warning(tmp_path: Path) -> None:
    console = plain_console()
    sink = ConsoleSink(ConsoleSinkConfig(), make_context(tmp_path), console=console)
    for event_ in two_round_run():
        sink.handle(event_)
    sink.close()
    text = output_of(console)
    assert "WARNING [round 2/2 epoch 2/3] env 1: governor rollback: loss spike (loss 123.5); restored epoch 1; pruned r0c1" in text
    assert "round 2/2: final state per environment" in text
    rows = {line.split()[1]: line.split()[2:] for line in text.splitlines() if line.startswith("│") and line.split()[1] in {"0", "1"}}
    # env 0 of the last round: val 0.71, 1000 host + 250 seed params, 1 germinated, 1 fossilized, 0 pruned, 0 rollbacks.
    assert rows["0"] == ["│", "0.7100", "│", "1,250", "│", "1", "│", "1", "│", "0", "│", "0", "│"]
    # env 1: 1000 host + 30 fossilized params (a fossilized seed is part of the model's size).
    assert rows["1"] == ["│", "0.6000", "│", "1,030", "│", "1", "│", "0", "│", "1", "│", "1", "│"]
    assert "run 'demo' completed: 2 of 2 rounds completed, wall time 1m 05s" in text


def test_verbose_prints_seed_lines_and_quiet_keeps_only_rollbacks(tmp_path: Path) -> None:
    verbose_console = plain_console()
    quiet_console = plain_console()
    verbose = ConsoleSink(ConsoleSinkConfig(verbose=True), make_context(tmp_path), console=verbose_console)
    quiet = ConsoleSink(ConsoleSinkConfig(verbose=False), make_context(tmp_path), console=quiet_console)
    grown = event(TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED, payloads.SeedInternalLevelChangedPayload(
        env_id=0, round=0, epoch=1, from_level=1, to_level=2, internal_effective_params=1024, **SEED))
    disabled = event(TelemetryEventType.SEED_SUBTARGET_CHANGED, payloads.SeedSubtargetChangedPayload(
        env_id=0, round=0, epoch=1, subtarget_idx=2, enabled=False, subtarget_active_count=3,
        internal_effective_params=768, **SEED))
    events = two_round_run()
    for event_ in [*events[:2], grown, disabled, *events[2:]]:
        verbose.handle(event_)
        quiet.handle(event_)
    loud_text, quiet_text = output_of(verbose_console), output_of(quiet_console)
    assert "env 0: grew conv_small in r0c1 from level 1 to 2 (1,024 params in use)" in loud_text
    assert "grew conv_small" not in quiet_text
    assert "env 0: disabled subtarget 2 of conv_small in r0c1 (3 active, 768 params in use)" in loud_text
    assert "disabled subtarget" not in quiet_text
    assert "env 0: germinated conv_small in r0c1 (250 params, ADD, alpha target 1)" in loud_text
    assert "env 0: fossilized conv_small in r0c1 (age 2 epochs, alpha 1, contribution +0.0310" in loud_text
    assert "env 1: pruned conv_small in r0c1: policy (age 1 epoch, contribution not measured)" in loud_text
    for word in ("germinated conv_small", "fossilized conv_small", "pruned conv_small"):
        assert word not in quiet_text
    assert "WARNING" in quiet_text
    # the summary counts seed events whether or not they are printed
    assert " 1 │ " in quiet_text.split("final state per environment")[1]


def test_live_bar_on_a_terminal_counts_steps_and_prints_summary(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=True, force_interactive=True, record=True, width=160)
    sink = ConsoleSink(ConsoleSinkConfig(refresh_per_second=20.0), make_context(tmp_path), console=console)
    assert sink._progress is not None
    progress, task_id = sink._progress, sink._progress_task
    assert task_id is not None
    assert progress.tasks[0].total == 6
    events = two_round_run()
    for event_ in events[:-1]:
        sink.handle(event_)
    assert progress.tasks[0].completed == 6
    assert progress.tasks[0].fields["val_metric"] == f"{(0.71 + 0.60) / 2:.4f}"
    assert progress.tasks[0].fields["seeds"] == "TRAINING 1, BLENDING 1"
    sink.handle(events[-1])
    assert sink._progress is None, "RUN_FINISHED stops the live bar before the summary"
    sink.close()
    text = console.export_text()
    assert "WARNING" in text and "governor rollback: loss spike" in text
    assert "0.7100" in text and "1,250" in text
    assert "completed: 2 of 2 rounds completed, wall time 1m 05s" in text


def test_long_episodes_print_one_plain_line_per_round(tmp_path: Path) -> None:
    console = plain_console()
    sink = ConsoleSink(ConsoleSinkConfig(), make_context(tmp_path, rounds=1, envs=1, episode_length=40), console=console)
    for epoch in range(40):
        sink.handle(epoch_completed(0, 0, epoch, 0.5))
    progress_lines = [line for line in output_of(console).splitlines() if "  step " in line]
    assert [line.split("  step ")[1].split()[0] for line in progress_lines] == ["40/40"]


def test_resume_moves_progress_to_the_resume_point(tmp_path: Path) -> None:
    console = plain_console()
    sink = ConsoleSink(ConsoleSinkConfig(), make_context(tmp_path, rounds=4, envs=1, start_round=2), console=console)
    assert sink.total_steps == 6
    sink.handle(event(TelemetryEventType.RUN_RESUMED, payloads.RunResumedPayload(round=2, epoch=1, discarded_events=7)))
    assert sink.completed_steps == 1
    assert "resumed at round 3/4 epoch 2/3; discarded 7 events recorded after the last checkpoint" in output_of(console)
    sink.handle(epoch_completed(0, 2, 1, 0.5))
    assert "round 3/4 epoch 2/3  step 2/6" in output_of(console)


def test_resume_on_a_terminal_moves_the_bar(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=160)
    sink = ConsoleSink(ConsoleSinkConfig(), make_context(tmp_path, rounds=4, envs=1, start_round=2), console=console)
    assert sink._progress is not None
    sink.handle(event(TelemetryEventType.RUN_RESUMED, payloads.RunResumedPayload(round=2, epoch=2, discarded_events=0)))
    assert sink._progress.tasks[0].completed == 2
    assert sink._progress.tasks[0].total == 6
    sink.handle(epoch_completed(0, 2, 2, 0.5))
    assert sink._progress.tasks[0].completed == 3
    sink.close()
    assert sink._progress is None


def test_failed_run_prints_status_and_error_without_any_epoch(tmp_path: Path) -> None:
    console = plain_console()
    sink = ConsoleSink(ConsoleSinkConfig(), make_context(tmp_path), console=console)
    sink.handle(run_finished(status="failed", error="DataError: no such folder"))
    sink.close()
    text = output_of(console)
    assert "no epoch of this run reported anything" in text
    assert "run 'demo' failed: 2 of 2 rounds completed" in text
    assert "error: DataError: no such folder" in text


def test_contract_breaks_raise(tmp_path: Path) -> None:
    sink = ConsoleSink(ConsoleSinkConfig(), make_context(tmp_path, envs=1), console=plain_console())
    with pytest.raises(ValueError, match="env_id 3 is outside the run's 1 environments"):
        sink.handle(epoch_completed(3, 0, 0, 0.5))
    with pytest.raises(ValueError, match="'SPROUTING', which is not a SeedStage name"):
        sink.handle(epoch_completed(0, 0, 0, 0.5, stage_counts={"SPROUTING": 1}))


def test_a_failing_event_stops_the_live_bar_and_propagates(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=160)
    sink = ConsoleSink(ConsoleSinkConfig(), make_context(tmp_path, envs=1), console=console)
    assert sink._progress is not None
    with pytest.raises(ValueError, match="env_id 5"):
        sink.handle(epoch_completed(5, 0, 0, 0.5))
    assert sink._progress is None, "the hub detaches a raising sink without close(); the bar must not keep running"


@pytest.mark.parametrize("changes", [{"refresh_per_second": 0.0}, {"refresh_per_second": float("inf")},
                                     {"refresh_per_second": True}, {"verbose": "yes"}])
def test_config_rejects_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        ConsoleSinkConfig(**changes)


def test_formatting_helpers() -> None:
    assert format_duration(3.14) == "3.1s"
    assert format_duration(65.2) == "1m 05s"
    assert format_duration(7384) == "2h 03m 04s"
    assert format_seed_stages({"FOSSILIZED": 1, "DORMANT": 3, "TRAINING": 2, "PRUNED": 0}) == "TRAINING 2, FOSSILIZED 1"
    assert format_seed_stages({"DORMANT": 3}) == "no seeds"


def test_a_ladder_seed_germination_shows_the_parameters_in_use(tmp_path: Path) -> None:
    console = plain_console()
    sink = ConsoleSink(ConsoleSinkConfig(verbose=True), make_context(tmp_path), console=console)
    sink.handle(TelemetryEvent(
        TelemetryEventType.SEED_GERMINATED,
        payloads.SeedGerminatedPayload(env_id=0, round=0, epoch=2, slot_id="r1c1", seed_id="s", blueprint_id="lora_ladder",
                                       style="ADD", alpha_target=1.0, seed_params=512, built_params=4096,
                                       internal_level=1, internal_effective_params=512),
    ))
    assert "germinated lora_ladder in r1c1 (512 params in use at level 1 (4,096 built), ADD" in output_of(console)


def run_started(torch_threads: int | None) -> TelemetryEvent:
    return event(
        TelemetryEventType.RUN_STARTED,
        payloads.RunStartedPayload(
            run_name="demo", run_dir="/runs/demo", task="shapes", host="cnn", policy="heuristic", reward="basic",
            seed=7, rounds=2, envs=2, episode_length=3, slots=("r0c1",), blueprints=("conv_small",), host_params=1000,
            device="cpu", slot_surfaces=("segment_boundary",), score_basis="metric", torch_threads=torch_threads,
        ),
    )


def test_the_header_line_shows_the_torch_thread_count(tmp_path: Path) -> None:
    console = plain_console()
    sink = ConsoleSink(ConsoleSinkConfig(), make_context(tmp_path), console=console)
    sink.handle(run_started(torch_threads=2))
    assert "seed 7; device cpu; 2 torch threads; run dir /runs/demo" in output_of(console)
    older = plain_console()
    ConsoleSink(ConsoleSinkConfig(), make_context(tmp_path), console=older).handle(run_started(torch_threads=None))
    assert "device cpu; run dir /runs/demo" in output_of(older), "a record without the count says nothing about it"


def test_anomalies_are_printed_even_when_quiet(tmp_path: Path) -> None:
    console = plain_console()
    sink = ConsoleSink(ConsoleSinkConfig(verbose=False), make_context(tmp_path), console=console)
    sink.handle(event(TelemetryEventType.GRADIENT_ANOMALY, payloads.GradientAnomalyPayload(
        env_id=1, round=0, epoch=2, where="seed", name="r0c1", kind="exploding", value=2500.0, threshold=1000.0,
        seed_id="r0e1-r0c1-0")))
    sink.handle(event(TelemetryEventType.GRADIENT_ANOMALY, payloads.GradientAnomalyPayload(
        env_id=0, round=1, epoch=0, where="host_segment", name="host", kind="non_finite", value=float("nan"),
        threshold=None)))
    sink.handle(event(TelemetryEventType.POLICY_ANOMALY, payloads.PolicyAnomalyPayload(
        round=1, kind="entropy_collapse", value=0.0031, threshold=0.104, head="op")))
    lines = output_of(console).splitlines()
    assert lines == [
        "ANOMALY [round 1/2 epoch 3/3] env 1: exploding gradient, seed r0e1-r0c1-0 in r0c1: norm 2.5e+03 (above 1e+03)",
        "ANOMALY [round 2/2 epoch 1/3] env 0: non finite gradient, host segment host: norm nan",
        "ANOMALY [round 2/2] policy: entropy collapse of head op: 0.0031 (below 0.104)",
    ]
