"""Run the arms of experiments in parallel processes (the phase experiment drivers share this)."""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import time
from pathlib import Path


def run_arm(exp_dir: str, source: str, name: str) -> tuple[str, str, float, str | None]:
    """One arm in this (fresh) process: parse the experiment again and start the arm's run. A failed or
    unstable arm is a result (the comparison shows it as failed): its error comes back as text."""
    import attrs

    from esper_core.config import read_toml
    from esper_core.experiments import EXPERIMENT_FILE, parse_experiment, record_arm_run
    from esper_core.plugins import PluginManager
    from esper_core.tolaria.engine import start_run

    manager = PluginManager()
    data = read_toml(Path(exp_dir) / EXPERIMENT_FILE)
    config = parse_experiment(data, manager, source=source).arms[name]
    config = attrs.evolve(config, run=attrs.evolve(config.run, output_dir=exp_dir))
    started = time.perf_counter()
    error = None
    try:
        start_run(config, manager, on_run_dir=functools.partial(record_arm_run, Path(exp_dir), name))
    except Exception as exc:  # noqa: BLE001  (any failure of one arm is reported, the others go on)
        error = f"{type(exc).__name__}: {exc}"
    return exp_dir, name, time.perf_counter() - started, error


def run_arms(work: list[tuple[float, str, str, str]], jobs: int, exp_dirs: list[Path]) -> None:
    """Run ``work`` ((estimated cost, experiment dir, source file, arm name) per arm) on ``jobs``
    processes, longest first, printing each arm's wall time; then write each experiment's comparison."""
    from esper_core.experiments import compare

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [pool.submit(run_arm, exp_dir, source, name) for _cost, exp_dir, source, name in sorted(work, reverse=True)]
        for future in concurrent.futures.as_completed(futures):
            exp_dir, name, seconds, error = future.result()
            print(f"   {Path(exp_dir).name} / {name}: {seconds:.0f} s{'  ' + error if error else ''}", flush=True)
    for exp_dir in exp_dirs:
        compare(exp_dir)
        print(f"compared: {exp_dir / 'comparison.json'}", flush=True)
