"""Shared helpers for the benchmark scripts: interleaved timing, robust statistics and component builders."""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


# -- command line and environment ------------------------------------------------------------------


def base_parser(description: str, *, default_threads: int | None = 1) -> argparse.ArgumentParser:
    """A parser with the flags every benchmark shares: --quick, --threads, --seed, --json.

    ``--threads`` defaults to 1: both sides of every ratio run with the same thread count, and one
    thread keeps OpenMP from collapsing when other processes share the cores (see docs/benchmarks.md).
    ``--threads 0`` leaves torch's default (one thread per core, what ``esper run`` gets).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a small, fast version (smoke check, noisy numbers)")
    parser.add_argument(
        "--threads", type=int, default=default_threads,
        help=f"torch intra-op threads (default {default_threads}; 0 = torch's default, one per core)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data (default 0)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser


def setup_torch(threads: int | None, seed: int) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)


def environment() -> dict[str, Any]:
    """What the numbers depend on: torch build, threads, cores, Python, load, date."""
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux
        load = (float("nan"),) * 3
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "loadavg_1_5_15": [round(value, 2) for value in load],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def print_environment(title: str) -> dict[str, Any]:
    env = environment()
    print(f"== {title}")
    print(
        f"   torch {env['torch']}, {env['torch_threads']} intra-op thread(s), {env['cpu_count']} CPU core(s), "
        f"Python {env['python']} ({env['machine']}), {env['date']}, load average {env['loadavg_1_5_15']}"
    )
    if env["loadavg_1_5_15"][0] > (env["cpu_count"] or 1):
        print("   note: the 1-minute load average exceeds the core count; other processes compete for the CPU")
    return env


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results written to {path}")


# -- timing ----------------------------------------------------------------------------------------


def interleaved(
    cases: dict[str, Callable[[], Any]],
    *,
    warmup: int,
    repeats: int,
    inner: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of every case, measured side by side.

    Each case first runs ``warmup`` calls (cases alternating). Then every repetition times ``inner``
    consecutive calls of each case with ``time.perf_counter``; the order of the cases is reversed on
    every other repetition (A B C, C B A, ...) so that slow drifts in machine load hit every case alike.
    Returns, per case, one value per repetition (seconds per call).
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    for rep in range(repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            fn = cases[name]
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - start) / inner)
    return times


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median (order statistics, binomial ranks)."""
    import math

    ordered = sorted(values)
    n = len(ordered)
    if n < 6:
        return ordered[0], ordered[-1]
    # largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2: the interval is [x_(k), x_(n-k+1)]
    alpha = (1.0 - confidence) / 2
    cumulative, k = 0.0, 0
    while True:
        next_cumulative = cumulative + math.comb(n, k) / 2**n
        if next_cumulative > alpha:
            break
        cumulative, k = next_cumulative, k + 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def describe(values: Sequence[float]) -> dict[str, float]:
    """Median (with a 95% confidence interval), interquartile range and extremes of a sample."""
    low, high = median_ci(values)
    return {
        "median": statistics.median(values),
        "median_ci95_low": low,
        "median_ci95_high": high,
        "p25": quantile(values, 0.25),
        "p75": quantile(values, 0.75),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-repetition ratios of two cases timed in the same repetition."""
    return [a / b for a, b in zip(numerator, denominator)]


def fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def fmt_time_stats(values: Sequence[float]) -> str:
    d = describe(values)
    return f"median {fmt_seconds(d['median'])}  (IQR {fmt_seconds(d['p25'])} .. {fmt_seconds(d['p75'])}, min {fmt_seconds(d['min'])})"


def fmt_ratio_stats(ratios: Sequence[float]) -> str:
    d = describe(ratios)
    return (f"{d['median']:.3f}  (95% CI of the median {d['median_ci95_low']:.3f} .. {d['median_ci95_high']:.3f}; "
            f"IQR {d['p25']:.3f} .. {d['p75']:.3f}, range {d['min']:.3f} .. {d['max']:.3f}, n={d['n']})")


def verdict(value: float, target: float, *, at_most: bool) -> str:
    met = value <= target if at_most else value >= target
    sign = "<=" if at_most else ">="
    return f"target {sign} {target:g}: {'MET' if met else 'MISSED'}"


# -- components ------------------------------------------------------------------------------------


def plugin_manager():
    from esper_core.plugins import PluginManager

    return PluginManager()


def build_task(manager, name: str, options: dict[str, Any], seed: int, device: str = "cpu"):
    """A registered task built the way the engine builds it (options structured by its config class)."""
    from esper_core.config import structure_section
    from esper_core.tasks import TaskContext

    kind = manager.lookup("tasks", name)
    config, problems = structure_section(options, kind.config_class, "task")
    if problems:
        raise SystemExit("\n".join(problems))
    return kind.build(config, TaskContext(device=torch.device(device), seed=seed))


def build_host(manager, name: str, options: dict[str, Any], task_info, seed: int) -> torch.nn.Module:
    """A registered host with weights fixed by ``seed`` (the global RNG is left untouched)."""
    from esper_core.config import structure_section

    family = manager.lookup("hosts", name)
    config, problems = structure_section(options, family.config_class, "host")
    if problems:
        raise SystemExit("\n".join(problems))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return family.build(config, task_info)


def seed_builder(manager, topology: str, seed: int) -> Callable[[str, int], torch.nn.Module]:
    """Builds seed modules from the registered seed families with default options, deterministically."""
    counter = [0]

    def build(name: str, channels: int) -> torch.nn.Module:
        family = manager.registry.get("seed_families", name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + counter[0])
            counter[0] += 1
            return family.build(channels, topology, family.config_class())

    return build


def morphogenetic_model(host: torch.nn.Module, manager, *, seed_families: Sequence[str], seed: int, topology: str = "image"):
    """A MorphogeneticModel with every slot the host exposes enabled, all DORMANT."""
    from esper_core.kasmina import LifecycleSettings, MorphogeneticModel
    from esper_core.leyline import SlotConfig

    slot_config = SlotConfig.from_specs(host.injection_specs())
    return MorphogeneticModel(
        host,
        slot_config,
        topology=topology,
        seed_families=tuple(seed_families),
        build_seed=seed_builder(manager, topology, seed),
        settings=LifecycleSettings(embargo_epochs=1, min_training_epochs=1),
        max_seeds=slot_config.num_slots,
    )


def germinate(slot, seed_family: str, *, style=None, blend_epochs: int = 1) -> None:
    """Germinate seed family ``seed_family`` in a DORMANT slot through the public slot API (alpha target 1.0)."""
    from esper_core.leyline import AlphaCurve, BlendStyle

    result = slot.germinate(
        seed_id=f"bench-{slot.slot_id}", seed_family=seed_family, style=style or BlendStyle.ADD,
        blend_epochs=blend_epochs, alpha_target=1.0, alpha_curve=AlphaCurve.LINEAR, score_now=None,
    )
    if not result.success:
        raise RuntimeError(f"germinate in {slot.slot_id} failed: {result.reason}")


def grow_to_holding(slot, seed_family: str, *, style=None) -> None:
    """DORMANT -> GERMINATED -> TRAINING -> BLENDING -> HOLDING with the slot's own tick/advance."""
    from esper_core.leyline import SeedStage

    germinate(slot, seed_family, style=style, blend_epochs=1)
    for _ in range(slot.settings.min_training_epochs + 1):
        slot.tick()
        if slot.stage is SeedStage.TRAINING and slot.seed_age >= slot.settings.min_training_epochs:
            break
    result = slot.advance()
    if not result.success:
        raise RuntimeError(f"advance in {slot.slot_id} failed: {result.reason}")
    while slot.stage is SeedStage.BLENDING:
        slot.tick()
    if slot.stage is not SeedStage.HOLDING:
        raise RuntimeError(f"slot {slot.slot_id} reached {slot.stage.name}, not HOLDING")


def perturb_zero_parameters(module: torch.nn.Module, std: float = 0.05) -> None:
    """Give zero-initialised tensors (a newborn seed's last layer) small random values, so that a seed
    changes the output and an ablation measures something."""
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.normal_(0.0, std)


def ensure_repo_on_path() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
