"""End to end with the first-party plugins: the real ``esper run`` on tiny configs, and bad data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from esper_core.plugins import PluginManager

ESPER = Path(sys.executable).with_name("esper")
FIRST_PARTY = {"cnn", "vision", "heuristic", "sinks"}

pytestmark = pytest.mark.skipif(
    not FIRST_PARTY <= {p.name for p in PluginManager().plugins},
    reason="first-party plugins are not installed (run scripts/bootstrap)",
)


def esper(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    return subprocess.run([str(ESPER), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def tiny_config(tmp_path: Path, **changes) -> Path:
    data = {
        "run": {"name": "tiny", "envs": 2, "episode_length": 7, "checkpoint_every": 3, "torch_threads": 1,
                "output_dir": str(tmp_path / "runs")},
        "task": {"name": "shapes", "train_size": 256, "val_size": 128},
        "host": {"name": "cnn", "preset": "tiny"},
        "training": {"batch_size": 32},
        "morphogenesis": {"seed_families": ["conv_light", "attention"], "min_training_epochs": 1},
        "policy": {"name": "heuristic", "warmup_epochs": 1, "plateau_window": 1, "plateau_delta": 1.0,
                   "min_training_epochs": 1, "holding_patience": 1, "tempo": "fast",
                   "fossilize_threshold": -0.01},
        "sinks": {"console": {}, "jsonl": {}, "tensorboard": {}},
    }
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def test_esper_run_end_to_end_with_every_first_party_plugin(tmp_path):
    config = tiny_config(tmp_path, faults={"host_nan": [{"epoch": 4, "env": 1}]})
    result = esper("run", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    run_dir = Path(next(l for l in result.stdout.splitlines() if l.startswith("finished: ")).split(": ", 1)[1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["status"] == "completed"
    assert summary["lifecycle"]["germinated"] >= 2 and summary["lifecycle"]["blended"] >= 1
    assert summary["lifecycle"]["governor_rollbacks"] == 1
    assert (run_dir / "scalars.jsonl").stat().st_size > 0
    assert any((run_dir / "tensorboard").iterdir())
    environment = json.loads((run_dir / "environment.json").read_text())
    for dist in ("esper-core", "esper-cnn", "esper-vision", "esper-heuristic", "esper-sinks", "torch"):
        assert environment["versions"][dist], dist
    assert "rolled back" in result.stdout.lower() or "rollback" in result.stdout.lower()
    report = esper("report", str(run_dir), cwd=tmp_path)
    assert report.returncode == 0 and (run_dir / "report.png").exists()


def test_missing_cifar_folder_is_one_clear_error(tmp_path):
    config = tiny_config(tmp_path, task={"name": "cifar10", "root": str(tmp_path / "no-cifar-here")})
    data = (tmp_path / "tiny.toml").read_text().replace("train_size = 256\n", "").replace("val_size = 128\n", "")
    config.write_text(data)
    result = esper("run", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "no-cifar-here" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_quickstart_config_validates(tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = esper("validate", str(root / "examples" / "quickstart.toml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "heuristic" in result.stdout and "shapes" in result.stdout


@pytest.mark.slow
def test_the_quickstart_grows_blends_and_settles_seeds(tmp_path):
    """The README's main job, on a third of its data (the suite's time budget; the README's command runs
    it whole): at least one seed germinated, blended, and fossilized or pruned."""
    root = Path(__file__).resolve().parents[1]
    result = esper("run", str(root / "examples" / "quickstart.toml"), "-s", f"run.output_dir='{tmp_path}'",
                   "-s", "run.torch_threads=1",  # two test workers share the cores
                   "-s", "task.train_size=1024", "-s", "task.val_size=512", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = Path(next(l for l in result.stdout.splitlines() if l.startswith("finished: ")).split(": ", 1)[1])
    lifecycle = json.loads((run_dir / "summary.json").read_text())["lifecycle"]
    assert lifecycle["germinated"] >= 1 and lifecycle["blended"] >= 1
    assert lifecycle["fossilized"] + lifecycle["pruned"] >= 1
