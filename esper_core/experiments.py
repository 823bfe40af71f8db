"""Paired experiments: ``[experiment]`` arms that differ in named settings, run on the same seeds, compared."""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import fcntl
import functools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import cattrs
import tomli_w

from esper_core.config import RunConfig, parse_config, read_toml, structure_section
from esper_core.errors import ConfigError, DataError, TrainingUnstable
from esper_core.leyline import TelemetryEventType
from esper_core.leyline.telemetry import _json_converter
from esper_core.plugins import PluginManager
from esper_core.runs import EVENTS_FILE, create_run_dir, slug, write_json
from esper_core.tamiyo.policy import ENTROPY_METRIC_PREFIX
from esper_core.leyline import epoch_step
from esper_core.telemetry.report import load_events, summarize_events

#: The experiment's config as given (base sections plus ``[experiment]``), written when it starts.
EXPERIMENT_FILE = "experiment.toml"
#: The experiment's own record: which run directory holds each arm (``ExperimentRecord``).
MANIFEST_FILE = "experiment.json"
MANIFEST_LOCK_FILE = "experiment.json.lock"
MANIFEST_FORMAT = "esper-experiment"
MANIFEST_VERSION = 1
COMPARISON_FILE = "comparison.json"


@attrs.frozen
class ArmSection:
    """One arm: a name and dotted-key overrides of the base config (``{"reward.name" = "shaped"}``)."""

    name: str
    set: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class ExperimentSection:
    """``[experiment]``: a name, two or more arms, and the seed families the report counts as heavy."""

    #: keys renamed in 0.2.0: the old key is an error that names the new one
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"heavy_blueprints": "heavy_seed_families"}

    name: str
    arms: tuple[ArmSection, ...] = attrs.field(validator=attrs.validators.min_len(2))
    heavy_seed_families: tuple[str, ...] = ()


@attrs.frozen
class Experiment:
    """A validated experiment: its name and each arm's full run configuration, in declared order."""

    name: str
    arms: dict[str, RunConfig]
    heavy_seed_families: tuple[str, ...] = ()


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
    problems.extend(_arm_name_problems([arm.name for arm in section.arms]))
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
    return Experiment(name=section.name, arms=arms, heavy_seed_families=section.heavy_seed_families)


def _arm_name_problems(names: list[str]) -> list[str]:
    """Arm names must stay distinct in their run directories' names (``{task}__{arm}__{seed}__{time}``):
    no two may give the same directory-name part (compared ignoring case, for case-insensitive file
    systems), and none may contain the ``__`` that separates the parts."""
    problems = []
    by_slug: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_slug[slug(name).casefold()].append(name)
        if "__" in slug(name):
            problems.append(f"[experiment] arm name {name!r} contains '__', which separates the parts of run directory names")
    for directory_part, clashing in by_slug.items():
        if len(clashing) > 1:
            listed = ", ".join(repr(name) for name in clashing)
            problems.append(
                f"[experiment] arm names {listed} cannot be told apart in run directory names (all become {directory_part!r}); "
                "rename them"
                if len(set(clashing)) > 1
                else f"[experiment] arm name {clashing[0]!r} is given {len(clashing)} times; arm names must be unique"
            )
    return problems


def experiment_dir(experiment: Experiment) -> Path:
    first = next(iter(experiment.arms.values()))
    return create_run_dir(
        Path(first.run.output_dir), "experiment", experiment.name, first.run.seed, now=_dt.datetime.now(),
        checkpoints=False,
    )


# -- comparison ------------------------------------------------------------------------------------


def arm_metrics(run_dir: Path, heavy_seed_families: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the comparison table shows for one arm, from its event record.

    ``heavy_share`` is the fraction of germinations that chose one of ``heavy_seed_families``;
    ``internal_op_rate`` the fraction of decisions that changed a seed's internal level.
    ``accuracy_per_rent`` divides the final metric by ``1 + ln(1 + added / host params)`` (higher is
    better); ``val_loss_times_rent`` multiplies the final validation loss by the same factor (lower is
    better: the loss-based ROI for language tasks). ``surface_usage`` counts germinations per injection
    surface and ``surface_fossils`` the surviving fossils per surface (see ``surviving_fossils``).
    ``fossilize_prune_ratio`` is fossilized / pruned (None when nothing was pruned; every prune counts,
    like ``prune_fossil_ratio``, its inverse). ``overshoot_prunes`` counts seeds that grew their internal
    level and were later pruned by the policy or a gate (``overshoot_prune_rate`` per germination; see
    ``overshoot_prunes``). ``level_time_series`` is ``mean_level_series``; ``mean_params_in_use`` the mean
    model size (host plus live and fossilized seeds, each by its parameters in use) over every
    environment's epochs.
    """
    events = load_events(run_dir / EVENTS_FILE)
    summary = summarize_events(events)
    host_params = summary["run"]["host_params"]
    final = summary["final"]
    mean_metric = None if final is None else final["mean_metric"]
    added = 0.0 if final is None else final["mean_params"] - host_params
    rent = math.log1p(added / host_params) if host_params else 0.0
    entropies: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.event_type is TelemetryEventType.POLICY_UPDATED:
            for key, value in event.payload.metrics.items():
                if key.startswith(ENTROPY_METRIC_PREFIX):
                    entropies[key.removeprefix(ENTROPY_METRIC_PREFIX)].append(value)
    actions = summary["actions"]
    decisions = sum(actions["by_op"].values())
    lifecycle = summary["lifecycle"]
    internal = summary["internal"]
    usage = {name: counts["germinated"] for name, counts in summary["seed_families"].items()}
    surfaces: dict[str, int] = defaultdict(int)
    for slot in summary["slots"].values():
        surfaces[slot["surface"]] += slot["germinated"]
    val_loss = None if final is None else final["mean_val_loss"]
    started = events[0].payload  # load_events: the record starts with RUN_STARTED
    surface_of = dict(zip(started.slots, started.slot_surfaces, strict=True))
    fossils: dict[str, int] = {surface: 0 for surface in surfaces}
    for slot_id in surviving_fossils(events):
        fossils[surface_of[slot_id]] = fossils.get(surface_of[slot_id], 0) + 1
    overshoots = overshoot_prunes(events)
    sizes = [
        e.payload.host_params + e.payload.seed_params + e.payload.fossilized_params
        for e in events if e.event_type is TelemetryEventType.EPOCH_COMPLETED
    ]
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
        "seed_family_usage": usage,
        "slot_usage": {slot: counts["germinated"] for slot, counts in summary["slots"].items()},
        "surface_usage": dict(sorted(surfaces.items())),
        "surface_fossils": dict(sorted(fossils.items())),
        "heavy_share": (
            sum(usage.get(name, 0) for name in heavy_seed_families) / lifecycle["germinated"]
            if lifecycle["germinated"] and heavy_seed_families else None
        ),
        "internal_grows": internal["grow"],
        "internal_shrinks": internal["shrink"],
        "internal_op_rate": (internal["grow"] + internal["shrink"]) / decisions if decisions else 0.0,
        "mean_level_at_fossilization": internal["mean_level_at_fossilization"],
        "prune_fossil_ratio": lifecycle["pruned"] / lifecycle["fossilized"] if lifecycle["fossilized"] else None,
        "fossilize_prune_ratio": lifecycle["fossilized"] / lifecycle["pruned"] if lifecycle["pruned"] else None,
        "overshoot_prunes": overshoots,
        "overshoot_prune_rate": overshoots / lifecycle["germinated"] if lifecycle["germinated"] else None,
        "level_time_series": mean_level_series(events),
        "mean_params_in_use": sum(sizes) / len(sizes) if sizes else None,
        "final_head_entropy": {head: values[-1] for head, values in sorted(entropies.items())},
        "mean_head_entropy": {head: sum(values) / len(values) for head, values in sorted(entropies.items())},
        "mean_return": _mean([r["mean_return"] for r in summary["rounds"].values()]),  # per episode
    }


def _seed_key(data: Any) -> tuple[int, int, str]:
    """A seed's identity in a record: (environment, round, seed id)."""
    return (data.env_id, data.round, data.seed_id)


def surviving_fossils(events: list[Any]) -> list[str]:
    """The slot id of every fossil in the record that was not later removed (a SEED_PRUNED of the same
    seed, e.g. by a governor rollback), in the order they fossilized."""
    fossils: dict[tuple[int, int, str], str] = {}
    for event in events:
        if event.event_type is TelemetryEventType.SEED_FOSSILIZED:
            fossils[_seed_key(event.payload)] = event.payload.slot_id
        elif event.event_type is TelemetryEventType.SEED_PRUNED:
            fossils.pop(_seed_key(event.payload), None)
    return list(fossils.values())


def overshoot_prunes(events: list[Any]) -> int:
    """Seeds that grew their internal level at least once (a GROW_INTERNAL that succeeded) and were later
    pruned by the policy or a lifecycle gate (prunes by a governor rollback are not the seed's verdict
    and do not count)."""
    grown: set[tuple[int, int, str]] = set()
    count = 0
    for event in events:
        data = event.payload
        if event.event_type is TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED and data.to_level > data.from_level:
            grown.add(_seed_key(data))
        elif event.event_type is TelemetryEventType.SEED_PRUNED and data.reason != "rollback" and _seed_key(data) in grown:
            grown.discard(_seed_key(data))
            count += 1
    return count


def mean_level_series(events: list[Any]) -> list[list[float]]:
    """``[epoch step, mean internal level, live ladder seeds]`` for every epoch step at which some
    environment had a live ladder seed: the levels the seeds trained at in that epoch (changes decided
    at an epoch's end count from the next epoch), averaged over every live ladder seed of every
    environment. A ladder seed is one germinated at a level above 0 or whose level changed; it stops
    being live when it is fossilized or pruned."""
    started = events[0].payload  # load_events: the record starts with RUN_STARTED
    live: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)  # (env, round) -> seed id -> level
    totals: dict[int, list[int]] = {}
    for event in events:
        kind, data = event.event_type, event.payload
        if kind is TelemetryEventType.SEED_GERMINATED and data.internal_level:
            live[(data.env_id, data.round)][data.seed_id] = data.internal_level
        elif kind is TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED:
            live[(data.env_id, data.round)][data.seed_id] = data.to_level
        elif kind in (TelemetryEventType.SEED_FOSSILIZED, TelemetryEventType.SEED_PRUNED):
            live[(data.env_id, data.round)].pop(data.seed_id, None)
        elif kind is TelemetryEventType.EPOCH_COMPLETED:
            levels = live.get((data.env_id, data.round), {})
            if levels:
                total = totals.setdefault(epoch_step(data.round, data.epoch, started.episode_length), [0, 0])
                total[0] += sum(levels.values())
                total[1] += len(levels)
    return [[step, level_sum / seeds, seeds] for step, (level_sum, seeds) in sorted(totals.items())]


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items()) or "-"


def _level_path(series: list[list[float]]) -> str:
    """The mean ladder level at (up to) five evenly spaced epoch steps: ``step:level`` pairs."""
    if not series:
        return "-"
    picks = sorted({round(index * (len(series) - 1) / 4) for index in range(5)})
    return " ".join(f"{int(series[index][0])}:{series[index][1]:.2f}" for index in picks)


#: The comparison table (``esper run`` of an experiment, ``esper report`` of its directory): one row per
#: entry, a label and how to show an arm's value (an ``arm_metrics`` dictionary) as text.
COMPARISON_ROWS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("status", lambda a: a["status"]),
    ("final metric", lambda a: _fmt(a["final_metric"], ".4f")),
    ("added params", lambda a: _fmt(a["added_params"], ",.0f")),
    ("mean params in use", lambda a: _fmt(a["mean_params_in_use"], ",.0f")),
    ("accuracy per rent", lambda a: _fmt(a["accuracy_per_rent"], ".4f")),
    ("final validation loss", lambda a: _fmt(a["final_val_loss"], ".4f")),
    ("val loss x rent", lambda a: _fmt(a["val_loss_times_rent"], ".4f")),
    ("mean return", lambda a: _fmt(a["mean_return"], ".3f")),
    ("germinated", lambda a: str(a["germinated"])),
    ("fossilized", lambda a: str(a["fossilized"])),
    ("pruned", lambda a: str(a["pruned"])),
    ("rollbacks", lambda a: str(a["rollbacks"])),
    ("invalid action rate", lambda a: _fmt(a["invalid_action_rate"], ".3f")),
    ("prune / fossil ratio", lambda a: _fmt(a["prune_fossil_ratio"], ".2f")),
    ("fossilize / prune ratio", lambda a: _fmt(a["fossilize_prune_ratio"], ".2f")),
    ("heavy seed family share", lambda a: _fmt(a["heavy_share"], ".2f")),
    ("internal ops (grow / shrink)", lambda a: f"{a['internal_grows']} / {a['internal_shrinks']}"),
    ("internal op rate", lambda a: _fmt(a["internal_op_rate"], ".3f")),
    ("prunes after overshoot (rate)", lambda a: f"{a['overshoot_prunes']} ({_fmt(a['overshoot_prune_rate'], '.2f')})"),
    ("mean level at fossilization", lambda a: _fmt(a["mean_level_at_fossilization"], ".2f")),
    ("mean ladder level (step:level)", lambda a: _level_path(a["level_time_series"])),
    ("seed family usage", lambda a: _counts(a["seed_family_usage"])),
    ("surface usage (germinations)", lambda a: _counts({k: v for k, v in a["surface_usage"].items() if v})),
    ("surviving fossils per surface", lambda a: _counts(a["surface_fossils"])),
    ("final head entropies", lambda a: ", ".join(f"{k} {v:.2f}" for k, v in a["final_head_entropy"].items()) or "-"),
    ("mean head entropies", lambda a: ", ".join(f"{k} {v:.2f}" for k, v in a["mean_head_entropy"].items()) or "-"),
)


def comparison_table(comparison: dict[str, Any]) -> list[list[str]]:
    """The comparison table as text: a header row (``metric`` and the arm names), then one row per
    ``COMPARISON_ROWS`` entry."""
    arms = comparison["arms"]
    return [["metric", *arms]] + [[label, *(show(arm) for arm in arms.values())] for label, show in COMPARISON_ROWS]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def compare(exp_dir: Path) -> dict[str, Any]:
    """Side-by-side metrics of every arm that has a run, in the order the experiment declares them;
    written to ``comparison.json``."""
    record = read_manifest(exp_dir)
    runs = arm_run_dirs(exp_dir)
    arms = {name: arm_metrics(run_dir, record.heavy_seed_families) for name, run_dir in runs.items()}
    comparison = {"experiment": exp_dir.name, "arms": arms}
    write_json(exp_dir / COMPARISON_FILE, comparison)
    plot_comparison(exp_dir, comparison)
    return comparison


def level_trajectories(run_dir: Path) -> dict[str, list[tuple[int, int]]]:
    """Per seed with a ladder: (epoch step, level) at germination and at every level change."""
    events = load_events(run_dir / EVENTS_FILE)
    started = events[0].payload  # load_events: the record starts with RUN_STARTED
    paths: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for event in events:
        data = event.payload
        if event.event_type is TelemetryEventType.SEED_GERMINATED and data.internal_level:
            paths[data.seed_id].append((epoch_step(data.round, data.epoch, started.episode_length), data.internal_level))
        elif event.event_type is TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED:
            paths[data.seed_id].append((epoch_step(data.round, data.epoch, started.episode_length), data.to_level))
    return dict(paths)


def plot_comparison(exp_dir: Path, comparison: dict[str, Any]) -> Path:
    """``comparison.png``: the arms side by side (metric, accuracy per rent, seed family mix, levels)."""
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
    families = sorted({name for arm in arms.values() for name in arm["seed_family_usage"]})
    bottoms = [0.0] * len(names)
    for family in families:
        shares = []
        for name in names:
            usage = arms[name]["seed_family_usage"]
            total = sum(usage.values())
            shares.append(usage.get(family, 0) / total if total else 0.0)
        mix_axis.bar(list(positions), shares, 0.6, bottom=bottoms, label=family)
        bottoms = [b + s for b, s in zip(bottoms, shares)]
    mix_axis.set_xticks(list(positions), names)
    mix_axis.set_title("seed family selection share")
    if families:
        mix_axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not on them
    _stacked_shares(
        surface_axis, names, [arms[n]["surface_usage"] for n in names], [arms[n]["surface_fossils"] for n in names]
    )
    surface_axis.set_title("injection surface share: germinations (plain), surviving fossils (hatched)", fontsize=9)
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
        colour = colours[index % len(colours)]
        for seed_id, path in level_trajectories(Path(arms[name]["run_dir"])).items():
            steps, levels = zip(*path)
            level_axis.step(steps, levels, where="post", alpha=0.35, color=colour, label=None if labelled else name)
            labelled = plotted = True
        series = arms[name].get("level_time_series") or []
        if series:
            level_axis.plot(*_level_segments(series), color=colour, linewidth=2.2, label=f"{name} (mean of live seeds)")
            plotted = True
    level_axis.set_title("internal level of ladder seeds (thin: each seed; thick: mean)")
    level_axis.set_xlabel("epoch (all rounds)")
    if plotted:
        level_axis.legend(fontsize=8)
    else:
        level_axis.text(0.5, 0.5, "no ladder seeds", ha="center", va="center", transform=level_axis.transAxes)
    figure.suptitle(f"{comparison['experiment']}")
    if len(names) > 2 or max((len(name) for name in names), default=0) > 12:  # keep arm names apart
        for axis in (metric_axis, mix_axis, surface_axis, ops_axis, loss_axis):
            axis.tick_params(axis="x", labelrotation=25)
            for label in axis.get_xticklabels():
                label.set_horizontalalignment("right")
    figure.tight_layout()
    path = exp_dir / "comparison.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _level_segments(series: list[list[float]]) -> tuple[list[float], list[float]]:
    """Plot coordinates of a ``mean_level_series``: the level trained at during epoch step s was set by
    the decision at the end of step s - 1, where the per-seed lines of ``level_trajectories`` change, so
    each value is drawn over [s - 1, s]; steps without live ladder seeds leave a gap."""
    xs: list[float] = []
    ys: list[float] = []
    for index, (step, level, _seeds) in enumerate(series):
        if index and series[index - 1][0] != step - 1:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.extend((step - 1, step))
        ys.extend((level, level))
    return xs, ys


def _stacked_shares(
    axis: Any, names: list[str], usages: list[dict[str, int]], second: list[dict[str, int]] | None = None
) -> None:
    """One stacked bar per arm: the share of each key in that arm's counts; with ``second``, a hatched
    bar of its shares beside each (same colour per key)."""
    groups = [usages] if second is None else [usages, second]
    keys = sorted({key for group in groups for usage in group for key, count in usage.items() if count})
    colours = {key: f"C{index % 10}" for index, key in enumerate(keys)}
    width = 0.6 / len(groups)
    for index, group in enumerate(groups):
        positions = [p + (index - (len(groups) - 1) / 2) * width for p in range(len(names))]
        bottoms = [0.0] * len(names)
        for key in keys:
            shares = [usage.get(key, 0) / sum(usage.values()) if sum(usage.values()) else 0.0 for usage in group]
            axis.bar(positions, shares, width, bottom=bottoms, color=colours[key], hatch="//" if index else None,
                     label=None if index else key)
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


# -- the experiment's record ------------------------------------------------------------------------


@attrs.frozen
class ArmRecord:
    """One arm in ``experiment.json``: its name as declared and the run directory (a name inside the
    experiment directory) that holds its run, None until the run is created. ``previous_run_dirs`` are
    runs of this arm that a resume replaced because they stopped before their first checkpoint (kept,
    never deleted)."""

    name: str
    run_dir: str | None = None
    previous_run_dirs: tuple[str, ...] = ()


@attrs.frozen
class ExperimentRecord:
    """``experiment.json``: the experiment's own record of its arms, in declared order. Arms are found
    through it, never by parsing run directory names."""

    format: str
    version: int
    name: str
    heavy_seed_families: tuple[str, ...]
    arms: tuple[ArmRecord, ...]

    def arm(self, name: str) -> ArmRecord:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)

    def with_arm(self, updated: ArmRecord) -> ExperimentRecord:
        return attrs.evolve(self, arms=tuple(updated if arm.name == updated.name else arm for arm in self.arms))


#: The project's strict converter (every field present with its JSON type, unknown keys refused).
_manifest_converter = _json_converter.copy()


def new_manifest(experiment: Experiment) -> ExperimentRecord:
    """The record of an experiment none of whose arms has started."""
    return ExperimentRecord(
        format=MANIFEST_FORMAT, version=MANIFEST_VERSION, name=experiment.name,
        heavy_seed_families=experiment.heavy_seed_families, arms=tuple(ArmRecord(name) for name in experiment.arms),
    )


def write_manifest(exp_dir: Path, record: ExperimentRecord) -> None:
    write_json(exp_dir / MANIFEST_FILE, _manifest_converter.unstructure(record))


def read_manifest(exp_dir: Path) -> ExperimentRecord:
    """The experiment's record; ``DataError`` naming the file if it is missing or not one."""
    path = Path(exp_dir) / MANIFEST_FILE
    if not path.exists():
        raise DataError(
            f"'{exp_dir}' has no {MANIFEST_FILE}, so its arms cannot be identified "
            "(experiments written by Esper 0.2.0 and earlier named their arms only in directory names; "
            "run it again)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"'{path}' is not an Esper experiment record: not JSON text ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"'{path}' is not an Esper experiment record: not a JSON object")
    if "heavy_blueprints" in data and "heavy_seed_families" not in data:  # the field's name before 0.2.0
        data["heavy_seed_families"] = data.pop("heavy_blueprints")
    try:
        record = _manifest_converter.structure(data, ExperimentRecord)
    except cattrs.BaseValidationError as exc:
        raise DataError(f"'{path}' is not an Esper experiment record: {'; '.join(cattrs.transform_error(exc))}") from None
    if record.format != MANIFEST_FORMAT or record.version != MANIFEST_VERSION:
        raise DataError(
            f"'{path}' has format {record.format!r} version {record.version}; "
            f"this Esper reads {MANIFEST_FORMAT!r} version {MANIFEST_VERSION}"
        )
    return record


def arm_run_dirs(exp_dir: Path) -> dict[str, Path]:
    """Each arm's run directory, from the experiment's record, in declared order (arms not started yet
    are left out)."""
    return {arm.name: Path(exp_dir) / arm.run_dir for arm in read_manifest(exp_dir).arms if arm.run_dir is not None}


def arm_completed(run_dir: Path) -> bool:
    """Whether the run's last RUN_FINISHED says it completed."""
    finished = [e.payload for e in load_events(run_dir / EVENTS_FILE) if e.event_type is TelemetryEventType.RUN_FINISHED]
    return bool(finished) and finished[-1].status == "completed"


# -- running ---------------------------------------------------------------------------------------


def _in_dir(config: RunConfig, exp_dir: Path) -> RunConfig:
    return attrs.evolve(config, run=attrs.evolve(config.run, output_dir=str(exp_dir)))


def prepare_arms(experiment: Experiment, manager: PluginManager, *, source: str | None = None) -> None:
    """Check every arm as its run would at start (task, host, slots, seed families and their options),
    before any arm runs: one ``ConfigError`` naming each arm's problems, so an experiment never fails
    halfway on a configuration mistake in a later arm."""
    from esper_core.tolaria.engine import prepare

    problems: list[str] = []
    for name, config in experiment.arms.items():
        try:
            prepare(config, manager)
        except ConfigError as exc:
            problems.extend(f"[experiment] arm '{name}': {problem}" for problem in exc.problems)
    if problems:
        raise ConfigError(problems, source=source)


def create_experiment(
    data: dict[str, Any], manager: PluginManager, *, source: str | None = None
) -> tuple[Experiment, Path]:
    """Validate every arm, then create the experiment directory with ``experiment.toml`` (the config as
    given) and ``experiment.json`` (the record, no arm started yet). For scripts that run the arms
    themselves: start each with ``start_run(..., on_run_dir=functools.partial(record_arm_run, exp_dir, name))``."""
    experiment = parse_experiment(data, manager, source=source)
    prepare_arms(experiment, manager, source=source)
    exp_dir = experiment_dir(experiment)
    (exp_dir / EXPERIMENT_FILE).write_text(tomli_w.dumps(data), encoding="utf-8")
    write_manifest(exp_dir, new_manifest(experiment))
    return experiment, exp_dir


def record_arm_run(exp_dir: Path, name: str, run_dir: Path) -> None:
    """Record ``run_dir`` as arm ``name``'s run in the experiment's record (an earlier run of the arm moves
    to ``previous_run_dirs``). Safe when arms run in parallel processes: updates hold an exclusive lock."""
    exp_dir = Path(exp_dir)
    with open(exp_dir / MANIFEST_LOCK_FILE, "a", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        record = read_manifest(exp_dir)
        arm = record.arm(name)
        previous = arm.previous_run_dirs + ((arm.run_dir,) if arm.run_dir is not None else ())
        write_manifest(exp_dir, record.with_arm(ArmRecord(name, Path(run_dir).name, previous)))


def _start_arm(exp_dir: Path, name: str, config: RunConfig, manager: PluginManager) -> None:
    """Start one arm's run, recording its run directory in the experiment's record as soon as it exists."""
    from esper_core.tolaria.engine import start_run

    start_run(_in_dir(config, exp_dir), manager, on_run_dir=functools.partial(record_arm_run, exp_dir, name))


def run_experiment(
    data: dict[str, Any], manager: PluginManager, *, source: str | None = None,
    on_dir: Callable[[Path], None] | None = None,
) -> Path:
    """Run every arm in order, each in its own run directory inside one experiment directory."""
    experiment, exp_dir = create_experiment(data, manager, source=source)
    if on_dir is not None:
        on_dir(exp_dir)
    unstable: list[str] = []
    for name, config in experiment.arms.items():
        with _arm_outcome(name, unstable):
            _start_arm(exp_dir, name, config, manager)
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
    """Skip completed arms, resume an interrupted one from its checkpoint, start the ones without a run.

    Arms are found through the experiment's record (``experiment.json``). Resuming an experiment whose
    arms all completed starts nothing: it compares the existing runs again. An arm whose run stopped
    before its first checkpoint is started afresh in a new run directory; the old one is kept and listed
    in the record's ``previous_run_dirs``."""
    from esper_core.runs import CHECKPOINT_DIR, LATEST_CHECKPOINT
    from esper_core.tolaria.engine import resume_run

    exp_dir = Path(exp_dir)
    data = read_toml(exp_dir / EXPERIMENT_FILE)
    experiment = parse_experiment(data, manager, source=str(exp_dir / EXPERIMENT_FILE))
    record = read_manifest(exp_dir)
    if [arm.name for arm in record.arms] != list(experiment.arms):
        raise DataError(
            f"'{exp_dir / MANIFEST_FILE}' lists arms {[arm.name for arm in record.arms]} but "
            f"'{exp_dir / EXPERIMENT_FILE}' declares {list(experiment.arms)}"
        )
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
                _start_arm(exp_dir, name, config, manager)
    _finish(exp_dir, unstable)
    return exp_dir


def is_experiment_dir(path: Path) -> bool:
    return (Path(path) / EXPERIMENT_FILE).exists()
