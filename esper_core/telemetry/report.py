"""Run reports: read a run's event record and summarise lifecycle outcomes, blueprints and curves."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from esper_core.errors import DataError
from esper_core.runs import EVENTS_FILE

REPORT_PLOT = "report.png"


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event record in ``path``. A torn final line (a run killed mid-write) is skipped;
    a malformed line elsewhere raises ``DataError`` naming the line."""
    if not path.exists():
        raise DataError(f"no event record at '{path}' (is this an Esper run directory?)")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise DataError(f"'{path}' line {number} is not valid JSON: {exc.msg}") from None
        if not isinstance(record, dict) or "event" not in record or "data" not in record:
            raise DataError(f"'{path}' line {number} is not an Esper event record")
        records.append(record)
    return records


def summarize_events(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Lifecycle outcomes, blueprint usage, per-round results and run status from event records."""
    started = next((r["data"] for r in records if r["event"] == "RUN_STARTED"), None)
    finished = [r["data"] for r in records if r["event"] == "RUN_FINISHED"]
    lifecycle: Counter[str] = Counter()
    prune_reasons: Counter[str] = Counter()
    blueprints: dict[str, Counter[str]] = defaultdict(Counter)
    fossil_contributions: dict[str, list[float]] = defaultdict(list)
    rounds: dict[int, dict[str, Any]] = {}
    rollbacks = 0
    actions: Counter[str] = Counter()
    failed_actions = 0
    rewards: dict[int, float] = defaultdict(float)
    internal: Counter[str] = Counter()
    fossil_levels: list[int] = []
    last_losses: dict[tuple[int, int], float] = {}
    slot_germinations: Counter[str] = Counter()
    surface_of = dict(zip(started["slots"], started.get("slot_surfaces") or ())) if started else {}
    for record in records:
        event, data = record["event"], record["data"]
        if event == "SEED_GERMINATED":
            lifecycle["germinated"] += 1
            blueprints[data["blueprint_id"]]["germinated"] += 1
            slot_germinations[data["slot_id"]] += 1
        elif event == "SEED_INTERNAL_LEVEL_CHANGED":
            internal["grow" if data["to_level"] > data["from_level"] else "shrink"] += 1
        elif event == "SEED_FOSSILIZED":
            lifecycle["fossilized"] += 1
            if data["internal_level"]:
                fossil_levels.append(data["internal_level"])
            blueprints[data["blueprint_id"]]["fossilized"] += 1
            if data["contribution"] is not None:
                fossil_contributions[data["blueprint_id"]].append(data["contribution"])
        elif event == "SEED_PRUNED":
            lifecycle["pruned"] += 1
            prune_reasons[data["reason"]] += 1
            blueprints[data["blueprint_id"]]["pruned"] += 1
        elif event == "SEED_STAGE_CHANGED" and data["to_stage"] == "BLENDING" and data["from_stage"] == "TRAINING":
            lifecycle["blended"] += 1
            blueprints[data["blueprint_id"]]["blended"] += 1
        elif event == "GOVERNOR_ROLLBACK":
            rollbacks += 1
        elif event == "ACTION_TAKEN":
            actions[data["action"]["op"]] += 1
            failed_actions += 0 if data["success"] else 1
        elif event == "REWARD_COMPUTED":
            rewards[data["round"]] += data["reward"]
        elif event == "EPOCH_COMPLETED":
            last_losses[(data["round"], data["env_id"])] = data["val_loss"]
        elif event == "ROUND_COMPLETED":
            metrics = data["final_metrics"]
            params = data["final_params"]
            losses = [loss for (round_index, _), loss in sorted(last_losses.items()) if round_index == data["round"]]
            rounds[data["round"]] = {
                "final_metrics": metrics,
                "final_params": params,
                "mean_metric": sum(metrics) / len(metrics),
                "mean_params": sum(params) / len(params),
                "mean_val_loss": sum(losses) / len(losses) if losses else None,
            }
    for round_index, total in rewards.items():
        if round_index in rounds:
            rounds[round_index]["total_reward"] = total  # summed over the round's environments
            rounds[round_index]["mean_return"] = total / len(rounds[round_index]["final_metrics"])
    last = rounds[max(rounds)] if rounds else None
    return {
        "run": {
            "name": started["run_name"] if started else None,
            "task": started["task"] if started else None,
            "host": started["host"] if started else None,
            "policy": started["policy"] if started else None,
            "seed": started["seed"] if started else None,
            "envs": started["envs"] if started else None,
            "host_params": started["host_params"] if started else None,
            "score_basis": started.get("score_basis", "metric") if started else "metric",
            "status": finished[-1]["status"] if finished else "running or killed",
            "error": finished[-1]["error"] if finished else None,
            "wall_seconds": sum(f["wall_seconds"] for f in finished),
            "rounds_completed": len(rounds),
        },
        "lifecycle": {
            "germinated": lifecycle["germinated"],
            "blended": lifecycle["blended"],
            "fossilized": lifecycle["fossilized"],
            "pruned": lifecycle["pruned"],
            "prune_reasons": dict(prune_reasons),
            "governor_rollbacks": rollbacks,
        },
        "blueprints": {
            name: {
                "germinated": counts["germinated"],
                "blended": counts["blended"],
                "fossilized": counts["fossilized"],
                "pruned": counts["pruned"],
                "mean_fossil_contribution": (
                    sum(fossil_contributions[name]) / len(fossil_contributions[name])
                    if fossil_contributions[name]
                    else None
                ),
            }
            for name, counts in sorted(blueprints.items())
        },
        "actions": {"by_op": dict(actions), "failed": failed_actions},
        "internal": {
            "grow": internal["grow"],
            "shrink": internal["shrink"],
            "mean_level_at_fossilization": sum(fossil_levels) / len(fossil_levels) if fossil_levels else None,
        },
        "rounds": {str(k): v for k, v in sorted(rounds.items())},
        "slots": {
            slot: {"surface": surface_of.get(slot), "germinated": count} for slot, count in sorted(slot_germinations.items())
        },
        "final": None
        if last is None
        else {"mean_metric": last["mean_metric"], "mean_params": last["mean_params"], "mean_val_loss": last["mean_val_loss"]},
    }


def summarize_run(run_dir: Path) -> dict[str, Any]:
    return summarize_events(read_events(Path(run_dir) / EVENTS_FILE))


def epoch_curves(records: list[dict[str, Any]]) -> dict[int, dict[str, list[float]]]:
    """Per environment: global epoch index, validation metric and total parameters, in order."""
    started = next((r["data"] for r in records if r["event"] == "RUN_STARTED"), None)
    length = started["episode_length"] if started else 1
    curves: dict[int, dict[str, list[float]]] = defaultdict(lambda: {"step": [], "metric": [], "params": []})
    for record in records:
        if record["event"] != "EPOCH_COMPLETED":
            continue
        data = record["data"]
        curve = curves[data["env_id"]]
        curve["step"].append(data["round"] * length + data["epoch"])
        curve["metric"].append(data["val_metric"])
        curve["params"].append(data["host_params"] + data["seed_params"] + data["fossilized_params"])
    return dict(curves)


def lifecycle_markers(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """(env, global epoch) of every germination, fossilization and prune, for plot markers."""
    started = next((r["data"] for r in records if r["event"] == "RUN_STARTED"), None)
    length = started["episode_length"] if started else 1
    markers: dict[str, list[tuple[int, int]]] = {"germinated": [], "fossilized": [], "pruned": []}
    names = {"SEED_GERMINATED": "germinated", "SEED_FOSSILIZED": "fossilized", "SEED_PRUNED": "pruned"}
    for record in records:
        if record["event"] in names:
            data = record["data"]
            markers[names[record["event"]]].append((data["env_id"], data["round"] * length + data["epoch"]))
    return markers


def plot_report(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    """Write ``report.png``: validation metric and parameter count per environment over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = epoch_curves(records)
    markers = lifecycle_markers(records)
    figure, (metric_axis, params_axis) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    styles = {"germinated": ("^", "tab:green"), "fossilized": ("*", "tab:blue"), "pruned": ("x", "tab:red")}
    for env_id, curve in sorted(curves.items()):
        metric_axis.plot(curve["step"], curve["metric"], label=f"env {env_id}", linewidth=1.2)
        params_axis.plot(curve["step"], curve["params"], linewidth=1.2)
        lookup = dict(zip(curve["step"], curve["metric"]))
        for kind, points in markers.items():
            xs = [step for env, step in points if env == env_id and step in lookup]
            marker, color = styles[kind]
            metric_axis.scatter(xs, [lookup[x] for x in xs], marker=marker, color=color, s=40, zorder=3,
                                label=kind if env_id == min(curves) else None)
    metric_axis.set_ylabel("validation metric")
    if metric_axis.get_legend_handles_labels()[0]:
        metric_axis.legend(loc="lower right", fontsize=8)
    metric_axis.grid(alpha=0.3)
    params_axis.set_ylabel("parameters (host + seeds)")
    params_axis.set_xlabel("epoch (all rounds)")
    params_axis.grid(alpha=0.3)
    summary = summarize_events(records)
    figure.suptitle(f"{summary['run']['name']} — {summary['run']['task']} / {summary['run']['policy']}")
    figure.tight_layout()
    path = Path(run_dir) / REPORT_PLOT
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
