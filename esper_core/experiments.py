"""Paired experiments: ``[experiment]`` arms that differ in named settings, run on the same seeds, compared."""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from esper_core.config import RunConfig, parse_config, read_toml, structure_section
from esper_core.errors import ConfigError, TrainingUnstable
from esper_core.plugins import PluginManager
from esper_core.runs import SUMMARY_FILE, create_run_dir, write_json
from esper_core.telemetry.report import read_events, summarize_events

EXPERIMENT_FILE = "experiment.toml"
COMPARISON_FILE = "comparison.json"


@attrs.frozen
class ArmSection:
    """One arm: a name and dotted-key overrides of the base config (``{"reward.name" = "shaped"}``)."""

    name: str
    set: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class ExperimentSection:
    """``[experiment]``: a name, two or more arms, and the blueprints the report counts as heavy."""

    name: str
    arms: tuple[ArmSection, ...] = attrs.field(validator=attrs.validators.min_len(2))
    heavy_blueprints: tuple[str, ...] = ()


@attrs.frozen
class Experiment:
    name: str
    arms: dict[str, RunConfig]
    base: dict[str, Any]


def _apply(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = [part for part in dotted.split(".") if part]
    if len(parts) < 2:
        raise ValueError(f"'{dotted}' needs a section and a key, e.g. reward.name")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"'{part}' in '{dotted}' is not a table")
        node = child
    node[parts[-1]] = value


def parse_experiment(data: dict[str, Any], manager: PluginManager, source: str | None = None) -> Experiment:
    """Validate ``[experiment]`` and every arm's full config; report all problems at once."""
    section, problems = structure_section(data["experiment"], ExperimentSection, "experiment")
    if section is None:
        raise ConfigError(problems, source=source)
    base = {key: value for key, value in data.items() if key != "experiment"}
    names = [arm.name for arm in section.arms]
    if len(set(names)) != len(names):
        problems.append(f"[experiment] arm names must be unique, got {names}")
    arms: dict[str, RunConfig] = {}
    for arm in section.arms:
        arm_data = copy.deepcopy(base)
        try:
            for key, value in arm.set.items():
                _apply(arm_data, key, value)
        except ValueError as exc:
            problems.append(f"[experiment] arm '{arm.name}': {exc}")
            continue
        arm_data.setdefault("run", {})["name"] = arm.name
        try:
            arms[arm.name] = parse_config(arm_data, manager, source=source)
        except ConfigError as exc:
            problems.extend(f"[experiment] arm '{arm.name}': {problem}" for problem in exc.problems)
    if problems:
        raise ConfigError(problems, source=source)
    return Experiment(name=section.name, arms=arms, base=base)


def experiment_dir(experiment: Experiment) -> Path:
    first = next(iter(experiment.arms.values()))
    return create_run_dir(
        Path(first.run.output_dir), "experiment", experiment.name, first.run.seed, now=_dt.datetime.now(),
        checkpoints=False,
    )


# -- comparison ------------------------------------------------------------------------------------


def arm_metrics(run_dir: Path, heavy_blueprints: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the comparison table shows for one arm, from its event record.

    ``heavy_share`` is the fraction of germinations that chose one of ``heavy_blueprints``;
    ``internal_op_rate`` the fraction of decisions that changed a seed's internal level.
    ``accuracy_per_rent`` divides the final metric by ``1 + ln(1 + added / host params)`` (higher is
    better); ``val_loss_times_rent`` multiplies the final validation loss by the same factor (lower is
    better: the loss-based ROI for language tasks). ``surface_usage`` counts germinations per injection
    surface.
    """
    records = read_events(run_dir / "events.jsonl")
    summary = summarize_events(records)
    host_params = summary["run"]["host_params"] or 0
    final = summary["final"] or {}
    mean_metric = final.get("mean_metric")
    added = (final.get("mean_params") or host_params) - host_params
    rent = math.log1p(added / host_params) if host_params else 0.0
    entropies: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record["event"] == "POLICY_UPDATED":
            for key, value in record["data"]["metrics"].items():
                if key.startswith("losses/entropy/"):
                    entropies[key.removeprefix("losses/entropy/")].append(value)
    actions = summary["actions"]
    decisions = sum(actions["by_op"].values())
    lifecycle = summary["lifecycle"]
    internal = summary["internal"]
    usage = {name: counts["germinated"] for name, counts in summary["blueprints"].items()}
    surfaces: dict[str, int] = defaultdict(int)
    for slot in summary["slots"].values():
        surfaces[slot["surface"] or "unknown"] += slot["germinated"]
    val_loss = final.get("mean_val_loss")
    return {
        "run_dir": str(run_dir),
        "status": summary["run"]["status"],
        "final_metric": mean_metric,
        "added_params": added,
        "accuracy_per_rent": None if mean_metric is None else mean_metric / (1.0 + rent),
        "final_val_loss": val_loss,
        "val_loss_times_rent": None if val_loss is None else val_loss * (1.0 + rent),
        "germinated": lifecycle["germinated"],
        "fossilized": lifecycle["fossilized"],
        "pruned": lifecycle["pruned"],
        "rollbacks": lifecycle["governor_rollbacks"],
        "invalid_action_rate": actions["failed"] / decisions if decisions else 0.0,
        "op_rates": {op: count / decisions for op, count in sorted(actions["by_op"].items())} if decisions else {},
        "blueprint_usage": usage,
        "slot_usage": {slot: counts["germinated"] for slot, counts in summary["slots"].items()},
        "surface_usage": dict(sorted(surfaces.items())),
        "heavy_share": (
            sum(usage.get(name, 0) for name in heavy_blueprints) / lifecycle["germinated"]
            if lifecycle["germinated"] and heavy_blueprints else None
        ),
        "internal_grows": internal["grow"],
        "internal_shrinks": internal["shrink"],
        "internal_op_rate": (internal["grow"] + internal["shrink"]) / decisions if decisions else 0.0,
        "mean_level_at_fossilization": internal["mean_level_at_fossilization"],
        "prune_fossil_ratio": lifecycle["pruned"] / lifecycle["fossilized"] if lifecycle["fossilized"] else None,
        "final_head_entropy": {head: values[-1] for head, values in sorted(entropies.items())},
        "mean_head_entropy": {head: sum(values) / len(values) for head, values in sorted(entropies.items())},
        "mean_return": _mean([r.get("mean_return") for r in summary["rounds"].values()]),  # per episode
    }


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def compare(exp_dir: Path) -> dict[str, Any]:
    """Side-by-side metrics of every arm; written to ``comparison.json``."""
    declared = read_toml(exp_dir / EXPERIMENT_FILE)["experiment"]
    heavy = tuple(declared.get("heavy_blueprints", ()))
    order = [arm["name"] for arm in declared.get("arms", ())]
    runs = arm_run_dirs(exp_dir)
    ranked = sorted(runs, key=lambda name: (order.index(name) if name in order else len(order), name))
    arms = {name: arm_metrics(runs[name], heavy) for name in ranked}  # in the order the experiment declares
    comparison = {"experiment": exp_dir.name, "arms": arms}
    write_json(exp_dir / COMPARISON_FILE, comparison)
    plot_comparison(exp_dir, comparison)
    return comparison


def level_trajectories(run_dir: Path) -> dict[str, list[tuple[int, int]]]:
    """Per seed with a ladder: (global epoch, level) at germination and at every level change."""
    records = read_events(run_dir / "events.jsonl")
    started = next(r["data"] for r in records if r["event"] == "RUN_STARTED")
    length = started["episode_length"]
    paths: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for record in records:
        data = record["data"]
        if record["event"] == "SEED_GERMINATED" and data["internal_level"]:
            paths[data["seed_id"]].append((data["round"] * length + data["epoch"], data["internal_level"]))
        elif record["event"] == "SEED_INTERNAL_LEVEL_CHANGED":
            paths[data["seed_id"]].append((data["round"] * length + data["epoch"], data["to_level"]))
    return dict(paths)


def plot_comparison(exp_dir: Path, comparison: dict[str, Any]) -> Path:
    """``comparison.png``: the arms side by side (metric, accuracy per rent, blueprint mix, levels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = comparison["arms"]
    names = list(arms)
    figure, axes = plt.subplots(2, 3, figsize=(16, 7.5))
    (metric_axis, mix_axis, surface_axis), (ops_axis, level_axis, loss_axis) = axes
    positions = range(len(names))
    width = 0.38
    metric_axis.bar([p - width / 2 for p in positions], [arms[n]["final_metric"] or 0 for n in names], width, label="final metric")
    metric_axis.bar([p + width / 2 for p in positions], [arms[n]["accuracy_per_rent"] or 0 for n in names], width,
                    label="accuracy per rent")
    metric_axis.set_xticks(list(positions), names)
    metric_axis.set_title("accuracy and accuracy per rent")
    metric_axis.legend(fontsize=8)
    blueprints = sorted({bp for arm in arms.values() for bp in arm["blueprint_usage"]})
    bottoms = [0.0] * len(names)
    for blueprint in blueprints:
        shares = []
        for name in names:
            usage = arms[name]["blueprint_usage"]
            total = sum(usage.values())
            shares.append(usage.get(blueprint, 0) / total if total else 0.0)
        mix_axis.bar(list(positions), shares, 0.6, bottom=bottoms, label=blueprint)
        bottoms = [b + s for b, s in zip(bottoms, shares)]
    mix_axis.set_xticks(list(positions), names)
    mix_axis.set_title("blueprint selection share")
    if blueprints:
        mix_axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not on them
    _stacked_shares(surface_axis, names, [arms[n]["surface_usage"] for n in names])
    surface_axis.set_title("germinations per injection surface")
    loss_axis.bar([p - width / 2 for p in positions], [arms[n]["final_val_loss"] or 0 for n in names], width,
                  label="final validation loss")
    loss_axis.bar([p + width / 2 for p in positions], [arms[n]["val_loss_times_rent"] or 0 for n in names], width,
                  label="val loss x rent")
    loss_axis.set_xticks(list(positions), names)
    loss_axis.set_title("validation loss (lower is better)")
    _zoom_to_values(loss_axis, [arms[n][key] for n in names for key in ("final_val_loss", "val_loss_times_rent")])
    loss_axis.legend(fontsize=8)
    rates = ["internal_op_rate", "invalid_action_rate"]
    for offset, key in zip((-width / 2, width / 2), rates):
        ops_axis.bar([p + offset for p in positions], [arms[n][key] for n in names], width, label=key.replace("_", " "))
    ops_axis.set_xticks(list(positions), names)
    ops_axis.set_title("decision rates")
    ops_axis.legend(fontsize=8)
    plotted = False
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, name in enumerate(names):
        labelled = False
        for seed_id, path in level_trajectories(Path(arms[name]["run_dir"])).items():
            steps, levels = zip(*path)
            level_axis.step(steps, levels, where="post", alpha=0.6, color=colours[index % len(colours)],
                            label=None if labelled else name)
            labelled = plotted = True
    level_axis.set_title("internal level of ladder seeds (each line a seed)")
    level_axis.set_xlabel("epoch (all rounds)")
    if plotted:
        level_axis.legend(fontsize=8)
    else:
        level_axis.text(0.5, 0.5, "no ladder seeds", ha="center", va="center", transform=level_axis.transAxes)
    figure.suptitle(f"{comparison['experiment']}")
    figure.tight_layout()
    path = exp_dir / "comparison.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _stacked_shares(axis: Any, names: list[str], usages: list[dict[str, int]]) -> None:
    """One stacked bar per arm: the share of each key in that arm's counts."""
    keys = sorted({key for usage in usages for key, count in usage.items() if count})
    bottoms = [0.0] * len(names)
    for key in keys:
        shares = [usage.get(key, 0) / sum(usage.values()) if sum(usage.values()) else 0.0 for usage in usages]
        axis.bar(range(len(names)), shares, 0.6, bottom=bottoms, label=key)
        bottoms = [b + s for b, s in zip(bottoms, shares)]
    axis.set_xticks(list(range(len(names))), names)
    if keys:
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        axis.text(0.5, 0.5, "no germinations", ha="center", va="center", transform=axis.transAxes)


def _zoom_to_values(axis: Any, values: list[float | None]) -> None:
    """Start a bar axis near the smallest value, so differences of a few per cent are visible."""
    present = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not present:
        return
    low, high = min(present), max(present)
    margin = max(high - low, 0.01 * high)
    axis.set_ylim(max(0.0, low - margin), high + margin)


def arm_run_dirs(exp_dir: Path) -> dict[str, Path]:
    """Each arm's newest run directory (names sort by creation time)."""
    found: dict[str, Path] = {}
    for child in sorted(exp_dir.iterdir()):
        if child.is_dir() and "__" in child.name:
            found[child.name.split("__")[1]] = child
    return found


def arm_completed(run_dir: Path) -> bool:
    path = run_dir / SUMMARY_FILE
    return path.exists() and json.loads(path.read_text())["run"]["status"] == "completed"


# -- running ---------------------------------------------------------------------------------------


def _in_dir(config: RunConfig, exp_dir: Path) -> RunConfig:
    return attrs.evolve(config, run=attrs.evolve(config.run, output_dir=str(exp_dir)))


def run_experiment(
    data: dict[str, Any], manager: PluginManager, *, source: str | None = None,
    on_dir: Callable[[Path], None] | None = None,
) -> Path:
    """Run every arm in order, each in its own run directory inside one experiment directory."""
    from esper_core.tolaria.engine import start_run

    experiment = parse_experiment(data, manager, source=source)
    exp_dir = experiment_dir(experiment)
    if on_dir is not None:
        on_dir(exp_dir)
    (exp_dir / EXPERIMENT_FILE).write_text(tomli_w.dumps(data), encoding="utf-8")
    unstable = []
    for name, config in experiment.arms.items():
        with _arm_outcome(name, unstable):
            start_run(_in_dir(config, exp_dir), manager)
    _finish(exp_dir, unstable)
    return exp_dir


@contextlib.contextmanager
def _arm_outcome(name: str, unstable: list[str]) -> Iterator[None]:
    """An arm whose training is unstable is a result, not a crash: note it and go on with the other arms."""
    try:
        yield
    except TrainingUnstable as exc:
        unstable.append(f"arm '{name}': {exc}")


def _finish(exp_dir: Path, unstable: list[str]) -> None:
    """Compare every arm (a failed arm shows as failed), then report the unstable arms as one error."""
    compare(exp_dir)
    if unstable:
        raise TrainingUnstable(
            f"{len(unstable)} arm(s) stopped: " + "; ".join(unstable) + f". The other arms ran; comparison in {exp_dir}"
        )


def resume_experiment(exp_dir: Path, manager: PluginManager) -> Path:
    """Skip completed arms, resume an interrupted one from its checkpoint, start the rest."""
    from esper_core.runs import CHECKPOINT_DIR, LATEST_CHECKPOINT
    from esper_core.tolaria.engine import resume_run, start_run

    data = read_toml(exp_dir / EXPERIMENT_FILE)
    experiment = parse_experiment(data, manager, source=str(exp_dir / EXPERIMENT_FILE))
    existing = arm_run_dirs(exp_dir)
    unstable: list[str] = []
    for name, config in experiment.arms.items():
        run_dir = existing.get(name)
        if run_dir is not None and arm_completed(run_dir):
            continue
        with _arm_outcome(name, unstable):
            if run_dir is not None and (run_dir / CHECKPOINT_DIR / LATEST_CHECKPOINT).exists():
                resume_run(run_dir, manager)
            else:
                start_run(_in_dir(config, exp_dir), manager)
    _finish(exp_dir, unstable)
    return exp_dir


def is_experiment_dir(path: Path) -> bool:
    return (Path(path) / EXPERIMENT_FILE).exists()
