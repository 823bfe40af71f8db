"""The static frontier of a growth regime: final validation score against parameters for a family of static hosts,
each trained from scratch for the regime's epochs on several seeds, never growing (benchmarks/growth_regimes.py)."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c
from growth_regimes import REGIMES, Regime

OUT_DIR = c.REPO / "docs" / "data" / "growth"


def static_policy(episode_length: int) -> tuple[dict[str, Any], str]:
    """The never-growing policy: `static` where registered, else a `heuristic` whose warm-up outlasts the episode."""
    from esper_core.plugins import PluginManager

    manager = PluginManager()
    try:
        manager.registry.get("policies", "static")
        return {"name": "static"}, "static"
    except Exception:  # not registered (yet)
        return {"name": "heuristic", "warmup_epochs": episode_length + 1}, "heuristic (warmup_epochs > episode_length)"


def run_config(regime: Regime, host: dict[str, Any], seed: int, threads: int, output_dir: Path,
               policy: dict[str, Any]) -> dict[str, Any]:
    return regime.config(
        host,
        run={"name": f"frontier-{regime.name}", "seed": seed, "rounds": 1, "envs": 1, "checkpoint_every": 0,
             "torch_threads": threads, "output_dir": str(output_dir)},
        policy=policy,
        sinks={},
    )


def run_one(data: dict[str, Any]) -> dict[str, Any]:
    """Run one static configuration in this process; its final metric, val loss, params and seconds."""
    from esper_core.config import parse_config
    from esper_core.plugins import PluginManager
    from esper_core.telemetry.report import summarize_run
    from esper_core.tolaria.engine import start_run

    manager = PluginManager()
    config = parse_config(data, manager, source="growth_frontier")
    started = time.perf_counter()
    run_dir = start_run(config, manager)
    seconds = time.perf_counter() - started
    summary = summarize_run(run_dir)
    if summary["run"]["status"] != "completed":
        raise RuntimeError(f"run {run_dir} ended {summary['run']['status']}: {summary['run']['error']}")
    final = summary["rounds"]["0"]
    return {
        "metric": final["final_metrics"][0],
        "val_loss": final["mean_val_loss"],
        "params": final["final_params"][0],
        "host_params": summary["run"]["host_params"],
        "seconds": seconds,
        "engine_wall_seconds": summary["run"]["wall_seconds"],
    }


def seed_family_sizes(regime: Regime) -> dict[str, dict[str, int]]:
    """Each allowed seed family's size at birth at each of the small host's slots (the engine's own rule)."""
    from esper_core.config import parse_config
    from esper_core.plugins import PluginManager
    from esper_core.tolaria.engine import prepare

    manager = PluginManager()
    data = regime.config(policy={"name": "random"}, sinks={})
    setup = prepare(parse_config(data, manager, source="growth_frontier"), manager)
    return {
        slot: dict(zip(setup.seed_families, sizes))
        for slot, sizes in zip(setup.slot_config.slot_ids, setup.seed_family_params)
    } | {"_host_params": setup.host_params}  # type: ignore[operator]


def mean_se(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0] if values else float("nan")), float("nan")
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def score(regime: Regime, result: dict[str, Any]) -> float:
    """The regime's score: the task metric, or the final validation loss for a loss-scored regime."""
    return result["val_loss"] if regime.metric_name == "val_loss" else result["metric"]


def run_regime(regime: Regime, seeds: list[int], threads: int, hosts: list[str] | None,
               json_path: Path | None, command: str) -> dict[str, Any]:
    policy, policy_note = static_policy(regime.base["run"]["episode_length"])
    names = hosts or list(regime.frontier)
    epochs = regime.base["run"]["episode_length"]
    print(f"== regime {regime.name}: {regime.description}")
    print(f"   {epochs} epochs, seeds {seeds}, policy {policy_note}, hosts {', '.join(names)}")
    sizes = seed_family_sizes(regime)
    print(f"   small host: {sizes.pop('_host_params'):,} params; seed family sizes at birth per slot: {sizes}")
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="growth-frontier-") as tmp:
        for name in names:
            host = regime.frontier[name]
            per_seed = []
            for seed in seeds:
                result = run_one(run_config(regime, host, seed, threads, Path(tmp), policy))
                result["seed"] = seed
                result["score"] = score(regime, result)
                per_seed.append(result)
                print(f"   {name:<12} seed {seed}: {regime.metric_name} {result['score']:.4f}  "
                      f"(metric {result['metric']:.4f}, val loss {result['val_loss']:.4f})  "
                      f"{result['params']:,} params  {result['seconds']:.1f} s", flush=True)
            values = [r["score"] for r in per_seed]
            mean, se = mean_se(values)
            rows[name] = {
                "host": host,
                "params": per_seed[0]["params"],
                "mean": mean,
                "stderr": se,
                "values": values,
                "seconds_mean": statistics.fmean(r["seconds"] for r in per_seed),
                "per_seed": per_seed,
            }
    small = next(n for n, h in regime.frontier.items() if h == regime.small_host)
    print(f"\n-- static frontier, {regime.name} ({regime.metric_name}, "
          f"{'higher' if regime.higher_is_better else 'lower'} is better; mean ± stderr over {len(seeds)} seeds)")
    print(f"   {'host':<12} {'params':>9} {'x small':>8} {regime.metric_name:>20} {'s/run':>7}")
    for name, row in rows.items():
        ratio = row["params"] / rows[small]["params"] if small in rows else float("nan")
        print(f"   {name:<12} {row['params']:>9,} {ratio:>8.2f} {row['mean']:>11.4f} ± {row['stderr']:.4f} "
              f"{row['seconds_mean']:>7.1f}")
    headroom = None
    if small in rows and regime.grown_like in rows:
        a, b = rows[small], rows[regime.grown_like]
        diff = b["mean"] - a["mean"]
        se = math.sqrt(a["stderr"] ** 2 + b["stderr"] ** 2)
        if regime.higher_is_better:
            gain, target = 100 * diff, "grown-like beats small by >= 10 accuracy points"
            met = gain >= 10
            gain_text = f"{gain:+.1f} accuracy points (± {100 * se:.1f})"
        else:
            gain = -100 * diff / a["mean"]
            target = "grown-like has >= 10 % lower validation loss than small"
            met = gain >= 10
            gain_text = f"{gain:.1f} % lower validation loss ({diff:+.4f} ± {se:.4f} nats)"
        headroom = {"small": small, "grown_like": regime.grown_like,
                    "params_ratio": b["params"] / a["params"], "difference": diff, "difference_stderr": se,
                    "gain": gain, "target": target, "met": met}
        print(f"   headroom: {regime.grown_like} ({b['params'] / a['params']:.2f}x params) vs {small}: {gain_text}; "
              f"target ({target}): {'MET' if met else 'NOT MET'}")
    payload = {
        "regime": regime.name,
        "description": regime.description,
        "metric_name": regime.metric_name,
        "higher_is_better": regime.higher_is_better,
        "epochs": epochs,
        "seeds": seeds,
        "policy": policy,
        "policy_note": policy_note,
        "base_config": regime.base,
        "small_host": regime.small_host,
        "blueprint_sizes_at_small_host": sizes,
        "frontier": rows,
        "headroom": headroom,
        "command": command,
        "environment": c.environment(),
    }
    path = json_path or OUT_DIR / f"frontier-{regime.name}.json"
    c.write_json(path, payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--regime", choices=[*REGIMES, "all"], default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--hosts", nargs="+", default=None, help="frontier entries to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--json", type=Path, default=None,
                        help="output path (one regime only; default docs/data/growth/frontier-<regime>.json)")
    args = parser.parse_args(argv)
    command = "python benchmarks/growth_frontier.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    c.setup_torch(args.threads, 0)
    c.print_environment("growth frontier")
    names = list(REGIMES) if args.regime == "all" else [args.regime]
    if args.json is not None and len(names) > 1:
        parser.error("--json takes one regime")
    for name in names:
        run_regime(REGIMES[name], args.seeds, args.threads, args.hosts, args.json, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
