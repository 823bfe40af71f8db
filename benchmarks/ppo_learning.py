"""Does the `ppo` policy learn? Train it on `shapes` for a bounded CPU budget and compare its return and
accuracy per rent, round by round, with `random` and `heuristic` on the same seeds."""

from __future__ import annotations

import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import _common as c

ARMS = ("ppo", "random", "heuristic")
STOPPED = "stopped at --max-minutes"

#: Defaults of the full run: about 28 CPU-minutes, so about 14 minutes of wall time on 2 otherwise idle cores
#: (three arms in parallel, one torch thread each); longer when other processes share the cores.
FULL = {"rounds": 40, "envs": 4, "episode_length": 12, "train_size": 512, "val_size": 512}
#: --quick: a smoke run of about 2 minutes; its numbers say nothing about learning.
QUICK = {"rounds": 6, "envs": 4, "episode_length": 12, "train_size": 512, "val_size": 256}


# -- the experiment --------------------------------------------------------------------------------


def experiment_data(args) -> dict[str, Any]:
    """The whole experiment as the dict a TOML file would parse to (written as experiment.toml)."""
    ppo = {
        "policy.name": "ppo",
        "policy.learning_rate": args.learning_rate,
        "policy.gamma": args.gamma,
        "policy.gae_lambda": args.gae_lambda,
        "policy.update_epochs": args.update_epochs,
        "policy.num_minibatches": args.num_minibatches,
        "policy.entropy_coef": args.entropy_coef,
        "policy.target_kl": args.target_kl,
        "policy.rounds_per_update": args.rounds_per_update,
    }
    # The heuristic as in examples/quickstart.toml, with windows short enough that a seed germinated after
    # warm-up can be blended, judged and fossilized within the episode (2 + 3 + 2 epochs after germination).
    heuristic = {
        "policy.name": "heuristic",
        "policy.warmup_epochs": 2,
        "policy.plateau_window": 2,
        "policy.plateau_delta": 0.01,
        "policy.holding_patience": 2,
        "policy.prune_threshold": 0.02,
        "policy.tempo": "fast",
    }
    return {
        "experiment": {
            "name": "ppo-learning",
            "arms": [
                {"name": "ppo", "set": ppo},
                {"name": "random", "set": {"policy.name": "random"}},
                {"name": "heuristic", "set": heuristic},
            ],
        },
        "run": {
            "seed": args.seed,
            "rounds": args.rounds,
            "envs": args.envs,
            "episode_length": args.episode_length,
            "checkpoint_every": 0,
            "output_dir": str(args.output_dir),
            "torch_threads": args.threads,
        },
        "task": {"name": "shapes", "train_size": args.train_size, "val_size": args.val_size},
        "host": {"name": "cnn", "preset": "cifar_baseline", "channels": [8, 16, 32]},
        "training": {"batch_size": 64},
        "morphogenesis": {
            # cheapest first: the heuristic's preference order is the run's order
            "seed_families": ["norm", "attention", "conv_small", "conv_light"],
            "max_seeds": 2,
            "min_training_epochs": 2,
            "embargo_epochs": 2,
        },
        "policy": {"name": "random"},  # every arm sets its own
        "reward": {"name": "shaped", "gamma": args.gamma},
        "sinks": {},  # silent arms; this script prints the progress
    }


def _run_arm(config, exp_dir: str, name: str) -> str | None:
    """Child process: one arm's validated RunConfig, run by the engine's own start_run in the experiment
    directory and recorded as arm ``name`` in its experiment.json (as esper_core.experiments.run_experiment
    does). Returns an error message or None."""
    try:
        import functools

        import attrs

        from esper_core.experiments import record_arm_run
        from esper_core.plugins import PluginManager
        from esper_core.tolaria.engine import start_run

        start_run(
            attrs.evolve(config, run=attrs.evolve(config.run, output_dir=exp_dir)), PluginManager(),
            on_run_dir=functools.partial(record_arm_run, Path(exp_dir), name),
        )
        return None
    except BaseException as exc:  # reported by the parent
        return f"{type(exc).__name__}: {exc}"


def run_arms(
    data: dict[str, Any], jobs: int, rounds: int, max_minutes: float | None
) -> tuple[Path, dict[str, str | None], float]:
    """Validate every arm, make the experiment directory, run the arms in ``jobs`` processes, print progress.
    With ``max_minutes``, every arm still running at the deadline is stopped (its completed rounds count)."""
    from esper_core.experiments import arm_run_dirs, compare, create_experiment
    from esper_core.plugins import PluginManager

    # every arm checked before any runs; experiment.toml and experiment.json written
    experiment, exp_dir = create_experiment(data, PluginManager(), source="ppo_learning")
    arm_configs = experiment.arms
    print(f"   experiment directory: {exp_dir}  (`esper report` reads it)")

    started = time.perf_counter()
    pool = multiprocessing.get_context("spawn").Pool(processes=jobs)
    pending = {name: pool.apply_async(_run_arm, (config, str(exp_dir), name)) for name, config in arm_configs.items()}
    pool.close()
    printed = 0
    returns: dict[str, dict[int, float]] = {name: {} for name in arm_configs}
    offsets: dict[str, int] = defaultdict(int)
    while True:
        done = all(result.ready() for result in pending.values())
        for name, run_dir in arm_run_dirs(exp_dir).items():
            offsets[name] = _scan_returns(run_dir / "events.jsonl", offsets[name], returns.setdefault(name, {}))
        while all(printed in returns[name] for name in arm_configs):
            cells = "  ".join(f"{name} {returns[name][printed]:+7.3f}" for name in arm_configs)
            print(f"   round {printed + 1:>3}/{rounds}  return  {cells}   ({_clock(time.perf_counter() - started)})", flush=True)
            printed += 1
        if done:
            break
        if max_minutes is not None and time.perf_counter() - started > 60 * max_minutes:
            print(f"   --max-minutes {max_minutes:g} reached: stopping the arms; completed rounds are compared", flush=True)
            pool.terminate()
            break
        time.sleep(3.0)
    pool.join()
    errors = {name: (result.get() if result.ready() else STOPPED) for name, result in pending.items()}
    compare(exp_dir)  # comparison.json, as `esper run` writes for an experiment
    return exp_dir, errors, time.perf_counter() - started


def _scan_returns(path: Path, offset: int, into: dict[int, float]) -> int:
    """Read new complete ROUND_COMPLETED lines of a growing events.jsonl; returns the new offset."""
    import json

    if not path.exists():
        return offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].splitlines():
        if b'"ROUND_COMPLETED"' in line:
            data = json.loads(line)["data"]
            if data["mean_return"] is not None:
                into[data["round"]] = data["mean_return"]
    return offset + end


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


# -- reading the arms ------------------------------------------------------------------------------


def accuracy_per_rent(metric: float, added: float, host_params: int) -> float:
    """As esper_core.experiments.arm_metrics: the metric divided by 1 + log(1 + added / host params)."""
    return metric / (1.0 + math.log1p(added / host_params)) if host_params else metric


def read_arm(run_dir: Path) -> dict[str, Any]:
    """Per round: mean return, mean final metric, added params, accuracy per rent, actions and lifecycle
    counts, and (for a learner) the POLICY_UPDATED metrics."""
    from esper_core.telemetry.report import read_events

    records = read_events(run_dir / "events.jsonl")
    started = next(r["data"] for r in records if r["event"] == "RUN_STARTED")
    finished = [r["data"] for r in records if r["event"] == "RUN_FINISHED"]
    host_params, envs = started["host_params"], started["envs"]
    rounds: dict[int, dict[str, Any]] = {}
    ops: dict[int, Counter] = defaultdict(Counter)
    failed: Counter = Counter()
    lifecycle: dict[int, Counter] = defaultdict(Counter)
    policy: dict[int, dict[str, float]] = {}
    components: dict[int, Counter] = defaultdict(Counter)
    for record in records:
        event, data = record["event"], record["data"]
        if event == "REWARD_COMPUTED":
            components[data["round"]].update(data["components"])
        elif event == "ACTION_TAKEN":
            ops[data["round"]][data["action"]["op"]] += 1
            failed[data["round"]] += 0 if data["success"] else 1
        elif event in ("SEED_GERMINATED", "SEED_FOSSILIZED", "SEED_PRUNED"):
            lifecycle[data["round"]][event.removeprefix("SEED_").lower()] += 1
        elif event == "POLICY_UPDATED":
            policy[data["round"]] = data["metrics"]
        elif event == "ROUND_COMPLETED":
            metric = statistics.fmean(data["final_metrics"])
            added = statistics.fmean(data["final_params"]) - host_params
            rounds[data["round"]] = {
                "mean_return": data["mean_return"],
                "final_metric": metric,
                "added_params": added,
                "accuracy_per_rent": accuracy_per_rent(metric, added, host_params),
                "seconds": sum(data["seconds"].values()),
            }
    for index, row in rounds.items():
        decisions = sum(ops[index].values()) or 1
        row["op_rates"] = {op: count / decisions for op, count in sorted(ops[index].items())}
        row["invalid_rate"] = failed[index] / decisions
        row["per_env"] = {key: lifecycle[index][key] / envs for key in ("germinated", "fossilized", "pruned")}
        row["reward_components"] = {key: value / envs for key, value in sorted(components[index].items())}
        if index in policy:
            row["policy"] = policy[index]
    return {
        "run_dir": str(run_dir),
        "status": finished[-1]["status"] if finished else "running or killed",
        "host_params": host_params,
        "rounds": [rounds[i] for i in sorted(rounds)],
        "wall_seconds": sum(f["wall_seconds"] for f in finished),
    }


# -- statistics ------------------------------------------------------------------------------------


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (nan with fewer than 2 values)."""
    if not values:
        return float("nan"), float("nan")
    if len(values) < 2:
        return values[0], float("nan")
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def slope_se(ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys against 0..n-1 and its standard error."""
    n = len(ys)
    if n < 3:
        return float("nan"), float("nan")
    xs = list(range(n))
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return slope, math.sqrt(residual / (n - 2) / sxx)


def buckets(n_rounds: int, count: int) -> list[range]:
    """``count`` contiguous, nearly equal groups of round indices (earlier groups take the remainder)."""
    count = max(1, min(count, n_rounds))
    size, extra = divmod(n_rounds, count)
    out, start = [], 0
    for i in range(count):
        stop = start + size + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


def series(arm: dict[str, Any], key: str) -> list[float]:
    return [row[key] for row in arm["rounds"]]


def verdict(diff: float, se: float) -> str:
    if math.isnan(se):
        return "too few rounds to tell"
    if diff > 2 * se:
        return "yes (more than 2 standard errors)"
    if diff < -2 * se:
        return "no: significantly lower (more than 2 standard errors)"
    return "not distinguishable (within 2 standard errors)"


# -- printing --------------------------------------------------------------------------------------


def print_tables(arms: dict[str, dict[str, Any]], groups: list[range]) -> list[dict[str, Any]]:
    names = list(arms)
    rows = []
    print("\n-- mean over the rounds of each bucket (every round: the same hosts, data order and seeds for all arms)")
    head = "  ".join(f"{n:>9}" for n in names)
    print(f"   {'rounds':<9} | {'mean return':^31} | {'final accuracy':^31} | {'added params':^31} | {'accuracy per rent':^31}")
    print(f"   {'':<9} | {head} | {head} | {head} | {head}")
    for group in groups:
        row: dict[str, Any] = {"rounds": [group.start, group.stop - 1]}
        cells = []
        for key, fmt in (("mean_return", "{:+9.3f}"), ("final_metric", "{:9.4f}"), ("added_params", "{:9,.0f}"),
                         ("accuracy_per_rent", "{:9.4f}")):
            values = {n: statistics.fmean(series(arms[n], key)[group.start:group.stop]) for n in names}
            row[key] = values
            cells.append("  ".join(fmt.format(values[n]) for n in names))
        rows.append(row)
        print(f"   {group.start + 1:>3}-{group.stop:<5} | " + " | ".join(cells))

    print("\n-- behaviour per bucket: share of WAIT decisions; seeds germinated / fossilized / pruned per environment-round")
    print(f"   {'rounds':<9} | " + " | ".join(f"{n:^27}" for n in names))
    for row, group in zip(rows, groups):
        cells = []
        behaviour = {}
        for n in names:
            part = arms[n]["rounds"][group.start:group.stop]
            wait = statistics.fmean(r["op_rates"].get("WAIT", 0.0) for r in part)
            germ, foss, prune = (statistics.fmean(r["per_env"][k] for r in part) for k in ("germinated", "fossilized", "pruned"))
            invalid = statistics.fmean(r["invalid_rate"] for r in part)
            behaviour[n] = {"wait": wait, "germinated": germ, "fossilized": foss, "pruned": prune, "invalid": invalid}
            cells.append(f"W {wait:4.0%} g {germ:3.1f} f {foss:3.1f} p {prune:3.1f}")
        row["behaviour"] = behaviour
        print(f"   {group.start + 1:>3}-{group.stop:<5} | " + " | ".join(f"{cell:^27}" for cell in cells))

    print("\n-- reward components (shaped), summed over an episode and averaged over environments and the bucket's rounds")
    keys = sorted({key for arm in arms.values() for r in arm["rounds"] for key in r["reward_components"]})
    print(f"   {'rounds':<9} {'arm':<10} " + " ".join(f"{key:>13}" for key in keys))
    for row, group in zip(rows, groups):
        if group not in (groups[0], groups[-1]):
            continue
        row["reward_components"] = {}
        for n in names:
            part = arms[n]["rounds"][group.start:group.stop]
            values = {key: statistics.fmean(r["reward_components"].get(key, 0.0) for r in part) for key in keys}
            row["reward_components"][n] = values
            label = f"{group.start + 1}-{group.stop}"
            print(f"   {label:<9} {n:<10} " + " ".join(f"{values[key]:+13.3f}" for key in keys))

    if "ppo" in arms and any("policy" in r for r in arms["ppo"]["rounds"]):
        keys = [("approx_kl", "approx_kl", "{:10.4f}"), ("clip_fraction", "clipfrac", "{:9.3f}"),
                ("entropy", "entropy", "{:8.3f}"), ("entropy/op", "H(op)", "{:7.3f}"),
                ("entropy/slot", "H(slot)", "{:8.3f}"), ("entropy/blueprint", "H(bp)", "{:7.3f}"),
                ("ppo/explained_variance", "expl.var", "{:9.3f}"), ("ppo/kl_early_stop", "kl_stop", "{:8.2f}")]
        print("\n-- ppo updates per bucket (POLICY_UPDATED means; entropy = sum over heads, masked heads excluded)")
        print(f"   {'rounds':<9} " + " ".join(f"{label:>{len(fmt.format(0.0))}}" for _, label, fmt in keys))
        for row, group in zip(rows, groups):
            part = [r["policy"] for r in arms["ppo"]["rounds"][group.start:group.stop] if "policy" in r]
            values = {}
            for key, label, fmt in keys:
                present = [p[key] for p in part if key in p and p[key] == p[key]]
                values[label] = statistics.fmean(present) if present else float("nan")
            row["ppo_updates"] = values
            print(f"   {group.start + 1:>3}-{group.stop:<5} " + " ".join(fmt.format(values[label]) for _, label, fmt in keys))
    return rows


def summarise(arms: dict[str, dict[str, Any]], groups: list[range]) -> dict[str, Any]:
    first, last = groups[0], groups[-1]
    ppo_return = series(arms["ppo"], "mean_return")
    out: dict[str, Any] = {}
    print("\n-- summary (mean ± standard error over rounds; 'paired' = per-round difference on the same seeds)")

    a, sa = mean_se(ppo_return[first.start:first.stop])
    b, sb = mean_se(ppo_return[last.start:last.stop])
    diff, sdiff = b - a, math.sqrt(sa**2 + sb**2)
    out["ppo_return_first_bucket"], out["ppo_return_last_bucket"] = [a, sa], [b, sb]
    out["ppo_return_change"] = [diff, sdiff]
    print(f"   ppo return, rounds {first.start + 1}-{first.stop}: {a:+.3f} ± {sa:.3f};  rounds {last.start + 1}-{last.stop}: "
          f"{b:+.3f} ± {sb:.3f};  change {diff:+.3f} ± {sdiff:.3f}")
    rounds_differ = []
    for base in ("random", "heuristic"):
        gap = [p - q for p, q in zip(ppo_return, series(arms[base], "mean_return"))]
        g1, s1 = mean_se(gap[first.start:first.stop])
        g2, s2 = mean_se(gap[last.start:last.stop])
        slope, sslope = slope_se(gap)
        out[f"ppo_minus_{base}_return_first_bucket"] = [g1, s1]
        out[f"ppo_minus_{base}_return_last_bucket"] = [g2, s2]
        out[f"ppo_minus_{base}_return_slope_per_10_rounds"] = [10 * slope, 10 * sslope]
        rounds_differ.append((base, g1, s1, g2, s2, slope, sslope))
        print(f"   ppo − {base} return (paired): first bucket {g1:+.3f} ± {s1:.3f}, last bucket {g2:+.3f} ± {s2:.3f}; "
              f"trend {10 * slope:+.3f} ± {10 * sslope:.3f} per 10 rounds")
    print(f"   is ppo's return rising?  {verdict(diff, sdiff)}")
    out["verdicts"] = {"ppo_return_rises": verdict(diff, sdiff)}
    for key, label in (("mean_return", "return"), ("accuracy_per_rent", "accuracy per rent"), ("final_metric", "final accuracy")):
        ppo_values = series(arms["ppo"], key)
        for base in ("random", "heuristic"):
            gap = [p - q for p, q in zip(ppo_values, series(arms[base], key))][last.start:last.stop]
            g, s = mean_se(gap)
            out[f"last_bucket_ppo_minus_{base}_{key}"] = [g, s]
            out["verdicts"][f"ppo_beats_{base}_on_{key}_last_bucket"] = verdict(g, s)
            print(f"   last bucket, ppo − {base} {label}: {g:+.4f} ± {s:.4f}  -> ppo better? {verdict(g, s)}")
    return out


# -- the plot --------------------------------------------------------------------------------------


def plot(arms: dict[str, dict[str, Any]], path: Path, title: str, window: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ppo": "tab:blue", "random": "tab:grey", "heuristic": "tab:orange"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = ((axes[0], "mean_return", "mean return per round"),
              (axes[1], "accuracy_per_rent", "accuracy per rent (final)"),
              (axes[2], "wait_share", "share of WAIT decisions"))
    for axis, key, label in panels:
        for name, arm in arms.items():
            if key == "wait_share":
                ys = [row["op_rates"].get("WAIT", 0.0) for row in arm["rounds"]]
            else:
                ys = series(arm, key)
            xs = list(range(1, len(ys) + 1))
            axis.plot(xs, ys, color=colours.get(name), alpha=0.3, linewidth=0.8)
            smooth = [statistics.fmean(ys[max(0, i - window + 1): i + 1]) for i in range(len(ys))]
            axis.plot(xs, smooth, color=colours.get(name), linewidth=2.0, label=f"{name} ({window}-round mean)")
        axis.set_xlabel("round")
        axis.set_title(label, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    try:  # a palette PNG is a third of the size: friendlier to commit
        from PIL import Image

        with Image.open(path) as image:
            small = image.convert("RGB").quantize(colors=64)
        small.save(path, optimize=True)
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        pass
    return path


# -- main ------------------------------------------------------------------------------------------


def describe_settings(data: dict[str, Any], jobs: int | None) -> None:
    run, task, morph = data["run"], data["task"], data["morphogenesis"]
    arms = {arm["name"]: arm["set"] for arm in data["experiment"]["arms"]}
    channels = "/".join(str(width) for width in data["host"]["channels"])
    processes = f"; {jobs} process(es) x {run['torch_threads']} torch thread(s)" if jobs else ""
    print(f"   task shapes ({task['train_size']} train / {task['val_size']} val), host cnn channels {channels}, "
          f"seed families {', '.join(morph['seed_families'])} (max {morph['max_seeds']} seeds), reward {data['reward']['name']}; "
          f"{run['rounds']} rounds x {run['envs']} envs x {run['episode_length']} epochs per arm; seed {run['seed']}{processes}")
    for name, overrides in arms.items():
        options = ", ".join(f"{key.removeprefix('policy.')} {value}" for key, value in overrides.items() if key != "policy.name")
        print(f"   {name}: {options or 'defaults'}")



def main(argv: list[str] | None = None) -> int:
    parser = c.base_parser(__doc__, default_threads=1)
    parser.add_argument("--rounds", type=int, default=None, help=f"rounds per arm (default {FULL['rounds']}; --quick {QUICK['rounds']})")
    parser.add_argument("--envs", type=int, default=None, help=f"environments per round (default {FULL['envs']})")
    parser.add_argument("--episode-length", type=int, default=None, help=f"epochs per round (default {FULL['episode_length']})")
    parser.add_argument("--train-size", type=int, default=None, help=f"shapes training images (default {FULL['train_size']})")
    parser.add_argument("--val-size", type=int, default=None, help=f"shapes validation images (default {FULL['val_size']})")
    parser.add_argument("--output-dir", type=Path, default=None, help="where the experiment directory goes (default: a new temporary directory)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: ppo_learning.png in the experiment directory)")
    parser.add_argument("--jobs", type=int, default=3, help="arms run in parallel processes (default 3; 1 = one after another)")
    parser.add_argument("--report", type=Path, default=None, metavar="EXP_DIR",
                        help="train nothing: print the tables and draw the plot of an experiment directory this script wrote")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop every arm after this many minutes of wall time and compare the rounds all arms completed")
    parser.add_argument("--buckets", type=int, default=5, help="groups of rounds in the tables (default 5)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="ppo Adam step size (default 1e-3)")
    parser.add_argument("--entropy-coef", type=float, default=0.01, help="ppo entropy bonus (default 0.01)")
    parser.add_argument("--update-epochs", type=int, default=4, help="ppo passes per update (default 4)")
    parser.add_argument("--num-minibatches", type=int, default=2, help="ppo minibatches per pass (default 2)")
    parser.add_argument("--rounds-per-update", type=int, default=1, help="ppo rounds collected per update (default 1)")
    parser.add_argument("--gamma", type=float, default=0.99, help="ppo discount, also the shaped reward's gamma (default 0.99)")
    parser.add_argument("--gae-lambda", type=float, default=0.95, help="ppo GAE lambda (default 0.95)")
    parser.add_argument("--target-kl", type=float, default=0.05, help="ppo KL early stop (default 0.05)")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads == 0:
        parser.error("--threads 0 is not supported here: give each arm a fixed thread count (default 1)")
    if args.output_dir is None:
        args.output_dir = Path(tempfile.mkdtemp(prefix="esper-ppo-learning-"))
    args.output_dir = args.output_dir.resolve()

    c.setup_torch(args.threads, args.seed)
    env = c.print_environment("ppo_learning: ppo vs random vs heuristic on shapes, same seeds every round")
    errors: dict[str, str | None] = {}
    if args.report is not None:
        from esper_core.config import read_toml
        from esper_core.experiments import EXPERIMENT_FILE

        exp_dir = args.report.resolve()
        data = read_toml(exp_dir / EXPERIMENT_FILE)
        describe_settings(data, jobs=None)
        print(f"   experiment directory: {exp_dir} (read only, nothing is trained)")
        wall = None
    else:
        data = experiment_data(args)
        jobs = max(1, min(args.jobs, len(ARMS)))
        describe_settings(data, jobs=jobs)
        exp_dir, errors, wall = run_arms(data, jobs, args.rounds, args.max_minutes)
    failed = {name: error for name, error in errors.items() if error and error != STOPPED}
    for name, error in failed.items():
        print(f"   arm {name} FAILED: {error}")

    from esper_core.experiments import arm_run_dirs

    arms = {name: read_arm(run_dir) for name, run_dir in arm_run_dirs(exp_dir).items()}
    arms = {name: arms[name] for name in ARMS if name in arms}
    n_rounds = min((len(arm["rounds"]) for arm in arms.values()), default=0)
    if wall is None:  # --report: the arms' own wall times (they ran side by side)
        wall = max((arm["wall_seconds"] for arm in arms.values()), default=0.0)
    results: dict[str, Any] = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()},
                               "experiment": data, "experiment_dir": str(exp_dir), "wall_seconds": wall, "errors": errors}
    if len(arms) < len(ARMS) or n_rounds == 0:
        print("   not every arm completed a round; nothing to compare")
        c.write_json(args.json, results)
        return 1
    for arm in arms.values():
        arm["rounds"] = arm["rounds"][:n_rounds]
    groups = buckets(n_rounds, args.buckets)
    results["buckets"] = print_tables(arms, groups)
    results["summary"] = summarise(arms, groups)
    results["arms"] = arms
    plot_path = args.plot or exp_dir / "ppo_learning.png"
    run = data["run"]
    title = (f"shapes, cnn 8/16/32, {run['envs']} envs x {run['episode_length']} epochs, reward shaped, "
             f"seed {run['seed']}: ppo vs random vs heuristic")
    print(f"\n   wall time {_clock(wall)} for {n_rounds} rounds x {len(arms)} arms; plot: {plot(arms, plot_path, title, window=5)}")
    c.write_json(args.json, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
