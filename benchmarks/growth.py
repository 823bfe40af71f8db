"""The growth benchmark: static, random, heuristic and PPO policies against the static frontier of a regime.

For one regime of ``benchmarks/growth_regimes.py`` (whose static frontier ``growth_frontier.py`` measured):

1. trains PPO under the ``frontier`` reward for ``--train-rounds`` rounds per training seed (skipped for a
   seed whose training run directory already holds a finished checkpoint, so an interrupted benchmark
   resumes where it stopped);
2. evaluates every policy frozen on the same unseen rounds (run seed ``1000 + seed``; every round a
   fresh host init and data order, paired across policies): ``static`` (never grows), ``random``,
   ``heuristic`` (same price), ``ppo`` (its checkpoint, argmax actions, no learning);
3. trains the static alternatives a user would pick instead on the same rounds: each grown network's
   final architecture trained from scratch (``[morphogenesis] implants``), and a uniformly wider host of
   equal parameter count;
4. evaluates PPO frozen on an unseen host width;
5. prints the table (``--json`` writes it) and draws the frontier and the "where, when, what" plots.

    python benchmarks/growth.py --regime digits              # docs/data/growth/growth-digits.json
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
from growth_regimes import REGIMES, Regime

#: Per regime: the price the benchmark uses, PPO's training length and options, and an unseen host width.
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {
        "price_per_kparam": 0.05,
        "train_rounds": 120,
        # attempt 1 (price 0.1, the PPO defaults) collapsed to WAIT: docs/data/growth/ppo-attempt1-digits.json
        "ppo_options": {"learning_rate": 3e-4, "entropy_coef": 0.05, "entropy_floor": 0.5},
        "unseen_host": {"name": "cnn", "channels": [10, 10], "pool": [False, False], "convs_per_block": 1},
        # where the seed families' architectures sit against the frontier when trained from scratch: the
        # most any growth with them could reach (growth starts them later and smaller)
        "seed_architectures": {
            "conv_small@r0c1": [{"slot": "r0c1", "seed_family": "conv_small"}],
            "conv_small@both": [{"slot": "r0c0", "seed_family": "conv_small"}, {"slot": "r0c1", "seed_family": "conv_small"}],
            "conv_light@r0c1": [{"slot": "r0c1", "seed_family": "conv_light"}],
            "conv_light@both": [{"slot": "r0c0", "seed_family": "conv_light"}, {"slot": "r0c1", "seed_family": "conv_light"}],
            "conv_heavy@both": [{"slot": "r0c0", "seed_family": "conv_heavy"}, {"slot": "r0c1", "seed_family": "conv_heavy"}],
        },
    },
    "shapes_deep": {
        "price_per_kparam": 0.02,
        "train_rounds": 40,
        "ppo_options": {"learning_rate": 3e-4},
        "unseen_host": {"name": "cnn", "channels": [10, 10, 14, 14, 20], "pool": [True, False, True, False, True],
                        "convs_per_block": 1},
    },
    "pydoc": {
        "price_per_kparam": 0.005,
        "train_rounds": 40,
        "ppo_options": {"learning_rate": 3e-4},
        "unseen_host": {"name": "transformer", "d_model": 40, "n_layer": 1, "n_head": 2, "slot_layout": "layers"},
    },
}
DATA_DIR = c.REPO / "docs" / "data" / "growth"
IMG_DIR = c.REPO / "docs" / "img"
MARGIN_TERMS = ("growth", "rent", "commit")
EVAL_SEED_OFFSET = 1000


# -- the frontier ----------------------------------------------------------------------------------


def score_of(regime: Regime, metric: float, val_loss: float) -> float:
    """The higher-is-better score the reward uses: accuracy, or -ln(loss) for a loss-scored regime."""
    return -math.log(val_loss) if regime.metric_name == "val_loss" else metric


def frontier_points(regime: Regime, frontier: dict[str, Any]) -> list[tuple[int, float, float, str]]:
    """(params, mean score, stderr, name) of every static host, by params."""
    points = []
    for name, row in frontier["frontier"].items():
        if regime.metric_name == "val_loss":
            scores = [-math.log(v) for v in row["values"]]
        else:
            scores = list(row["values"])
        mean = statistics.fmean(scores)
        se = statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else float("nan")
        points.append((row["params"], mean, se, name))
    return sorted(points)


def frontier_at(points: list[tuple[int, float, float, str]], params: float) -> float:
    """The static frontier's score at ``params``: the best static score at or below that size, linearly
    interpolated between Pareto points (a bigger net that scores lower is dominated), flat past the ends."""
    pareto: list[tuple[int, float]] = []
    for size, score, _se, _name in points:
        if not pareto or score > pareto[-1][1]:
            pareto.append((size, score))
    if params <= pareto[0][0]:
        return pareto[0][1]
    for (p0, s0), (p1, s1) in zip(pareto, pareto[1:]):
        if p0 <= params <= p1:
            return s0 + (s1 - s0) * (params - p0) / (p1 - p0)
    return pareto[-1][1]


def trade_off(points: list[tuple[int, float, float, str]], host_params: int, host_score: float,
              price_per_kparam: float) -> dict[str, Any]:
    """At ``price_per_kparam``: the best static network, its lead over the host (the reward's
    ``reference_gain``), and the frontier's steepest slope from the host (a price at or above it makes
    the host the best static network)."""
    utility = {name: score - price_per_kparam * size / 1000 for size, score, _se, name in points}
    best = max(utility, key=utility.get)
    host_utility = host_score - price_per_kparam * host_params / 1000
    slopes = [(score - host_score) / ((size - host_params) / 1000) for size, score, _se, _n in points if size > host_params]
    return {
        "price_per_kparam": price_per_kparam,
        "best_static": best,
        "reference_gain": max(utility[best] - host_utility, 0.0),
        "steepest_slope_from_host": max(slopes) if slopes else 0.0,
    }


# -- running ---------------------------------------------------------------------------------------


def run(data: dict[str, Any]) -> Path:
    from esper_core.config import parse_config
    from esper_core.plugins import PluginManager
    from esper_core.tolaria.engine import start_run

    manager = PluginManager()
    return start_run(parse_config(data, manager, source="benchmarks/growth.py"), manager)


def finished_checkpoint(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    return summary.exists() and json.loads(summary.read_text())["run"]["status"] == "completed"


def episodes(regime: Regime, run_dir: Path) -> list[dict[str, Any]]:
    """One record per (round, environment): final score and size, control score, return, margin, and what grew."""
    from esper_core.telemetry.report import read_events

    records = read_events(run_dir / "events.jsonl")
    out: dict[tuple[int, int], dict[str, Any]] = {}
    control: dict[int, float] = {}

    def entry_of(data: dict[str, Any]) -> dict[str, Any]:
        return out.setdefault((data["round"], data["env_id"]), {
            "round": data["round"], "env": data["env_id"], "return": 0.0, "margin": 0.0,
            "germinations": [], "fossils": [], "prunes": 0})

    for record in records:
        data, event = record["data"], record["event"]
        if event == "EPOCH_COMPLETED":
            entry = entry_of(data)
            entry["metric"], entry["val_loss"] = data["val_metric"], data["val_loss"]
            entry["params"] = data["host_params"] + data["seed_params"] + data["fossilized_params"]
            entry["fossil_params"] = data["fossilized_params"]
            entry["host_params"] = data["host_params"]
        elif event == "REWARD_COMPUTED":
            entry = entry_of(data)
            entry["return"] += data["reward"]
            entry["margin"] += sum(data["components"].get(term, 0.0) for term in MARGIN_TERMS)
        elif event == "SEED_GERMINATED":
            entry_of(data)["germinations"].append(
                {"epoch": data["epoch"], "slot": data["slot_id"], "blueprint": data["blueprint_id"]})
        elif event == "SEED_FOSSILIZED":
            entry_of(data)["fossils"].append(
                {"epoch": data["epoch"], "slot": data["slot_id"], "blueprint": data["blueprint_id"],
                 "level": data["internal_level"] or None, "params": data["seed_params"]})
        elif event == "SEED_PRUNED":
            entry_of(data)["prunes"] += 1
        elif event == "ROUND_COMPLETED":
            control[data["round"]] = score_of(regime, data["control_metric"], data["control_val_loss"])
    episodes_ = []
    for (round_index, _env), entry in sorted(out.items()):
        entry["score"] = score_of(regime, entry["metric"], entry["val_loss"])
        entry["control_score"] = control[round_index]
        episodes_.append(entry)
    return episodes_


def architecture(entry: dict[str, Any]) -> tuple[tuple[str, str, int | None], ...]:
    return tuple(sorted((f["slot"], f["blueprint"], f["level"]) for f in entry["fossils"]))


def wider_host(regime: Regime, target_params: int) -> tuple[dict[str, Any], int]:
    """The small host scaled uniformly in width to the parameter count closest to ``target_params``."""
    from esper_core.config import parse_config
    from esper_core.plugins import PluginManager
    from esper_core.tolaria.engine import prepare

    manager = PluginManager()
    best: tuple[int, dict[str, Any], int] | None = None
    small = regime.small_host
    for step in range(0, 81):
        factor = 1.0 + step * 0.025
        host = dict(small)
        if "channels" in small:
            host["channels"] = [max(1, round(width * factor)) for width in small["channels"]]
        else:
            heads = small.get("n_head", 1)
            host["d_model"] = max(heads, round(small["d_model"] * factor / heads) * heads)
        data = regime.config(host, policy={"name": "static"}, sinks={})
        params = prepare(parse_config(data, manager), manager).host_params
        gap = abs(params - target_params)
        if best is None or gap < best[0]:
            best = (gap, host, params)
        if params > target_params * 1.5:
            break
    assert best is not None
    return best[1], best[2]


def summarise(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": mean, "stderr": se}


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    differences = [x - y for x, y in zip(a, b)]
    out = summarise(differences)
    out["z"] = out["mean"] / out["stderr"] if out["stderr"] and out["stderr"] == out["stderr"] else float("nan")
    return out


# -- the benchmark ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=list(REGIMES), default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (eval: 1000 + seed)")
    parser.add_argument("--price", type=float, default=None, help="price per 1,000 parameters in use (default: the regime's)")
    parser.add_argument("--train-rounds", type=int, default=None, help="PPO training rounds per seed")
    parser.add_argument("--train-envs", type=int, default=4)
    parser.add_argument("--eval-rounds", type=int, default=10, help="evaluation rounds per seed and policy")
    parser.add_argument("--ppo", action="append", default=[], metavar="KEY=VALUE", help="extra [policy] option for PPO")
    parser.add_argument("--work-dir", type=Path, default=c.REPO / "runs" / "growth",
                        help="where training and evaluation runs go (a finished training run is reused)")
    parser.add_argument("--train-only", action="store_true", help="train PPO for --seeds and stop (run seeds in parallel)")
    parser.add_argument("--accept-stopped-training", action="store_true",
                        help="evaluate a stopped (killed) training run from its last end-of-round checkpoint")
    parser.add_argument("--auto-advance", action="store_true",
                        help="[morphogenesis] auto_advance = true in every run (one decision fewer per seed)")
    parser.add_argument("--export", action="store_true",
                        help="ship the best seed's policy: examples/growth/<regime>-ppo.pt and -ppo.toml")
    parser.add_argument("--skip-alternatives", action="store_true", help="no implant / wider-host runs")
    parser.add_argument("--json", type=Path, default=None, help="default docs/data/growth/growth-<regime>.json")
    parser.add_argument("--plot", type=Path, default=None, help="default docs/img/growth-<regime>.png")
    args = parser.parse_args(argv)
    command = "python benchmarks/growth.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    c.setup_torch(1, 0)
    regime = REGIMES[args.regime]
    settings = SETTINGS[regime.name]
    price = args.price if args.price is not None else settings["price_per_kparam"]
    train_rounds = args.train_rounds if args.train_rounds is not None else settings["train_rounds"]
    task_name = regime.base["task"]["name"]
    frontier = json.loads((DATA_DIR / f"frontier-{regime.name}.json").read_text())
    points = frontier_points(regime, frontier)
    host_params = next(size for size, _s, _se, name in points if regime.frontier[name] == regime.small_host)
    host_score = next(score for size, score, _se, name in points if regime.frontier[name] == regime.small_host)
    trade = trade_off(points, host_params, host_score, price)
    reward = {"name": "frontier", "price_per_kparam": price, "reference_gain": round(trade["reference_gain"], 6)}
    print(f"== growth benchmark, regime {regime.name}: {regime.description}")
    print(f"   price {price} per 1,000 parameters in use; best static network at that price: {trade['best_static']} "
          f"(reference_gain {trade['reference_gain']:.4f}); frontier's steepest slope from the host "
          f"{trade['steepest_slope_from_host']:.4f} per 1,000")
    work = args.work_dir / regime.name
    started = time.perf_counter()

    def run_dir_of(name: str, data: dict[str, Any]) -> Path:
        data["run"].update({"name": name, "output_dir": str(work), "checkpoint_every": 0, "torch_threads": 1})
        if args.auto_advance:
            data["morphogenesis"]["auto_advance"] = True
        data["sinks"] = {}
        return run(data)

    # 1. train PPO
    ppo_options: dict[str, Any] = {"name": "ppo", **settings["ppo_options"]}
    for item in args.ppo:
        key, _, value = item.partition("=")
        ppo_options[key] = json.loads(value)
    checkpoints: dict[int, Path] = {}
    training: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        existing = sorted(work.glob(f"{task_name}__ppo-train-{seed}__{seed}__*"))
        done = [d for d in existing if finished_checkpoint(d)]
        stopped = [d for d in existing if (d / "checkpoints" / "latest.pt").exists()]
        if done:
            run_dir = done[-1]
            print(f"   ppo seed {seed}: reusing {run_dir}")
        elif args.accept_stopped_training and stopped:
            run_dir = stopped[-1]
            print(f"   ppo seed {seed}: using the last checkpoint of the stopped training run {run_dir}")
        else:
            t0 = time.perf_counter()
            data = regime.config(run={"seed": seed, "rounds": train_rounds, "envs": args.train_envs},
                                 policy=dict(ppo_options), reward=dict(reward))
            run_dir = run_dir_of(f"ppo-train-{seed}", data)
            print(f"   ppo seed {seed}: trained {train_rounds} rounds in {time.perf_counter() - t0:.0f} s -> {run_dir}", flush=True)
        checkpoints[seed] = run_dir
        curve = collections.defaultdict(list)
        for entry in episodes(regime, run_dir):
            curve[entry["round"]].append(entry["return"])
        from esper_core.runs import load_checkpoint

        rounds_trained = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["round"]
        training[seed] = {"run_dir": str(run_dir.relative_to(c.REPO)) if run_dir.is_relative_to(c.REPO) else str(run_dir),
                          "rounds_trained": rounds_trained,
                          "mean_return_per_round": [statistics.fmean(curve[r]) for r in sorted(curve)][:rounds_trained]}

    if args.train_only:
        return 0

    # 2. evaluate every policy on the same unseen rounds
    policies = {
        "static": lambda seed: {"name": "static"},
        "random": lambda seed: {"name": "random"},
        "heuristic": lambda seed: {"name": "heuristic", "price_per_kparam": price},
        "ppo": lambda seed: {**ppo_options, "checkpoint": str(checkpoints[seed]), "learn": False, "deterministic": True},
    }
    results: dict[str, dict[int, list[dict[str, Any]]]] = {name: {} for name in policies}
    for seed in args.seeds:
        for name, policy in policies.items():
            data = regime.config(run={"seed": EVAL_SEED_OFFSET + seed, "rounds": args.eval_rounds, "envs": 1},
                                 policy=policy(seed), reward=dict(reward))
            results[name][seed] = episodes(regime, run_dir_of(f"eval-{name}-{seed}", data))
            mean = statistics.fmean(e["score"] for e in results[name][seed])
            print(f"   eval {name:<10} seed {seed}: score {mean:.4f}  return "
                  f"{statistics.fmean(e['return'] for e in results[name][seed]):+.3f}", flush=True)

    # 3. the static alternatives to each learned / heuristic network
    alternatives: dict[str, dict[int, list[dict[str, Any]]]] = {}
    if not args.skip_alternatives:
        for grown in ("ppo", "heuristic"):
            every = [architecture(e) for seed in args.seeds for e in results[grown][seed]]
            grown_ones = [arch for arch in every if arch]  # the most common architecture it actually grew
            common = collections.Counter(grown_ones).most_common(1)[0][0] if grown_ones else ()
            mean_params = round(statistics.fmean(e["params"] for seed in args.seeds for e in results[grown][seed]))
            if common:
                implants = [{"slot": slot, "seed_family": bp, **({"level": level} if level else {})}
                            for slot, bp, level in common]
                key = f"{grown}_architecture_from_scratch"
                alternatives[key] = {}
                for seed in args.seeds:
                    data = regime.config(run={"seed": EVAL_SEED_OFFSET + seed, "rounds": args.eval_rounds, "envs": 1},
                                         policy={"name": "static"}, reward=dict(reward),
                                         morphogenesis={"implants": implants})
                    alternatives[key][seed] = episodes(regime, run_dir_of(f"{grown}-arch-{seed}", data))
                print(f"   {key}: {implants}")
            host, params = wider_host(regime, mean_params)
            key = f"wider_host_like_{grown}"
            alternatives[key] = {}
            for seed in args.seeds:
                data = regime.config(host, run={"seed": EVAL_SEED_OFFSET + seed, "rounds": args.eval_rounds, "envs": 1},
                                     policy={"name": "static"}, reward=dict(reward))
                alternatives[key][seed] = episodes(regime, run_dir_of(f"wider-{grown}-{seed}", data))
            print(f"   {key}: {host} ({params:,} params vs {mean_params:,})")

    for label, implants in ({} if args.skip_alternatives else settings.get("seed_architectures", {})).items():
        key = f"from_scratch:{label}"
        alternatives[key] = {}
        for seed in args.seeds:
            data = regime.config(run={"seed": EVAL_SEED_OFFSET + seed, "rounds": args.eval_rounds, "envs": 1},
                                 policy={"name": "static"}, reward=dict(reward), morphogenesis={"implants": implants})
            alternatives[key][seed] = episodes(regime, run_dir_of(f"arch-{label.replace('@', '-at-')}-{seed}", data))
        print(f"   {key}: score {statistics.fmean(e['score'] for s_ in args.seeds for e in alternatives[key][s_]):.4f}", flush=True)

    # 4. PPO frozen on an unseen host width
    unseen: dict[int, list[dict[str, Any]]] = {}
    for seed in args.seeds:
        data = regime.config(settings["unseen_host"], run={"seed": EVAL_SEED_OFFSET + seed, "rounds": args.eval_rounds, "envs": 1},
                             policy=policies["ppo"](seed), reward=dict(reward))
        unseen[seed] = episodes(regime, run_dir_of(f"eval-ppo-unseen-width-{seed}", data))
    unseen_static = {}
    for seed in args.seeds:
        data = regime.config(settings["unseen_host"], run={"seed": EVAL_SEED_OFFSET + seed, "rounds": args.eval_rounds, "envs": 1},
                             policy={"name": "static"}, reward=dict(reward))
        unseen_static[seed] = episodes(regime, run_dir_of(f"eval-static-unseen-width-{seed}", data))

    # 5. the table
    def row(per_seed: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
        seeds = sorted(per_seed)
        by_seed = {
            key: [statistics.fmean(e[key] for e in per_seed[s]) for s in seeds]
            for key in ("score", "metric", "val_loss", "params", "return", "margin")
        }
        # paired: the frontier's gain from the host's size to the network's, minus the network's gain over
        # its own paired control (the same host init and data order), so host-init noise cancels
        by_seed["below_frontier"] = [
            statistics.fmean(frontier_at(points, e["params"]) - frontier_at(points, e["host_params"])
                             - (e["score"] - e["control_score"]) for e in per_seed[s])
            for s in seeds
        ]
        return {"per_seed": by_seed, **{key: summarise(values) for key, values in by_seed.items()},
                "episodes": {str(s): per_seed[s] for s in seeds}}

    table = {name: row(per_seed) for name, per_seed in results.items()}
    table.update({name: row(per_seed) for name, per_seed in alternatives.items()})
    table["ppo_unseen_width"] = row(unseen)
    table["static_unseen_width"] = row(unseen_static)
    comparisons = {
        "ppo_minus_heuristic_return": paired(table["ppo"]["per_seed"]["return"], table["heuristic"]["per_seed"]["return"]),
        "ppo_minus_heuristic_score": paired(table["ppo"]["per_seed"]["score"], table["heuristic"]["per_seed"]["score"]),
        "ppo_minus_static_score": paired(table["ppo"]["per_seed"]["score"], table["static"]["per_seed"]["score"]),
        "ppo_unseen_width_minus_static": paired(table["ppo_unseen_width"]["per_seed"]["score"],
                                                table["static_unseen_width"]["per_seed"]["score"]),
    }
    if "ppo_architecture_from_scratch" in table:
        comparisons["ppo_minus_its_architecture_from_scratch"] = paired(
            table["ppo"]["per_seed"]["score"], table["ppo_architecture_from_scratch"]["per_seed"]["score"])
    goals = goals_of(episode_rows({"table": table, "frontier": [
        {"name": name, "params": size, "score": score, "stderr": se} for size, score, se, name in points]}),
        host_params, regime.metric_name)
    unit = "accuracy" if regime.metric_name != "val_loss" else "-ln(val loss)"
    print(f"\n-- regime {regime.name}: mean ± stderr over training seeds {args.seeds}, {args.eval_rounds} unseen "
          f"rounds each; score = {unit}; below frontier = (frontier(params) - frontier(host)) - (score - paired control)")
    print(f"   {'policy':<36} {'score':>16} {'params':>8} {'return':>15} {'margin':>8} {'below frontier':>15}")
    for name, entry in table.items():
        print(f"   {name:<36} {entry['score']['mean']:>8.4f} ± {entry['score']['stderr']:.4f} "
              f"{entry['params']['mean']:>8.0f} {entry['return']['mean']:>+7.3f} ± {entry['return']['stderr']:.3f} "
              f"{entry['margin']['mean']:>+8.3f} {entry['below_frontier']['mean']:>+15.4f}")
    for name, comparison in comparisons.items():
        print(f"   {name}: {comparison['mean']:+.4f} ± {comparison['stderr']:.4f} (paired over seeds)")
    for name, met in goals.items():
        print(f"   goal {name}: {'MET' if met else 'NOT MET'}")
    payload = {
        "regime": regime.name,
        "description": regime.description,
        "metric_name": regime.metric_name,
        "score": unit,
        "price_per_kparam": price,
        "trade_off": trade,
        "reward": reward,
        "seeds": args.seeds,
        "train_rounds": train_rounds,
        "train_envs": args.train_envs,
        "eval_rounds": args.eval_rounds,
        "ppo_options": ppo_options,
        "auto_advance": args.auto_advance,
        "unseen_host": settings["unseen_host"],
        "frontier": [{"name": name, "params": size, "score": score, "stderr": se} for size, score, se, name in points],
        "frontier_host_params": host_params,
        "training": training,
        "table": table,
        "comparisons": comparisons,
        "goals": goals,
        "seconds": time.perf_counter() - started,
        "command": command,
        "environment": c.environment(),
    }
    best_seed = max(args.seeds, key=lambda seed: statistics.fmean(e["return"] for e in results["ppo"][seed]))
    shipped = c.REPO / "examples" / "growth" / f"{regime.name}-ppo.pt"
    if args.export:
        size = export_policy(checkpoints[best_seed], shipped)
        write_example(regime, reward, ppo_options, shipped, c.REPO / "examples" / "growth" / f"{regime.name}-ppo.toml", command)
        print(f"   shipped policy: seed {best_seed} (best evaluation return) -> {shipped} ({size:,} bytes)")
    payload["shipped_policy"] = {"seed": best_seed, "path": str(shipped.relative_to(c.REPO)), "exported": args.export}
    json_path = args.json or DATA_DIR / f"growth-{regime.name}.json"
    c.write_json(json_path, payload)
    plot(payload, args.plot or IMG_DIR / f"growth-{regime.name}.png")
    print(f"   wrote {json_path}\n")
    print(markdown_table(payload))
    return 0


# -- the shipped policy ----------------------------------------------------------------------------

POLICY_KEYS = ("format", "version", "architecture", "network", "normalizer")


def export_policy(run_dir: Path, path: Path) -> int:
    """Write the trained network and normaliser of ``run_dir`` (no optimiser, buffer or run state) as a
    small Esper checkpoint that ``[policy] checkpoint`` loads; returns its size in bytes."""
    from esper_core.runs import CHECKPOINT_DIR, LATEST_CHECKPOINT, load_checkpoint, save_checkpoint

    state = load_checkpoint(run_dir / CHECKPOINT_DIR / LATEST_CHECKPOINT)["policy"]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"policy": {key: state[key] for key in POLICY_KEYS}})
    return path.stat().st_size


def write_example(regime: Regime, reward: dict[str, Any], ppo_options: dict[str, Any], checkpoint: Path,
                  path: Path, command: str) -> None:
    """``examples/growth/<regime>-ppo.toml``: the shipped policy, frozen, growing the regime's small host."""
    import tomli_w

    data = regime.config(
        run={"name": f"growth-{regime.name}-ppo", "seed": 7, "rounds": 1, "envs": 1, "checkpoint_every": 0},
        policy={**ppo_options, "checkpoint": str(checkpoint.relative_to(c.REPO)), "learn": False, "deterministic": True},
        reward=dict(reward),
        sinks={"console": {"verbose": True}},
    )
    header = (
        f"# The shipped learned policy of growth regime `{regime.name}` (docs/growth.md), frozen, growing the\n"
        f"# regime's small host for one episode beside its paired static control (ROUND_COMPLETED.control_metric).\n"
        f"# Run from the repository root: esper run {path.relative_to(c.REPO)}\n"
        f"# Written by: {command}\n\n"
    )
    path.write_text(header + tomli_w.dumps(data), encoding="utf-8")


# -- the tables docs/growth.md shows (tests/test_growth_docs.py re-derives them from the JSON) ---------


LABELS = {
    "static": "static small host (never grows)",
    "random": "random policy",
    "heuristic": "heuristic (evidence-based seed families)",
    "ppo": "PPO, frozen",
    "ppo_architecture_from_scratch": "PPO's final architecture, from scratch",
    "heuristic_architecture_from_scratch": "heuristic's final architecture, from scratch",
    "wider_host_like_ppo": "wider host, PPO's size",
    "wider_host_like_heuristic": "wider host, heuristic's size",
    "ppo_unseen_width": "PPO, frozen, unseen host width",
    "static_unseen_width": "static, unseen host width",
}


def goals_of(rows: dict[str, dict[str, list[float]]], host_params: int, metric_name: str) -> dict[str, bool]:
    """The issue's goals from the per-seed rows. PPO must actually grow (its networks larger than the host
    on average) for the frontier goals to count: the static host itself lies on the frontier."""
    tolerance = 0.01 if metric_name != "val_loss" else 0.02
    grows = statistics.fmean(rows["ppo"]["params"]) > host_params
    ppo_below = statistics.fmean(rows["ppo"]["below_frontier"])
    heuristic_below = statistics.fmean(rows["heuristic"]["below_frontier"])
    difference = paired(rows["ppo"]["return"], rows["heuristic"]["return"])
    return {
        "ppo_grows": grows,
        "ppo_on_or_above_frontier": grows and ppo_below <= tolerance,
        "ppo_above_heuristic_vs_frontier": grows and ppo_below < heuristic_below,
        "ppo_return_beats_heuristic_by_2_se": difference["mean"] >= 2 * difference["stderr"] > 0,
    }


def label(name: str) -> str:
    if name.startswith("from_scratch:"):
        return f"`{name.removeprefix('from_scratch:')}` from scratch"
    return LABELS.get(name, name)


def episode_rows(payload: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Per policy, per training seed: the means over its evaluation episodes (recomputed from them)."""
    points = [(p["params"], p["score"], p["stderr"], p["name"]) for p in payload["frontier"]]
    rows = {}
    for name, entry in payload["table"].items():
        per_seed: dict[str, list[float]] = collections.defaultdict(list)
        for seed in sorted(entry["episodes"], key=int):
            eps = entry["episodes"][seed]
            for key in ("score", "params", "return", "margin"):
                per_seed[key].append(statistics.fmean(e[key] for e in eps))
            per_seed["below_frontier"].append(statistics.fmean(
                frontier_at(points, e["params"]) - frontier_at(points, e["host_params"]) - (e["score"] - e["control_score"])
                for e in eps))
        rows[name] = dict(per_seed)
    return rows


def markdown_table(payload: dict[str, Any]) -> str:
    """The results table of one regime, every number recomputed from the episodes in ``payload``."""
    rows = episode_rows(payload)
    lines = [
        f"| policy ({payload['score']}; mean ± s.e. over {len(payload['seeds'])} seeds) | score | parameters in use | "
        "return | frontier margin | below the frontier |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, values in rows.items():
        score, params = summarise(values["score"]), summarise(values["params"])
        ret, margin, below = summarise(values["return"]), summarise(values["margin"]), summarise(values["below_frontier"])
        lines.append(
            f"| {label(name)} | {score['mean']:.3f} ± {score['stderr']:.3f} | {params['mean']:,.0f} | "
            f"{ret['mean']:+.2f} ± {ret['stderr']:.2f} | {margin['mean']:+.2f} | {below['mean']:+.3f} ± {below['stderr']:.3f} |"
        )
    return "\n".join(lines)


def markdown_headroom(frontiers: list[dict[str, Any]]) -> str:
    """One row per regime: the small host, the grown-like static host, and the measured headroom."""
    lines = ["| regime | small host (params) | epochs | grown-like static host (× params) | headroom (mean ± s.e., 3 seeds) | target met |",
             "|---|---|---:|---|---|---|"]
    for frontier in frontiers:
        head = frontier["headroom"]
        small = frontier["frontier"][head["small"]]
        if frontier["higher_is_better"]:
            gain = f"{head['gain']:+.1f} accuracy points (± {100 * head['difference_stderr']:.1f})"
        else:
            gain = f"{head['gain']:.1f} % lower loss ({head['difference']:+.3f} ± {head['difference_stderr']:.3f} nats)"
        lines.append(f"| `{frontier['regime']}` | `{head['small']}` ({small['params']:,}) | {frontier['epochs']} | "
                     f"`{head['grown_like']}` ({head['params_ratio']:.2f}×) | {gain} | {'**met**' if head['met'] else '**not met**'} |")
    return "\n".join(lines)


def markdown_frontier(frontier: dict[str, Any]) -> str:
    """The static frontier table of one regime from its frontier JSON."""
    loss = frontier["metric_name"] == "val_loss"
    lines = [f"| static host | parameters | {'validation loss' if loss else 'accuracy'} (mean ± s.e., {len(frontier['seeds'])} seeds) |",
             "|---|---:|---:|"]
    for name, row in sorted(frontier["frontier"].items(), key=lambda item: item[1]["params"]):
        lines.append(f"| `{name}` | {row['params']:,} | {row['mean']:.4f} ± {row['stderr']:.4f} |")
    return "\n".join(lines)


def plot(payload: dict[str, Any], path: Path) -> None:
    """The frontier with every policy's final networks, the training curve, and where / when / what grew."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(17, 9))
    (front, learn, when), (where, what, margin) = axes
    sizes = [p["params"] for p in payload["frontier"]]
    scores = [p["score"] for p in payload["frontier"]]
    front.errorbar(sizes, scores, yerr=[p["stderr"] for p in payload["frontier"]], color="black", marker="s",
                   label="static frontier (from scratch)", zorder=3)
    for p in payload["frontier"]:
        front.annotate(p["name"], (p["params"], p["score"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    colours = {"static": "grey", "random": "tab:orange", "heuristic": "tab:blue", "ppo": "tab:red",
               "ppo_architecture_from_scratch": "tab:pink", "heuristic_architecture_from_scratch": "tab:cyan",
               "wider_host_like_ppo": "tab:purple", "wider_host_like_heuristic": "tab:olive"}
    for name in payload["table"]:
        if name.startswith("from_scratch:"):
            colours.setdefault(name, "tab:green")
    for name, colour in colours.items():
        if name not in payload["table"]:
            continue
        episodes_ = [e for eps in payload["table"][name]["episodes"].values() for e in eps]
        front.scatter([e["params"] for e in episodes_], [e["score"] for e in episodes_], s=14, alpha=0.45,
                      color=colour, marker="^" if name.startswith("from_scratch:") else "o",
                      label=None if name.startswith("from_scratch:") and name != next(
                          n for n in payload["table"] if n.startswith("from_scratch:")) else
                      ("seed architectures, from scratch" if name.startswith("from_scratch:") else name))
    front.set_xlabel("parameters in use")
    front.set_ylabel(payload["score"])
    front.set_title(f"{payload['regime']}: final networks vs the static frontier")
    front.legend(fontsize=7)
    for seed, record in payload["training"].items():
        learn.plot(record["mean_return_per_round"], alpha=0.8, label=f"seed {seed}")
    learn.axhline(0.0, color="grey", lw=0.8)
    learn.set_title("PPO training: mean episode return per round")
    learn.set_xlabel("round")
    learn.legend(fontsize=7)
    names = [n for n in ("random", "heuristic", "ppo") if n in payload["table"]]
    for index, name in enumerate(names):
        episodes_ = [e for eps in payload["table"][name]["episodes"].values() for e in eps]
        epochs = [g["epoch"] for e in episodes_ for g in e["germinations"]]
        fossil_epochs = [f["epoch"] for e in episodes_ for f in e["fossils"]]
        when.hist(epochs, bins=range(0, 21), alpha=0.4, color=colours[name], label=f"{name} germinate")
        when.hist(fossil_epochs, bins=range(0, 21), histtype="step", lw=2, color=colours[name], label=f"{name} fossilize")
        slots = collections.Counter(f["slot"] for e in episodes_ for f in e["fossils"])
        blueprints = collections.Counter(f["blueprint"] for e in episodes_ for f in e["fossils"])
        count = len(episodes_)
        for offset, (counter, axis) in enumerate(((slots, where), (blueprints, what))):
            keys = sorted({k for n in names for e in [x for eps in payload["table"][n]["episodes"].values() for x in eps]
                           for k in ((f["slot"] for f in e["fossils"]) if axis is where else (f["blueprint"] for f in e["fossils"]))})
            axis.bar([k + 0.27 * (index - 1) for k in range(len(keys))], [counter.get(k, 0) / count for k in keys], 0.27,
                     color=colours[name], label=name)
            axis.set_xticks(range(len(keys)), keys)
    when.set_title("when: epoch of germinations (bars) and fossilizations (lines)")
    when.set_xlabel("epoch")
    when.legend(fontsize=7)
    where.set_title("where: fossils per episode, by slot")
    where.legend(fontsize=7)
    what.set_title("what: fossils per episode, by seed family")
    what.legend(fontsize=7)
    rows = [n for n in payload["table"] if not n.endswith("unseen_width")]
    margin.barh(rows, [payload["table"][n]["below_frontier"]["mean"] for n in rows],
                xerr=[payload["table"][n]["below_frontier"]["stderr"] for n in rows], color="tab:grey")
    margin.axvline(0.0, color="black", lw=0.8)
    margin.set_title("below the frontier at its size (lower is better)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
