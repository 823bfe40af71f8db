"""Roadmap Phase 3 experiment driver: run the examples/phase3 arms in parallel processes, then summarise them.

``run FILE... [--jobs N]`` creates each file's experiment directory (as ``esper run`` does), runs every
arm of every file in a pool of ``N`` processes (longest first), then writes each ``comparison.json`` (what
``esper report EXP_DIR`` writes). ``summarize EXP_DIR --name NAME`` writes
``docs/data/phase3/experiment-NAME.json``: ``esper report``'s arm metrics plus what this module reads from
the arms' event records (per episode: quality, parameters in use at every epoch, subtarget ops; per
seed: how it ended; per policy update: head entropies and collapse anomalies), the paired differences
between arms, and the verdicts of the Phase 3 exit criteria. ``markdown JSON`` prints the tables
docs/phase3.md shows (tests/test_phase3_docs.py checks the doc holds exactly these, recomputed from the JSON).

Arm names carry the meaning: ``static`` (the host, never grows: the paired reference), ``ladder_only``
(ladders and inventories present, subtarget ops off), ``subtargets`` (subtarget ops on), ``adalora``
(the AdaLoRA-style schedule: disable the least important group on a fixed schedule down to a budget).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from _arms import run_arms

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "docs" / "data" / "phase3"
IMG_DIR = REPO / "docs" / "img"
#: The arms an examples/phase3 experiment may hold, in table order.
ARM_ORDER = ("static", "ladder_only", "subtargets", "adalora")
ARM_COLORS = {"static": "tab:gray", "ladder_only": "tab:orange", "subtargets": "tab:green", "adalora": "tab:red"}
SUBTARGET_OPS = ("ENABLE_SUBTARGET", "DISABLE_SUBTARGET")
INTERNAL_OPS = ("GROW_INTERNAL", "SHRINK_INTERNAL")
#: "Without quality loss": the paired quality difference may be at most this far below zero
#: (accuracy: one point; loss-scored tasks: 0.01 nats of validation loss).
QUALITY_TOLERANCE = 0.01
#: "Subtarget ops used": at least this share of an arm's episodes made a successful subtarget op.
USED_EPISODE_SHARE = 0.25
#: A head's collapse is "persistent" when its entropy is below the collapse bound in this many consecutive
#: policy updates, or in the last update.
PERSISTENT_COLLAPSE_UPDATES = 3
#: The core's entropy-collapse bound as a fraction of ln(head size) (EsperThresholds.entropy_collapse_fraction).
COLLAPSE_FRACTION = 0.05


# -- running ---------------------------------------------------------------------------------------


def run(files: list[Path], jobs: int, work_dir: Path | None, arms: list[str] | None) -> list[Path]:
    from esper_core.config import read_toml
    from esper_core.experiments import create_experiment
    from esper_core.plugins import PluginManager

    manager = PluginManager()
    work: list[tuple[float, str, str, str]] = []
    exp_dirs = []
    for path in files:
        data = read_toml(path)
        if work_dir is not None:
            data.setdefault("run", {})["output_dir"] = str(work_dir)
        if arms:
            data["experiment"]["arms"] = [arm for arm in data["experiment"]["arms"] if arm["name"] in arms]
        _experiment, exp_dir = create_experiment(data, manager, source=str(path))
        exp_dirs.append(exp_dir)
        weight = data["run"]["rounds"] * data["run"]["envs"] * data["run"]["episode_length"]
        for arm in data["experiment"]["arms"]:
            cost = 0.5 if arm["name"] == "static" else (2.0 if data["policy"]["name"] == "ppo" else 1.0)
            work.append((weight * cost, str(exp_dir), str(path), arm["name"]))
        print(f"{path}: {exp_dir}", flush=True)
    run_arms(work, jobs, exp_dirs)
    return exp_dirs


# -- reading an arm's events -----------------------------------------------------------------------


def read_raw_events(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` for every line of an ``events.jsonl`` (the core's reader: a torn last line
    is skipped, a malformed line elsewhere is a ``DataError`` naming it)."""
    from esper_core.telemetry.report import read_events

    return [(record["event"], record["data"]) for record in read_events(path)]


def arm_record(run_dir: Path) -> dict[str, Any]:
    """What the Phase 3 tables need from one arm's event record, beyond ``arm_metrics``."""
    events = read_raw_events(run_dir / "events.jsonl")
    started = events[0][1]
    episodes: dict[tuple[int, int], dict[str, Any]] = {}
    seeds: dict[tuple[int, int, str], dict[str, Any]] = {}
    ops: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # op -> [decisions, succeeded]
    returns: dict[tuple[int, int], float] = defaultdict(float)
    subtarget_changes = {"enable": 0, "disable": 0}
    controls: dict[int, dict[str, Any]] = {}
    updates: list[dict[str, Any]] = []
    anomalies: list[dict[str, Any]] = []
    governor = {"rollbacks": 0, "gradient_anomalies": 0}

    def episode(data: dict[str, Any]) -> dict[str, Any]:
        key = (data["round"], data["env_id"])
        if key not in episodes:
            episodes[key] = {"round": key[0], "env": key[1], "params_series": [], "subtarget_ops": 0,
                             "internal_ops": 0}
        return episodes[key]

    for kind, data in events:
        if kind == "EPOCH_COMPLETED":
            if data["env_id"] >= started["envs"]:
                continue  # the frontier reward's paired static control
            ep = episode(data)
            params = data["host_params"] + data["seed_params"] + data["fossilized_params"]
            ep.update(metric=data["val_metric"], val_loss=data["val_loss"], params=params)
            ep["params_series"].append(params)
        elif kind == "ACTION_TAKEN":
            op = data["action"]["op"]
            ops[op][0] += 1
            ops[op][1] += bool(data["success"])
        elif kind == "ROUND_COMPLETED" and data.get("control_metric") is not None:
            controls[data["round"]] = {"metric": data["control_metric"], "val_loss": data.get("control_val_loss")}
        elif kind == "REWARD_COMPUTED":
            returns[(data["round"], data["env_id"])] += data["reward"]
        elif kind == "SEED_SUBTARGET_CHANGED":
            subtarget_changes["enable" if data["enabled"] else "disable"] += 1
            episode(data)["subtarget_ops"] += 1
            seed = seeds.get((data["env_id"], data["round"], data["seed_id"]))
            if seed is not None:
                seed["active_groups"] = data["subtarget_active_count"]
                seed["params"] = data["internal_effective_params"]
        elif kind == "SEED_INTERNAL_LEVEL_CHANGED":
            episode(data)["internal_ops"] += 1
            seed = seeds.get((data["env_id"], data["round"], data["seed_id"]))
            if seed is not None:
                seed["params"] = data["internal_effective_params"]
        elif kind == "SEED_GERMINATED":
            seeds[(data["env_id"], data["round"], data["seed_id"])] = {
                "round": data["round"], "env": data["env_id"], "slot": data["slot_id"],
                "family": data["blueprint_id"], "end": "live", "contribution": None,
                "params": data["seed_params"], "active_groups": data.get("subtarget_active_count"),
            }
        elif kind == "SEED_FOSSILIZED":
            seed = seeds[(data["env_id"], data["round"], data["seed_id"])]
            seed.update(end="fossilized", contribution=data["contribution"], params=data["seed_params"])
        elif kind == "SEED_PRUNED":
            seed = seeds[(data["env_id"], data["round"], data["seed_id"])]
            seed.update(end="rollback" if data["reason"] == "rollback" else "pruned",
                        contribution=data["contribution"])
        elif kind == "POLICY_UPDATED":
            metrics = data["metrics"]
            updates.append({
                "round": data["round"],
                "entropy": {k.removeprefix("entropy/"): v for k, v in sorted(metrics.items())
                            if k.startswith("entropy/") and _finite(v)},
            })
        elif kind == "POLICY_ANOMALY":
            anomalies.append({"round": data["round"], "kind": data["kind"], "head": data.get("head"),
                              "value": data["value"], "threshold": data["threshold"]})
        elif kind == "GOVERNOR_ROLLBACK":
            governor["rollbacks"] += 1
        elif kind == "GRADIENT_ANOMALY":
            governor["gradient_anomalies"] += 1
    for key, ep in episodes.items():
        ep["return"] = returns.get(key)
        ep["control"] = controls.get(key[0])  # the frontier reward's paired static control (None without one)
    return {
        "host_params": started["host_params"],
        "score_basis": started.get("score_basis", "metric"),
        "policy": started["policy"],
        "rounds": started["rounds"],
        "envs": started["envs"],
        "episode_length": started["episode_length"],
        "episodes": [episodes[key] for key in sorted(episodes)],
        "seeds": sorted(seeds.values(), key=lambda s: (s["round"], s["env"], s["slot"])),
        "ops": {op: {"decisions": n, "succeeded": ok} for op, (n, ok) in sorted(ops.items())},
        "subtarget_changes": subtarget_changes,
        "updates": updates,
        "anomalies": anomalies,
        "governor": governor,
        "head_sizes": {},
    }


def head_sizes(run_dir: Path) -> dict[str, int]:
    """The sizes of the policy's run-sized heads that the tables judge (``subtarget``: the run's K)."""
    from esper_core.plugins import PluginManager
    from esper_core.tolaria.engine import run_subtarget_count

    started = read_raw_events(run_dir / "events.jsonl")[0][1]
    registry = PluginManager().registry
    return {"subtarget": run_subtarget_count(registry.get("seed_families", n) for n in started["blueprints"]),
            "slot": len(started["slots"]), "blueprint": len(started["blueprints"])}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# -- derived values --------------------------------------------------------------------------------


def mean_se(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) < 2:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def rent_factor(params: float, host_params: float) -> float:
    """The comparison's rent factor: ``1 + ln(1 + added / host params)``."""
    return 1.0 + math.log1p(max(params - host_params, 0.0) / host_params)


def episode_values(arm: dict[str, Any]) -> dict[str, list[float]]:
    """Per episode: ``quality`` (higher is better: the metric, or minus the validation loss when the run
    scores by loss), ``metric``, ``val_loss``, ``params`` (in use at the end), ``quality_per_rent``
    (metric / rent factor; for loss-scored runs validation loss x rent factor, lower is better), and
    ``gain_over_control`` (quality over the round's paired static control, where the run trained one)."""
    host = arm["host_params"]
    by_loss = arm["score_basis"] == "loss"
    out: dict[str, list[float]] = {"quality": [], "metric": [], "val_loss": [], "params": [], "quality_per_rent": [],
                                   "gain_over_control": []}
    for e in arm["episodes"]:
        if e.get("control") is not None:
            control = e["control"]
            out["gain_over_control"].append(control["val_loss"] - e["val_loss"] if by_loss
                                            else e["metric"] - control["metric"])
        out["quality"].append(-e["val_loss"] if by_loss else e["metric"])
        out["metric"].append(e["metric"])
        out["val_loss"].append(e["val_loss"])
        out["params"].append(e["params"])
        factor = rent_factor(e["params"], host)
        out["quality_per_rent"].append(e["val_loss"] * factor if by_loss else e["metric"] / factor)
    return out


def params_over_time(arm: dict[str, Any]) -> list[float]:
    """Mean parameters in use (host + live + fossilized seeds) after each epoch of the episode, over episodes."""
    series = [e["params_series"] for e in arm["episodes"]]
    length = min((len(s) for s in series), default=0)
    return [statistics.fmean(s[i] for s in series) for i in range(length)]


def collapse_runs(arm: dict[str, Any], head: str) -> dict[str, Any]:
    """When ``head``'s entropy was below the core's entropy-collapse bound (``COLLAPSE_FRACTION x ln(size)``
    nats, the bound of the POLICY_ANOMALY ``entropy_collapse``; size: ``head_sizes``) over the updates that
    reported it: how many, the longest run of consecutive ones, whether the last one was, and how many
    entropy_collapse anomalies the run itself recorded for the head."""
    size = arm["head_sizes"].get(head)
    bound = COLLAPSE_FRACTION * math.log(size) if size and size > 1 else None
    series = [u["entropy"][head] for u in arm["updates"] if head in u["entropy"]]
    below = [bound is not None and value < bound for value in series]
    longest = current = 0
    for flag in below:
        current = current + 1 if flag else 0
        longest = max(longest, current)
    return {"bound": bound, "updates": sum(below), "longest_run": longest, "in_last_update": bool(below and below[-1]),
            "anomalies": sum(a["kind"] == "entropy_collapse" and a["head"] == head for a in arm["anomalies"])}


def derive(arm: dict[str, Any]) -> dict[str, Any]:
    """Everything the tables show for one arm, computed from its raw record (``episodes``, ``seeds``,
    ``ops``, ``subtarget_changes``, ``updates``, ``anomalies``, ``host_params``, ``score_basis``)."""
    values = episode_values(arm)
    episodes = arm["episodes"]
    decisions = sum(o["decisions"] for o in arm["ops"].values())
    failed = sum(o["decisions"] - o["succeeded"] for o in arm["ops"].values())
    sub_ok = sum(arm["ops"].get(op, {}).get("succeeded", 0) for op in SUBTARGET_OPS)
    sub_tried = sum(arm["ops"].get(op, {}).get("decisions", 0) for op in SUBTARGET_OPS)
    internal_ok = sum(arm["ops"].get(op, {}).get("succeeded", 0) for op in INTERNAL_OPS)
    fossilized = sum(s["end"] == "fossilized" for s in arm["seeds"])
    pruned = sum(s["end"] == "pruned" for s in arm["seeds"])
    heads = sorted({h for u in arm["updates"] for h in u["entropy"]})
    entropy = {}
    for head in heads:
        series = [u["entropy"][head] for u in arm["updates"] if head in u["entropy"]]
        entropy[head] = {"mean": statistics.fmean(series), "last": series[-1], "updates": len(series),
                         "collapse": collapse_runs(arm, head)}
    return {
        "mean": {key: mean_se(v)[0] for key, v in values.items()},
        "stderr": {key: mean_se(v)[1] for key, v in values.items()},
        "params_over_time": params_over_time(arm),
        "decisions": decisions,
        "invalid_action_rate": failed / decisions if decisions else None,
        "subtarget_ops": sub_ok,
        "subtarget_ops_tried": sub_tried,
        "subtarget_op_rate": sub_ok / decisions if decisions else None,
        "subtarget_ops_per_episode": sub_ok / len(episodes) if episodes else None,
        "episodes_with_subtarget_ops": sum(e["subtarget_ops"] > 0 for e in episodes),
        "internal_ops": internal_ok,
        "germinated": len(arm["seeds"]),
        "fossilized": fossilized,
        "pruned": pruned,
        "fossilize_prune_ratio": fossilized / pruned if pruned else None,
        "entropy": entropy,
    }


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, se = mean_se(diffs)
    return {"mean": mean, "stderr": se, "n": len(diffs)}


#: The paired differences the doc shows (when both arms exist).
PAIRS = (("subtargets", "ladder_only"), ("subtargets", "adalora"), ("adalora", "ladder_only"),
         ("ladder_only", "static"), ("subtargets", "static"), ("adalora", "static"))


def differences(arms: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Paired per-episode differences (same round and environment: same host init and data order)."""
    out = {}
    for a, b in PAIRS:
        if a not in arms or b not in arms:
            continue
        x, y = episode_values(arms[a]), episode_values(arms[b])
        if len(x["quality"]) != len(y["quality"]) or not x["quality"]:
            continue
        out[f"{a} - {b}"] = {key: paired(x[key], y[key]) for key in ("quality", "params", "quality_per_rent")}
    return out


def summarize(exp_dir: Path, name: str, command: str) -> dict[str, Any]:
    from esper_core.experiments import arm_run_dirs, compare

    comparison = compare(exp_dir)
    runs = arm_run_dirs(exp_dir)
    arms: dict[str, Any] = {}
    for arm in sorted(comparison["arms"], key=lambda a: ARM_ORDER.index(a) if a in ARM_ORDER else len(ARM_ORDER)):
        metrics = comparison["arms"][arm]
        record = arm_record(runs[arm])
        record["head_sizes"] = head_sizes(runs[arm])
        record["metrics"] = {k: metrics[k] for k in ("status", "fossilize_prune_ratio", "invalid_action_rate",
                                                     "mean_params_in_use", "final_head_entropy",
                                                     "mean_head_entropy", "mean_return") if k in metrics}
        record.update(derive(record))
        arms[arm] = record
    payload = {"experiment": comparison["experiment"], "name": name, "command": command, "arms": arms,
               "differences": differences(arms)}
    payload["criteria"] = criteria(payload)
    return payload


# -- exit criteria ---------------------------------------------------------------------------------


def criteria(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Phase 3 exit criteria for one experiment, each met or not met, from the summary alone.

    - ``subtarget_ops_used``: the ``subtargets`` arm made a successful ENABLE/DISABLE_SUBTARGET in at
      least ``USED_EPISODE_SHARE`` of its episodes.
    - ``params_decrease_without_quality_loss``: paired over episodes, ``subtargets`` ends with fewer
      parameters in use than ``ladder_only`` (mean difference below zero by more than two standard
      errors) and its quality is at most ``QUALITY_TOLERANCE`` below (mean paired difference).
    - ``beats_adalora_at_equal_quality``: paired over episodes, ``subtargets`` is within
      ``QUALITY_TOLERANCE`` of ``adalora``'s quality (or better) and ends with fewer parameters in use
      (mean difference below zero).
    - ``no_persistent_head_collapse`` (only where the policy learns, i.e. reports head entropies): in the
      ``subtargets`` arm the ``subtarget`` head's entropy was reported, and it was below the collapse bound
      (``COLLAPSE_FRACTION`` x ln K) in neither ``PERSISTENT_COLLAPSE_UPDATES`` consecutive updates nor the
      last update.
    """
    arms = payload["arms"]
    diffs = payload["differences"]
    out: dict[str, dict[str, Any]] = {}
    sub = arms.get("subtargets")
    if sub is None:
        return out
    episodes = len(sub["episodes"])
    share = sub["episodes_with_subtarget_ops"] / episodes if episodes else 0.0
    out["subtarget_ops_used"] = {"met": share >= USED_EPISODE_SHARE, "episode_share": share,
                                 "subtarget_ops": sub["subtarget_ops"]}
    d = diffs.get("subtargets - ladder_only")
    if d is not None:
        params, quality = d["params"], d["quality"]
        fewer = params["stderr"] is not None and params["mean"] < -2 * params["stderr"]
        out["params_decrease_without_quality_loss"] = {
            "met": bool(fewer and quality["mean"] >= -QUALITY_TOLERANCE), "params": params, "quality": quality}
    d = diffs.get("subtargets - adalora")
    if d is not None:
        params, quality = d["params"], d["quality"]
        out["beats_adalora_at_equal_quality"] = {
            "met": bool(quality["mean"] >= -QUALITY_TOLERANCE and params["mean"] < 0), "params": params,
            "quality": quality}
    if sub["entropy"]:
        head = sub["entropy"].get("subtarget")
        collapse = None if head is None else head["collapse"]
        ok = collapse is not None and collapse["longest_run"] < PERSISTENT_COLLAPSE_UPDATES \
            and not collapse["in_last_update"]
        out["no_persistent_head_collapse"] = {"met": ok, "subtarget": head}
    return out


# -- markdown --------------------------------------------------------------------------------------


def _f(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pm(mean: Any, se: Any, spec: str) -> str:
    if mean is None:
        return "-"
    return format(mean, spec) + ("" if se is None else " ± " + format(se, spec.replace("+", "")))


def _series(values: list[float]) -> str:
    """Up to five evenly spaced epochs of a per-epoch series: ``epoch:value`` (epochs counted from 1)."""
    if not values:
        return "-"
    picks = sorted({round(i * (len(values) - 1) / 4) for i in range(5)})
    return " ".join(f"{i + 1}:{values[i]:,.0f}" for i in picks)


def _entropy(arm: dict[str, Any], key: str) -> str:
    heads = [h for h in ("op", "slot", "blueprint", "subtarget") if h in arm["entropy"]]
    return " / ".join(f"{h} {arm['entropy'][h][key]:.2f}" for h in heads) if heads else "-"


def markdown_tables(payload: dict[str, Any]) -> str:
    """The tables docs/phase3.md shows for one experiment summary (a pure function of the JSON)."""
    arms = payload["arms"]
    names = list(arms)
    by_loss = next(iter(arms.values()))["score_basis"] == "loss"
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(arms[n]) for n in names) + " |")

    row("episodes (rounds × envs)", lambda a: str(len(a["episodes"])))
    if by_loss:
        row("final validation loss (mean ± s.e.)",
            lambda a: _pm(a["mean"]["val_loss"], a["stderr"]["val_loss"], ".4f"))
        row("next-token accuracy", lambda a: _pm(a["mean"]["metric"], a["stderr"]["metric"], ".4f"))
        row("val loss × rent (lower is better)", lambda a: _pm(a["mean"]["quality_per_rent"],
                                                               a["stderr"]["quality_per_rent"], ".4f"))
    else:
        row("final accuracy (mean ± s.e.)", lambda a: _pm(a["mean"]["metric"], a["stderr"]["metric"], ".4f"))
        row("accuracy per rent", lambda a: _pm(a["mean"]["quality_per_rent"], a["stderr"]["quality_per_rent"], ".4f"))
    if any(a["mean"]["gain_over_control"] is not None for a in arms.values()):
        row("gain over the paired static control", lambda a: _pm(a["mean"]["gain_over_control"],
                                                                a["stderr"]["gain_over_control"], "+.4f"))
    row("final params in use (host + seeds)", lambda a: _pm(a["mean"]["params"], a["stderr"]["params"], ",.0f"))
    row("params in use over the episode (epoch:params)", lambda a: _series(a["params_over_time"]))
    row("germinated / fossilized / pruned", lambda a: f"{a['germinated']} / {a['fossilized']} / {a['pruned']}")
    row("fossilize / prune ratio", lambda a: _f(a["fossilize_prune_ratio"], ".2f"))
    row("subtarget ops (succeeded / tried)", lambda a: f"{a['subtarget_ops']} / {a['subtarget_ops_tried']}")
    row("subtarget ops: enable / disable",
        lambda a: f"{a['subtarget_changes']['enable']} / {a['subtarget_changes']['disable']}")
    row("subtarget op rate (per decision)", lambda a: _f(a["subtarget_op_rate"], ".3f"))
    row("episodes with a subtarget op", lambda a: f"{a['episodes_with_subtarget_ops']} of {len(a['episodes'])}")
    row("ladder grows + shrinks", lambda a: str(a["internal_ops"]))
    row("invalid-action rate", lambda a: _f(a["invalid_action_rate"], ".3f"))
    if any(a["policy"] == "ppo" for a in arms.values()):  # the reward only means something where it is learned
        row("mean return (frontier reward)", lambda a: _f(a["metrics"].get("mean_return"), ".3f"))
    if any(a["entropy"] for a in arms.values()):
        row("head entropy, mean over updates (nats)", lambda a: _entropy(a, "mean"))
        row("head entropy, last update (nats)", lambda a: _entropy(a, "last"))
        row("subtarget head below the collapse bound (updates; longest run; anomalies)",
            lambda a: (f"{a['entropy']['subtarget']['collapse']['updates']} of {a['entropy']['subtarget']['updates']}; "
                       f"{a['entropy']['subtarget']['collapse']['longest_run']}; "
                       f"{a['entropy']['subtarget']['collapse']['anomalies']}") if "subtarget" in a["entropy"] else "-")
    lines.append("")
    quality = "−val loss" if by_loss else "accuracy"
    lines.append(f"| paired difference (same round and environment) | quality ({quality}) | params in use | "
                 f"{'val loss × rent' if by_loss else 'accuracy per rent'} |")
    lines.append("|---|---|---|---|")
    for label, diff in payload["differences"].items():
        cells = [_pm(diff[k]["mean"], diff[k]["stderr"], f)
                 for k, f in (("quality", "+.4f"), ("params", "+,.0f"), ("quality_per_rent", "+.4f"))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_criteria(payload: dict[str, Any]) -> str:
    """One line per exit criterion: met or not met."""
    return "\n".join(f"- `{name}`: **{'met' if c['met'] else 'not met'}**" for name, c in payload["criteria"].items())


#: The exit criteria in the order the summary table lists them.
CRITERIA = ("subtarget_ops_used", "params_decrease_without_quality_loss", "beats_adalora_at_equal_quality",
            "no_persistent_head_collapse")


def markdown_summary_rows(payloads: list[dict[str, Any]]) -> str:
    """One table row per exit criterion, one cell per experiment: met, not met, or - (not judged there)."""
    def cell(payload: dict[str, Any], name: str) -> str:
        verdict = payload["criteria"].get(name)
        return "-" if verdict is None else ("**met**" if verdict["met"] else "not met")

    return "\n".join(f"| `{name}` | " + " | ".join(cell(p, name) for p in payloads) + " |" for name in CRITERIA)


def plot_params(payloads: list[dict[str, Any]], path: Path) -> Path:
    """Mean parameters in use over the episode, one panel per experiment, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(payloads))
    rows = -(-len(payloads) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(payloads):]:
        axis.set_visible(False)
    for axis, payload in zip(axes.flat, payloads):
        for arm, record in payload["arms"].items():
            series = record["params_over_time"]
            axis.plot(range(1, len(series) + 1), series, label=arm, color=ARM_COLORS.get(arm))
        axis.set_title(payload["name"])
        axis.set_xlabel("epoch of the episode")
        axis.set_ylabel("params in use (mean over episodes)")
        axis.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the arms of one or more experiment files in parallel processes")
    p_run.add_argument("files", nargs="+", type=Path)
    p_run.add_argument("--jobs", type=int, default=2)
    p_run.add_argument("--work-dir", type=Path, default=None,
                       help="output directory (default: the files' [run] output_dir)")
    p_run.add_argument("--arms", nargs="+", default=None, help="run only these arms")
    p_sum = sub.add_parser("summarize", help="write docs/data/phase3/experiment-NAME.json from an experiment directory")
    p_sum.add_argument("exp_dir", type=Path)
    p_sum.add_argument("--name", required=True)
    p_sum.add_argument("--json", type=Path, default=None)
    p_plot = sub.add_parser("plot", help="plot params in use over the episode for summary JSONs")
    p_plot.add_argument("json", nargs="+", type=Path)
    p_plot.add_argument("--out", type=Path, default=IMG_DIR / "phase3-params.png")
    p_md = sub.add_parser("markdown", help="print the tables of a summary JSON")
    p_md.add_argument("json", type=Path)
    args = parser.parse_args(argv)
    command = "python benchmarks/phase3.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.command == "run":
        run(args.files, args.jobs, args.work_dir, args.arms)
    elif args.command == "summarize":
        payload = summarize(args.exp_dir, args.name, command)
        path = args.json or DATA_DIR / f"experiment-{args.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        print(f"written: {path}")
        print(markdown_tables(payload))
        print(markdown_criteria(payload))
    elif args.command == "plot":
        payloads = [json.loads(p.read_text(encoding="utf-8")) for p in args.json]
        print(f"written: {plot_params(payloads, args.out)}")
    else:
        payload = json.loads(args.json.read_text(encoding="utf-8"))
        print(markdown_tables(payload))
        print(markdown_criteria(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
