"""Fault injection for the run engine: rollbacks, damaged files, locks, signals, hostile seed families.

Each test asserts that the run's data is intact, that the error is one line naming what and where, and
the documented exit code (docs/user-guide.md, "When a run goes wrong").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import pytest
import tomli_w
import torch
from torch import nn

from esper_core import hookimpl
from esper_core.errors import CheckpointError, ConfigError, RunAborted, RunLocked, SeedContractError
from esper_core.plugins import PluginManager
from esper_core.registry import SeedFamily
from esper_core.runs import CHECKPOINT_DIR, LATEST_CHECKPOINT, RunLock, load_checkpoint, save_checkpoint
from esper_core.tolaria.engine import resume_run, start_run
from esper_core.testing import comparable, events_of
from tests import toy_plugin

ESPER = Path(sys.executable).with_name("esper")
ROOT = Path(__file__).resolve().parents[1]
LIVE = ("GERMINATED", "TRAINING", "BLENDING", "HOLDING")

# -- helpers -------------------------------------------------------------------------------------------


def assert_counts_reconcile(run_dir: Path) -> dict:
    """summary.json's lifecycle counts equal the event stream's, and every germinated seed is accounted
    for exactly once: pruned, fossilized, or still live in its environment's last EPOCH_COMPLETED."""
    records = events_of(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())["lifecycle"]
    kinds = Counter(record["event"] for record in records)
    assert summary["germinated"] == kinds["SEED_GERMINATED"]
    assert summary["pruned"] == kinds["SEED_PRUNED"]
    assert summary["fossilized"] == kinds["SEED_FOSSILIZED"]
    outcomes: dict[str, list[str]] = {}
    for record in records:
        data = record["data"]
        if record["event"] == "SEED_GERMINATED":
            assert data["seed_id"] not in outcomes, f"seed id {data['seed_id']} reused"
            outcomes[data["seed_id"]] = []
        elif record["event"] in ("SEED_PRUNED", "SEED_FOSSILIZED"):
            outcomes[data["seed_id"]].append(record["event"])
    assert all(len(ends) <= 1 for ends in outcomes.values()), outcomes
    last_epoch: dict[int, dict] = {}
    for record in records:
        if record["event"] == "EPOCH_COMPLETED":
            last_epoch[record["data"]["env_id"]] = record["data"]["stage_counts"]
    live = sum(counts[stage] for counts in last_epoch.values() for stage in LIVE)
    fossils = sum(counts["FOSSILIZED"] for counts in last_epoch.values())
    assert sum(1 for ends in outcomes.values() if not ends) == live
    assert sum(1 for ends in outcomes.values() if ends == ["SEED_FOSSILIZED"]) == fossils
    return summary


def aborted_run(toy_manager, toy_config, **sections) -> Path:
    created: list[Path] = []
    with pytest.raises(RunAborted):
        start_run(toy_config(faults={"abort": {"round": 0, "epoch": 4}}, **sections), toy_manager,
                  on_run_dir=created.append)
    return created[0]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file in the run directory and its bytes (to show that a refused resume changed nothing)."""
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()}


def one_line(message: str) -> str:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


# -- governor rollbacks: the lifecycle consequence of every seed a rollback removes ------------------

ROLLBACK_CASES = {
    # a seed germinated after the snapshot: the restored weights do not hold it
    "germinated_then_nan": ({"1": {"op": 1, "slot": 0}}, [{"epoch": 2, "env": 0}]),
    # a seed live in the snapshot
    "live_then_nan": ({"1": {"op": 1, "slot": 0}}, [{"epoch": 3, "env": 0}]),
    # pruned by the policy after the snapshot: pruned once, not again by the rollback
    "pruned_then_nan": ({"1": {"op": 1, "slot": 0}, "3": {"op": 4, "slot": 0}}, [{"epoch": 4, "env": 0}]),
    # fossilized after the snapshot: a fossilization is never undone
    "fossilized_then_nan": (
        {"1": {"op": 1, "slot": 1, "style": 2, "tempo": 0, "alpha_target": 2}, "3": {"op": 2, "slot": 1},
         "6": {"op": 5, "slot": 1}},
        [{"epoch": 7, "env": 0}],
    ),
    # NaN before any seed, then twice in a row with a seed between
    "nan_streak": ({"1": {"op": 1, "slot": 0}, "3": {"op": 1, "slot": 2}},
                   [{"epoch": 0, "env": 1}, {"epoch": 2, "env": 1}, {"epoch": 4, "env": 1}]),
}


@pytest.mark.parametrize("case", sorted(ROLLBACK_CASES))
def test_rollback_events_reconcile_with_the_report(toy_manager, toy_config, case):
    script, faults = ROLLBACK_CASES[case]
    run_dir = start_run(toy_config(policy={"name": "scripted", "script": script}, faults={"host_nan": faults}),
                        toy_manager)
    summary = assert_counts_reconcile(run_dir)
    assert summary["governor_rollbacks"] == len(faults)


def test_a_seed_germinated_after_the_snapshot_is_pruned_by_the_rollback_and_embargoed(toy_manager, toy_config):
    config = toy_config(policy={"name": "scripted", "script": {"1": {"op": 1, "slot": 0}}},
                        faults={"host_nan": [{"epoch": 2, "env": 0}]}, morphogenesis={"embargo_epochs": 2})
    records = events_of(start_run(config, toy_manager))
    env0 = [r for r in records if r["data"].get("env_id") == 0]
    rollback = next(r["data"] for r in env0 if r["event"] == "GOVERNOR_ROLLBACK")
    assert rollback["restored_epoch"] == 1 and rollback["pruned_slots"] == ["r0c0"]
    germinated = next(r["data"] for r in env0 if r["event"] == "SEED_GERMINATED")
    pruned = [r["data"] for r in env0 if r["event"] == "SEED_PRUNED"]
    assert [(p["seed_id"], p["reason"], p["epoch"]) for p in pruned] == [(germinated["seed_id"], "rollback", 2)]
    stages = {r["data"]["epoch"]: r["data"]["stage_counts"] for r in env0 if r["event"] == "EPOCH_COMPLETED"}
    assert stages[2]["EMBARGOED"] == 1 and stages[3]["EMBARGOED"] == 1 and stages[4]["EMBARGOED"] == 0
    changes = [(r["data"]["from_stage"], r["data"]["to_stage"]) for r in env0 if r["event"] == "SEED_STAGE_CHANGED"]
    assert changes[:4] == [("DORMANT", "GERMINATED"), ("GERMINATED", "TRAINING"), ("TRAINING", "PRUNED"),
                           ("PRUNED", "EMBARGOED")]


# -- damaged files ---------------------------------------------------------------------------------------


def test_a_checkpoint_with_flipped_bits_is_refused_before_anything_changes(toy_manager, toy_config):
    run_dir = aborted_run(toy_manager, toy_config)
    latest = run_dir / CHECKPOINT_DIR / LATEST_CHECKPOINT
    data = bytearray(latest.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 57 * 13, 13):  # 57 flipped low bits
        data[offset] ^= 1
    latest.write_bytes(bytes(data))
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as excinfo:
        resume_run(run_dir, toy_manager)
    message = one_line(str(excinfo.value))
    assert str(latest) in message and "sha256" in message and "damaged" in message
    assert snapshot(run_dir) == before


def test_a_checkpoint_missing_keys_is_a_schema_error_naming_the_fields(toy_manager, toy_config):
    run_dir = aborted_run(toy_manager, toy_config)
    latest = run_dir / CHECKPOINT_DIR / LATEST_CHECKPOINT
    payload = load_checkpoint(latest)
    for key in ("format", "version", "rng", "events"):
        del payload[key]
    payload["round"] = "zero"
    save_checkpoint(latest, payload)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as excinfo:
        resume_run(run_dir, toy_manager)
    message = one_line(str(excinfo.value))
    assert "not a complete Esper run checkpoint" in message and "$.round" in message and "$.rng" in message
    assert snapshot(run_dir) == before


def test_an_unsafe_checkpoint_is_refused_without_advising_an_unsafe_load(tmp_path):
    import io

    import hashlib

    buffer = io.BytesIO()
    torch.save({"format": "esper-checkpoint", "version": 4, "payload": Path("/etc")}, buffer)
    body = buffer.getvalue()
    path = tmp_path / "unsafe.pt"
    path.write_bytes(b"esper-checkpoint 4 sha256:" + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    message = one_line(str(excinfo.value))
    assert "unsafe" in message and "PosixPath" in message and "weights_only" not in message


def test_a_cut_event_record_is_refused_before_training(toy_manager, toy_config):
    run_dir = aborted_run(toy_manager, toy_config)
    events = run_dir / "events.jsonl"
    mark = load_checkpoint(run_dir / CHECKPOINT_DIR / LATEST_CHECKPOINT)["events"]
    events.write_bytes(events.read_bytes()[: mark["bytes"] - 10])  # cut mid-line, before the checkpoint
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="is shorter") as excinfo:
        resume_run(run_dir, toy_manager)
    assert str(events) in one_line(str(excinfo.value))
    assert snapshot(run_dir) == before


def test_an_edited_event_record_is_refused(toy_manager, toy_config):
    run_dir = aborted_run(toy_manager, toy_config)
    events = run_dir / "events.jsonl"
    events.write_text(events.read_text().replace('"epoch": 1', '"epoch": 9', 1))
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="edited or replaced"):
        resume_run(run_dir, toy_manager)
    assert snapshot(run_dir) == before


def test_a_torn_last_line_from_a_kill_is_moved_aside_and_the_resume_equals_the_uninterrupted_run(
    toy_manager, toy_config
):
    reference = start_run(toy_config(), toy_manager)
    run_dir = aborted_run(toy_manager, toy_config)
    events = run_dir / "events.jsonl"
    with open(events, "ab") as handle:
        handle.write(b'{"event": "EPOCH_COMPLETED", "time": 1.0, "data": {"env_')  # a kill mid-write
    resume_run(run_dir, toy_manager)
    assert comparable(events_of(run_dir)) == comparable(events_of(reference))
    discarded = (run_dir / "events.discarded.jsonl").read_text().splitlines()
    assert discarded[-1].startswith('{"event": "EPOCH_COMPLETED", "time": 1.0, "data": {"env_')
    assert json.loads((run_dir / "summary.json").read_text())["run"]["status"] == "completed"


@pytest.mark.parametrize("missing", ["events.jsonl", "environment.json"])
def test_a_resume_with_a_missing_file_changes_nothing(toy_manager, toy_config, missing):
    run_dir = aborted_run(toy_manager, toy_config)
    (run_dir / missing).unlink()
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match=f"its {missing} is missing") as excinfo:
        resume_run(run_dir, toy_manager)
    one_line(str(excinfo.value))
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("damage", [b"\xff\xfe\x00binary", b"[run\nname = "])
def test_a_damaged_saved_config_is_one_line_on_resume(toy_manager, toy_config, damage):
    run_dir = aborted_run(toy_manager, toy_config)
    (run_dir / "config.toml").write_bytes(damage)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="saved config .* is damaged") as excinfo:
        resume_run(run_dir, toy_manager)
    assert str(run_dir / "config.toml") in one_line(str(excinfo.value))
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_output_dir_that_cannot_hold_runs_is_a_config_error(toy_manager, toy_config, tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    output = blocker if where == "file" else blocker / "runs"
    with pytest.raises(ConfigError) as excinfo:
        start_run(toy_config(run={"output_dir": str(output)}), toy_manager)
    message = one_line(str(excinfo.value))
    assert "[run] output_dir" in message and "is a file" in message and str(blocker) in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_is_a_config_error(toy_manager, toy_config, tmp_path):
    output = tmp_path / "read-only"
    output.mkdir()
    output.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            start_run(toy_config(run={"output_dir": str(output)}), toy_manager)
    finally:
        output.chmod(0o700)


def test_the_meta_device_is_refused_before_the_run_starts(toy_manager, toy_config):
    from esper_core.tolaria.engine import prepare

    with pytest.raises(ConfigError, match=r"\[run\] device: .*'meta'") as excinfo:
        prepare(toy_config(run={"device": "meta"}), toy_manager)  # refused when parsed, else by prepare
    one_line(str(excinfo.value))


def test_non_ascii_run_names_keep_their_letters_and_stay_inside_output_dir(toy_manager, toy_config, tmp_path):
    run_dir = start_run(toy_config(run={"name": "Größe/../学习 run", "episode_length": 2}), toy_manager)
    assert run_dir.name.startswith("toy__Größe-..-学习-run__0__")
    assert run_dir.parent == tmp_path / "runs"


# -- the run directory lock ------------------------------------------------------------------------------


def test_a_locked_run_directory_refuses_a_resume_naming_the_holder(toy_manager, toy_config):
    run_dir = aborted_run(toy_manager, toy_config)
    before = snapshot(run_dir)
    with RunLock(run_dir):
        with pytest.raises(RunLocked) as excinfo:
            resume_run(run_dir, toy_manager)
    message = one_line(str(excinfo.value))
    assert f"in use by process {os.getpid()}" in message and str(run_dir) in message
    assert excinfo.value.exit_code == 2
    assert snapshot(run_dir) == before
    resume_run(run_dir, toy_manager)  # the lock went with its holder
    assert [r["event"] for r in events_of(run_dir)].count("RUN_RESUMED") == 1


# -- seed families that break the seed contract ---------------------------------------------------------


class Narrow(nn.Module):
    """Returns one channel: not shape-preserving."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * self.scale


def hostile_plugin(name: str, build) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def esper_register_seed_families(register) -> None:
        register(SeedFamily(name="hostile", build=build, topologies=("image",)))

    module.esper_register_seed_families = esper_register_seed_families
    return module


def test_a_wrong_shaped_seed_fails_its_germination_with_an_event_and_the_run_goes_on(tmp_path):
    plugin = hostile_plugin("narrow_plugin", lambda channels, topology, config: Narrow())
    manager = PluginManager(autoload=False, extra=[toy_plugin, plugin])
    script = {"1": {"op": 1, "slot": 0, "blueprint": 0}}
    from esper_core.config import parse_config

    config = parse_config(
        {**toy_run_config(tmp_path), "policy": {"name": "scripted", "script": script},
         "morphogenesis": {"seed_families": ["hostile", "toy_conv"], "min_training_epochs": 1}},
        manager,
    )
    run_dir = start_run(config, manager)
    records = events_of(run_dir)
    failed = [r["data"] for r in records if r["event"] == "ACTION_TAKEN" and r["data"]["epoch"] == 1]
    assert len(failed) == 2 and not any(action["success"] for action in failed)
    reason = failed[0]["reason"]
    assert reason.startswith("seed contract: ") and "'hostile'" in reason and "narrow_plugin" in reason
    assert "shape" in reason
    assert not any(r["event"] == "SEED_GERMINATED" for r in records)
    assert json.loads((run_dir / "summary.json").read_text())["run"]["status"] == "completed"


def toy_run_config(tmp_path: Path) -> dict:
    from tests.conftest import BASE_RUN

    data = json.loads(json.dumps(BASE_RUN))
    data["run"]["output_dir"] = str(tmp_path / "runs")
    return data


def test_a_seed_family_whose_build_returns_none_stops_the_run_before_its_directory(tmp_path):
    plugin = hostile_plugin("none_plugin", lambda channels, topology, config: None)
    manager = PluginManager(autoload=False, extra=[toy_plugin, plugin])
    from esper_core.config import parse_config

    config = parse_config({**toy_run_config(tmp_path), "morphogenesis": {"seed_families": ["hostile"]}}, manager)
    with pytest.raises(SeedContractError) as excinfo:
        start_run(config, manager)
    message = one_line(str(excinfo.value))
    assert "'hostile'" in message and "none_plugin" in message and "NoneType" in message
    assert excinfo.value.family == "hostile" and excinfo.value.plugin == "none_plugin"
    assert excinfo.value.exit_code == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# -- the real command: exit codes, signals, concurrent resumes ---------------------------------------------


def esper(*args: str, wait: bool = True, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    env = dict(os.environ)
    env["ESPER_PLUGIN_MODULES"] = "tests.toy_plugin"
    env["ESPER_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if wait:
        return subprocess.run([str(ESPER), *args], capture_output=True, text=True, env=env, timeout=300)
    return subprocess.Popen([str(ESPER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def write_config(tmp_path: Path, **sections) -> Path:
    data = toy_run_config(tmp_path)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def test_cli_bad_files_exit_2_with_one_line(tmp_path):
    """The fast representative of the command-line faults: a directory as config, a non-UTF-8 config,
    an output_dir that is a file, and a resume of a locked run directory."""
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe[run]\x00")
    (tmp_path / "blocker").write_text("a file")
    results = {
        "directory": esper("run", str(tmp_path / "dir.toml")),
        "binary": esper("run", str(tmp_path / "binary.toml")),
        "output_dir": esper("run", str(write_config(tmp_path, run={"output_dir": str(tmp_path / "blocker")}))),
    }
    for name, result in results.items():
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("esper: error: ") and "Traceback" not in result.stderr, name
    assert "is a directory" in results["directory"].stderr
    assert "UTF-8" in results["binary"].stderr
    assert "[run] output_dir" in results["output_dir"].stderr and "is a file" in results["output_dir"].stderr


def wait_for_epochs(run_dir_holder: list[Path], process: subprocess.Popen, epochs: int, tmp_path: Path) -> Path:
    """Poll (bounded) until the run has logged ``epochs`` EPOCH_COMPLETED events; returns its directory."""
    for _ in range(600):
        runs = sorted((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []
        if runs and (runs[0] / "events.jsonl").exists():
            if (runs[0] / "events.jsonl").read_text().count('"EPOCH_COMPLETED"') >= epochs:
                return runs[0]
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    raise AssertionError("the run never reached the epoch to interrupt")


LONG = {"run": {"episode_length": 40, "envs": 1, "checkpoint_every": 1}}


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_end_the_run_cleanly_and_it_resumes(tmp_path, signum, code):
    process = esper("run", str(write_config(tmp_path, **LONG)), wait=False)
    run_dir = wait_for_epochs([], process, 3, tmp_path)
    process.send_signal(signum)
    _stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    finished = [r["data"] for r in events_of(run_dir) if r["event"] == "RUN_FINISHED"]
    assert len(finished) == 1 and finished[0]["status"] == "aborted"
    assert "resume with: esper run --resume" in finished[0]["error"]
    assert json.loads((run_dir / "summary.json").read_text())["run"]["status"] == "aborted"
    resumed = esper("run", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "summary.json").read_text())["run"]["status"] == "completed"
    epochs = [r["data"]["epoch"] for r in events_of(run_dir) if r["event"] == "EPOCH_COMPLETED"]
    assert epochs == list(range(40))


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path):
    config = write_config(tmp_path, **LONG)
    process = esper("run", str(config), wait=False)
    run_dir = wait_for_epochs([], process, 5, tmp_path)
    process.kill()
    process.communicate(timeout=60)
    assert not (run_dir / "summary.json").exists()
    resumed = esper("run", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    reference = esper("run", str(config))
    assert reference.returncode == 0, reference.stderr
    reference_dir = Path(next(l for l in reference.stdout.splitlines() if l.startswith("finished: "))[10:].strip())
    assert comparable(events_of(run_dir)) == comparable(events_of(reference_dir))
    assert_counts_reconcile(run_dir)


@pytest.mark.slow
def test_two_concurrent_resumes_one_runs_and_the_other_exits_2_naming_it(tmp_path):
    aborted = esper("run", str(write_config(tmp_path, run={"episode_length": 5000, "envs": 1, "checkpoint_every": 0},
                                            faults={"abort": {"round": 0, "epoch": 1}})))
    assert aborted.returncode == 3, aborted.stderr
    run_dir = Path(aborted.stderr.split("--resume", 1)[1].split()[0])
    first = esper("run", "--resume", str(run_dir), wait=False)
    for _ in range(1200):  # bounded: until the first resume holds the lock
        if (run_dir / "run.lock").exists() and (run_dir / "run.lock").read_text().strip() == str(first.pid):
            break
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = esper("run", "--resume", str(run_dir))
    assert first.poll() is None, "the first resume ended before the second tried: the run is too short"
    first.send_signal(signal.SIGTERM)  # then stop the first one, cleanly
    first.communicate(timeout=300)
    assert first.returncode == 143
    assert second.returncode == 2
    assert len(second.stderr.strip().splitlines()) == 1 and f"in use by process {first.pid}" in second.stderr
    kinds = Counter(r["event"] for r in events_of(run_dir))
    assert kinds["RUN_RESUMED"] == 1 and kinds["RUN_FINISHED"] == 1  # the abort's was cut with the epochs after it
    assert json.loads((run_dir / "summary.json").read_text())["run"]["status"] == "aborted"
