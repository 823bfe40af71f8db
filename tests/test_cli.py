"""The real ``esper`` command on the toy plugin: run, resume, validate, plugins, report, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

ESPER = Path(sys.executable).with_name("esper")
ROOT = Path(__file__).resolve().parents[1]


def esper(*args: str, modules: str = "tests.toy_plugin", cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["ESPER_PLUGIN_MODULES"] = modules
    env["ESPER_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([str(ESPER), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture
def write_config(tmp_path, toy_run_data):
    def write(name: str = "run.toml", **sections) -> Path:
        path = tmp_path / name
        path.write_text(tomli_w.dumps(toy_run_data(**sections)))
        return path

    return write


def run_dir_from(stdout: str) -> Path:
    line = next(line for line in stdout.splitlines() if line.startswith("finished: "))
    return Path(line.removeprefix("finished: ").strip())


def test_run_then_report(write_config):
    config = write_config(policy={"name": "scripted", "script": {"1": {"op": 1, "slot": 0}, "3": {"op": 2, "slot": 0}}})
    result = esper("run", str(config), "-s", "run.envs=1")
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_from(result.stdout)
    assert "run directory:" in result.stdout
    report = esper("report", str(run_dir))
    assert report.returncode == 0, report.stderr
    assert "Lifecycle outcomes" in report.stdout and "Seed family usage" in report.stdout
    assert "toy_conv" in report.stdout
    assert "internal ops: grow 0, shrink 0; subtarget ops: enable 0, disable 0" in report.stdout
    assert (run_dir / "report.png").stat().st_size > 10_000
    assert json.loads((run_dir / "summary.json").read_text())["run"]["envs"] == 1
    assert "perplexity" not in report.stdout  # an accuracy task: exp(loss) means nothing here


def test_report_shows_perplexity_for_loss_based_tasks(write_config):
    result = esper("run", str(write_config()), "-s", "run.envs=1")
    assert result.returncode == 0, result.stderr
    events = run_dir_from(result.stdout) / "events.jsonl"
    lines = events.read_text().splitlines()
    started = json.loads(lines[0])
    assert started["event"] == "RUN_STARTED" and started["data"]["score_basis"] == "metric"
    started["data"]["score_basis"] = "loss"  # as a language task's run records it
    events.write_text("\n".join([json.dumps(started), *lines[1:]]) + "\n")
    report = esper("report", str(events.parent))
    assert report.returncode == 0, report.stderr
    assert "perplexity" in report.stdout


def test_validate_accepts_a_good_config_and_explains_a_bad_one(write_config):
    good = esper("validate", str(write_config()))
    assert good.returncode == 0 and good.stdout.startswith("ok: ")
    bad = esper("validate", str(write_config("bad.toml", policy={"name": "scripted", "lr2": 1})))
    assert bad.returncode == 2
    assert "[policy] unknown key 'lr2'" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stdout == ""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[run\nname = 1", "malformed TOML"),
        ("[run]\nenvs = 'two'\n[task]\nname = 'toy'\n[policy]\nname = 'scripted'", "[run] envs: expected an integer"),
        ("[task]\nname = 'cifar100'\n[policy]\nname = 'scripted'", "[task] unknown task 'cifar100'"),
        ("[task]\nname = 'toy'\n[host]\nname = 'resnet'\n[policy]\nname = 'scripted'", "[host] unknown host 'resnet'"),
        ("[task]\nname = 'toy'\n[policy]\nname = 'scripted'\n[morphogenesis]\nseed_families = ['conv_mega']",
         "unknown seed family 'conv_mega'"),
        ("[task]\nname = 'toy'\n[policy]\nname = 'scripted'\n[morphogenesis]\nblueprints = ['toy_conv']",
         "[morphogenesis] 'blueprints' was renamed to 'seed_families' in 0.2.0"),
    ],
)
def test_bad_configs_exit_2_with_one_clear_message(tmp_path, content, expected):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    result = esper("run", str(path))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_a_plugin_that_raises_on_import_is_named_and_the_run_goes_on(write_config, tmp_path):
    (tmp_path / "exploding_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    modules = "tests.toy_plugin,exploding_plugin"
    env_path = str(tmp_path)
    os.environ["PYTHONPATH"] = env_path + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        listing = esper("plugins", "--json", modules=modules)
        strict = esper("plugins", "--strict", modules=modules)
        run = esper("run", str(write_config()), "-s", "run.envs=1", "-s", "run.episode_length=3", modules=modules)
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].removeprefix(env_path + os.pathsep)
    data = json.loads(listing.stdout)
    assert listing.returncode == 0  # listing is not gating; --strict is
    assert strict.returncode == 1 and "exploding_plugin" in strict.stdout
    assert [f["name"] for f in data["failures"]] == ["exploding_plugin"]
    assert "boom at import" in data["failures"][0]["error"]
    assert run.returncode == 0, run.stderr
    assert "plugin 'exploding_plugin'" in run.stdout and "boom at import" in run.stdout


def test_plugins_table_lists_what_each_plugin_registers():
    result = esper("plugins")
    assert result.returncode == 0
    assert esper("plugins", "--strict").returncode == 0  # nothing failed
    assert "tests.toy_plugin" in result.stdout and "esper_core (built-in)" in result.stdout
    assert "segment_boundary" in result.stdout


def test_plugins_prints_each_name_clash_under_the_table(tmp_path):
    (tmp_path / "clashplug.py").write_text(
        "from esper_core import hookimpl\n"
        "from esper_core.testing.toy_plugin import TOY_TASK_INFO, ToyHost, ToyHostConfig\n"
        "from esper_core.registry import HostFamily\n"
        "@hookimpl\n"
        "def esper_register_hosts(register):\n"
        "    register(HostFamily(name='toy', build=ToyHost, topology='image', config_class=ToyHostConfig))\n"
    )
    env = dict(os.environ, ESPER_PLUGIN_MODULES="tests.toy_plugin,clashplug", ESPER_DISABLE_PLUGIN_AUTOLOAD="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([str(ESPER), "plugins"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "host 'toy' is registered by both 'tests.toy_plugin' and 'clashplug'" in result.stdout
    assert "failed:" not in result.stdout  # a clash is not a failure


def test_abort_then_resume_from_the_command_line(write_config):
    config = write_config(faults={"abort": {"round": 0, "epoch": 2}})
    aborted = esper("run", str(config))
    assert aborted.returncode == 3
    assert "resume with: esper run --resume" in aborted.stderr
    run_dir = Path(aborted.stderr.split("--resume", 1)[1].split()[0])
    resumed = esper("run", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["status"] == "completed" and summary["rounds"]["0"]["final_metrics"]


def test_resume_with_a_corrupt_checkpoint_is_one_clear_error(write_config):
    aborted = esper("run", str(write_config(faults={"abort": {"round": 0, "epoch": 2}})))
    run_dir = Path(aborted.stderr.split("--resume", 1)[1].split()[0])
    events_before = (run_dir / "events.jsonl").read_text()
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"\x80\x02garbage")
    result = esper("run", "--resume", str(run_dir))
    assert result.returncode == 2
    assert "checkpoint" in result.stderr and "corrupt" in result.stderr and "Traceback" not in result.stderr
    assert (run_dir / "events.jsonl").read_text() == events_before  # nothing already written is lost


def test_a_run_without_any_sink_plugin_writes_its_record_and_says_so(tmp_path, toy_run_data):
    """No [sinks] section and no console sink registered (the toy plugin has none): events.jsonl only."""
    data = toy_run_data(run={"envs": 1, "episode_length": 2})
    del data["sinks"]
    path = tmp_path / "nosinks.toml"
    path.write_text(tomli_w.dumps(data))
    result = esper("run", str(path))
    assert result.returncode == 0, result.stderr
    assert "no [sinks] section and no console sink installed: events go to events.jsonl only" in result.stdout
    assert "(1 torch thread)" in result.stdout
    run_dir = run_dir_from(result.stdout)
    assert json.loads((run_dir / "summary.json").read_text())["run"]["status"] == "completed"
