"""Where a PPO round's time goes (host training, validation + counterfactuals, policy forward, PPO update) for 4 and 8 environments."""

from __future__ import annotations

import resource
import tempfile
import time
from typing import Any

from _common import base_parser, plugin_manager, print_environment, setup_torch, write_json

from esper_core.config import parse_config
from esper_core.telemetry.report import read_events
from esper_core.tolaria.engine import start_run


def run_config(envs: int, args, output_dir: str) -> dict[str, Any]:
    return {
        "run": {"name": f"share-{envs}", "seed": args.seed, "envs": envs, "rounds": args.rounds,
                "episode_length": args.episode_length, "checkpoint_every": 0, "output_dir": output_dir},
        "task": {"name": "shapes", "train_size": args.train_size, "val_size": 512},
        "host": {"name": "cnn", "preset": "cifar_baseline", "channels": [16, 32, 48]},
        "training": {"batch_size": 64},
        "morphogenesis": {"seed_families": ["conv_light", "attention", "depthwise", "conv_heavy"], "max_seeds": 2},
        "policy": {"name": "ppo", "preset": args.preset, "num_minibatches": 2},
        "reward": {"name": "shaped"},
        "sinks": {},
    }


def main() -> None:
    parser = base_parser(__doc__, default_threads=0)
    parser.add_argument("--envs", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--episode-length", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--preset", default="cpu", choices=["cpu", "baseline"])
    args = parser.parse_args()
    if args.quick:
        args.envs, args.rounds, args.episode_length, args.train_size = [4], 1, 5, 256
    setup_torch(args.threads, args.seed)
    environment = print_environment("policy share of a PPO round")
    manager = plugin_manager()
    results = []
    print(f"{'envs':>4}  {'train/ep':>9}  {'validate/ep':>11}  {'act/ep':>8}  {'update/round':>12}  "
          f"{'policy share':>12}  {'wall':>7}")
    for envs in args.envs:
        with tempfile.TemporaryDirectory() as scratch:
            config = parse_config(run_config(envs, args, scratch), manager)
            started = time.perf_counter()
            run_dir = start_run(config, manager)
            wall = time.perf_counter() - started
            rounds = [r["data"] for r in read_events(run_dir / "events.jsonl") if r["event"] == "ROUND_COMPLETED"]
        seconds = {key: sum(r["seconds"][key] for r in rounds) for key in rounds[0]["seconds"]}
        epochs = len(rounds) * args.episode_length
        total = sum(seconds.values())
        share = (seconds["policy_act"] + seconds["policy_update"]) / total
        row = {
            "envs": envs,
            "train_per_epoch": seconds["train"] / epochs,
            "validate_per_epoch": seconds["validate"] / epochs,
            "act_per_epoch": seconds["policy_act"] / epochs,
            "update_per_round": seconds["policy_update"] / len(rounds),
            "policy_share": share,
            "wall_seconds": wall,
        }
        results.append(row)
        print(f"{envs:>4}  {row['train_per_epoch']:>8.2f}s  {row['validate_per_epoch']:>10.2f}s  "
              f"{row['act_per_epoch'] * 1000:>6.1f}ms  {row['update_per_round']:>11.2f}s  "
              f"{share:>11.1%}  {wall:>6.1f}s")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"policy share target < 5% on the CPU preset; peak memory (this process, all runs): {peak_mib:.0f} MiB")
    write_json(args.json, {"environment": environment, "results": results, "peak_memory_mib": peak_mib,
                           "settings": {k: v for k, v in vars(args).items() if k != "json"}})


if __name__ == "__main__":
    main()
