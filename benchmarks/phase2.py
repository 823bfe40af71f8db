"""Roadmap Phase 2 experiment driver: run the examples/phase2 arms in parallel processes, then summarise them.

``run FILE... [--jobs N]`` creates each file's experiment directory (as ``esper run`` does), runs every
arm of every file in a pool of ``N`` processes (longest first), then writes each ``comparison.json`` (what
``esper report EXP_DIR`` writes). ``summarize EXP_DIR --name NAME`` writes
``docs/data/phase2/experiment-NAME.json``: the comparison plus what this module computes from the arms'
event records (per-episode accuracy and size, paired differences between arms, per-surface ROI and
preference, heavy jumps, governor events) and the verdicts of the Phase 2 exit criteria; ``--plot`` copies
the comparison plot. ``markdown`` prints the tables docs/phase2.md shows (tests/test_phase2_docs.py checks
that the doc holds exactly these tables).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from _arms import run_arms

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "docs" / "data" / "phase2"
IMG_DIR = REPO / "docs" / "img"
#: Arm names of the Phase 2 configs: (layout, ladder) -> arm.
ARMS = ("segments_conv", "segments_channel", "lattice_conv", "lattice_channel")
BASELINE_ARM = "segments_conv"
#: Policies that learn from the reward: only their surface preference can be a *learned* one (the heuristic
#: germinates in the earliest free slot, so its surface shares follow the slot order).
LEARNING_POLICIES = ("ppo",)
HEAVY = "conv_heavy"


# -- running ---------------------------------------------------------------------------------------


def _apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    import tomllib

    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"phase2: override {item!r} is not SECTION.KEY=VALUE")
        section, _, name = key.strip().partition(".")
        data.setdefault(section, {})[name] = tomllib.loads(f"v = {value}")["v"]


def run(files: list[Path], jobs: int, work_dir: Path | None, overrides: list[str], arms: list[str] | None) -> list[Path]:
    from esper_core.config import read_toml
    from esper_core.experiments import create_experiment
    from esper_core.plugins import PluginManager

    manager = PluginManager()
    work: list[tuple[float, str, str, str]] = []
    exp_dirs = []
    for path in files:
        data = read_toml(path)
        _apply_overrides(data, overrides)
        if work_dir is not None:
            data.setdefault("run", {})["output_dir"] = str(work_dir)
        if arms:
            data["experiment"]["arms"] = [arm for arm in data["experiment"]["arms"] if arm["name"] in arms]
        _experiment, exp_dir = create_experiment(data, manager, source=str(path))
        exp_dirs.append(exp_dir)
        weight = data["run"]["rounds"] * data["run"]["envs"] * (2 if data["policy"]["name"] == "ppo" else 1)
        for arm in data["experiment"]["arms"]:
            work.append((weight * (1.2 if "lattice" in arm["name"] else 1.0), str(exp_dir), str(path), arm["name"]))
        print(f"{path}: {exp_dir}", flush=True)
    run_arms(work, jobs, exp_dirs)
    return exp_dirs


# -- analysis --------------------------------------------------------------------------------------


def mean_se(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) < 2:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def rent_factor(params: float, host_params: float) -> float:
    """The comparison's rent factor: ``1 + ln(1 + added / host params)``."""
    return 1.0 + math.log1p(max(params - host_params, 0.0) / host_params)


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant or n < 3."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def arm_record(run_dir: Path) -> dict[str, Any]:
    """What the Phase 2 tables need from one arm's event record, beyond ``arm_metrics``."""
    from esper_core.leyline import TelemetryEventType as T
    from esper_core.telemetry.report import load_events

    events = load_events(run_dir / "events.jsonl")
    started = events[0].payload
    surface_of = dict(zip(started.slots, started.slot_surfaces, strict=True))
    rounds = started.rounds
    episodes: dict[tuple[int, int], dict[str, Any]] = {}
    seeds: dict[tuple[int, int, str], dict[str, Any]] = {}
    returns: dict[tuple[int, int], float] = defaultdict(float)
    governor = {"rollbacks": 0, "gradient_anomalies": 0, "policy_anomalies": 0}
    wall_seconds = None
    policy_updates = 0
    for event in events:
        kind, data = event.event_type, event.payload
        if kind is T.EPOCH_COMPLETED:
            episodes[(data.round, data.env_id)] = {
                "round": data.round, "env": data.env_id, "metric": data.val_metric, "val_loss": data.val_loss,
                "params": data.host_params + data.seed_params + data.fossilized_params,
            }
        elif kind is T.ROUND_COMPLETED and data.control_metric is not None:
            for (r, _env), episode in episodes.items():
                if r == data.round:
                    episode["control_metric"] = data.control_metric
        elif kind is T.REWARD_COMPUTED:
            returns[(data.round, data.env_id)] += data.reward
        elif kind is T.SEED_GERMINATED:
            seeds[(data.env_id, data.round, data.seed_id)] = {
                "round": data.round, "slot": data.slot_id, "surface": surface_of[data.slot_id],
                "family": data.blueprint_id, "level": data.internal_level, "max_level": data.internal_level,
                "grows": 0, "end": "live", "contribution": None, "params": data.seed_params,
            }
        elif kind is T.SEED_INTERNAL_LEVEL_CHANGED:
            seed = seeds[(data.env_id, data.round, data.seed_id)]
            seed["level"] = data.to_level
            seed["max_level"] = max(seed["max_level"], data.to_level)
            seed["params"] = data.internal_effective_params
            seed["grows"] += data.to_level > data.from_level
        elif kind is T.SEED_FOSSILIZED:
            seed = seeds[(data.env_id, data.round, data.seed_id)]
            seed.update(end="fossilized", contribution=data.contribution, params=data.seed_params)
        elif kind is T.SEED_PRUNED:
            seed = seeds[(data.env_id, data.round, data.seed_id)]
            seed.update(end="rollback" if data.reason == "rollback" else "pruned", contribution=data.contribution)
        elif kind is T.GOVERNOR_ROLLBACK:
            governor["rollbacks"] += 1
        elif kind is T.GRADIENT_ANOMALY:
            governor["gradient_anomalies"] += 1
        elif kind is T.POLICY_ANOMALY:
            governor["policy_anomalies"] += 1
        elif kind is T.RUN_FINISHED:
            wall_seconds = data.wall_seconds
        elif kind is T.POLICY_UPDATED and any(key.startswith("entropy/") for key in data.metrics):
            policy_updates += 1  # a round that ended an update (the others only collected)
    for key, episode in episodes.items():
        episode["return"] = returns.get(key)
    for episode in episodes.values():  # stored rounded, so every derived number is recomputable from the JSON
        for field in ("metric", "val_loss", "control_metric", "return"):
            if episode.get(field) is not None:
                episode[field] = round(episode[field], 6)
    for seed in seeds.values():
        if seed["contribution"] is not None:
            seed["contribution"] = round(seed["contribution"], 6)
    return {
        "policy": started.policy,
        "host_params": started.host_params,
        "rounds": rounds,
        "slots": list(started.slots),
        "slot_surfaces": list(started.slot_surfaces),
        "episodes": [episodes[key] for key in sorted(episodes)],
        "seeds": sorted(seeds.values(), key=lambda s: (s["round"], s["slot"])),
        "governor": governor,
        "wall_seconds": wall_seconds,
        "policy_updates": policy_updates,
    }


def surface_table(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per surface: germinations (all, first and second half of the rounds), surviving fossils, and the
    ROI of the seeds that ended there (measured contribution per 1,000 parameters in use, mean over seeds
    with a measured contribution)."""
    half = record["rounds"] / 2
    table: dict[str, dict[str, Any]] = {}
    for surface in sorted(set(record["slot_surfaces"])):
        mine = [s for s in record["seeds"] if s["surface"] == surface]
        rois = [s["contribution"] / (s["params"] / 1000) for s in mine
                if s["contribution"] is not None and s["params"] > 0 and s["end"] in ("fossilized", "pruned")]
        table[surface] = {
            "slots": sum(slot_surface == surface for slot_surface in record["slot_surfaces"]),
            "germinated": len(mine),
            "germinated_first_half": sum(s["round"] < half for s in mine),
            "germinated_second_half": sum(s["round"] >= half for s in mine),
            "fossils": sum(s["end"] == "fossilized" for s in mine),
            "roi_per_kparam": statistics.fmean(rois) if rois else None,
            "roi_seeds": len(rois),
        }
    return table


def slot_preference(record: dict[str, Any]) -> dict[str, Any]:
    """Per slot: germination share in the second half of the rounds and mean ROI of its ended seeds; and
    their Spearman correlation across slots with an ROI."""
    half = record["rounds"] / 2
    late = [s for s in record["seeds"] if s["round"] >= half]
    rows = {}
    for slot in record["slots"]:
        rois = [s["contribution"] / (s["params"] / 1000) for s in record["seeds"]
                if s["slot"] == slot and s["contribution"] is not None and s["params"] > 0
                and s["end"] in ("fossilized", "pruned")]
        rows[slot] = {
            "late_share": sum(s["slot"] == slot for s in late) / len(late) if late else None,
            "roi_per_kparam": statistics.fmean(rois) if rois else None,
        }
    paired = [(r["late_share"], r["roi_per_kparam"]) for r in rows.values()
              if r["late_share"] is not None and r["roi_per_kparam"] is not None]
    return {"slots": rows, "spearman": spearman([p[0] for p in paired], [p[1] for p in paired]) if paired else None,
            "slots_with_roi": len(paired)}


def episode_values(record: dict[str, Any]) -> dict[str, list[float]]:
    """Per round (in round order), the mean over its environments of: final accuracy, final params in use,
    accuracy per rent, and the gain over the round's paired static control. The environments of a round
    share the host's initial weights and data order, so rounds, not episodes, are the independent samples."""
    host = record["host_params"]
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in record["episodes"]:
        by_round[e["round"]].append(e)
    out: dict[str, list[float]] = {"metric": [], "params": [], "accuracy_per_rent": [], "gain_over_control": []}
    for r in sorted(by_round):
        episodes = by_round[r]
        out["metric"].append(statistics.fmean(e["metric"] for e in episodes))
        out["params"].append(statistics.fmean(e["params"] for e in episodes))
        out["accuracy_per_rent"].append(statistics.fmean(e["metric"] / rent_factor(e["params"], host) for e in episodes))
        if all(e.get("control_metric") is not None for e in episodes):
            out["gain_over_control"].append(statistics.fmean(e["metric"] - e["control_metric"] for e in episodes))
    return out


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, se = mean_se(diffs)
    return {"mean": mean, "stderr": se, "n": len(diffs)}


def derive(arm: dict[str, Any]) -> dict[str, Any]:
    """Everything the tables show for one arm that is computed from its raw record (``episodes``,
    ``seeds``, ``rounds``, ``slots``, ``slot_surfaces``, ``host_params``) rather than taken from
    ``arm_metrics``."""
    values = episode_values(arm)
    seeds = arm["seeds"]
    episodes = len(arm["episodes"])
    heavy = sum(s["family"] == HEAVY for s in seeds)
    grows = sum(s["grows"] for s in seeds)
    return {
        "surfaces": surface_table(arm),
        "slot_preference": slot_preference(arm),
        "heavy_germinations": heavy,
        "ladder_grows": grows,
        "heavy_per_episode": heavy / episodes if episodes else None,
        "grows_per_episode": grows / episodes if episodes else None,
        "mean": {key: mean_se(v)[0] for key, v in values.items()},
        "stderr": {key: mean_se(v)[1] for key, v in values.items()},
    }


def differences(arms: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Paired per-round differences (same round: same host initial weights and data order)."""
    pairs = [(arm, BASELINE_ARM) for arm in arms if arm != BASELINE_ARM and BASELINE_ARM in arms]
    pairs += [(a, b) for a, b in (("lattice_channel", "lattice_conv"), ("lattice_channel", "segments_channel"))
              if a in arms and b in arms]
    out = {}
    for a, b in pairs:
        x, y = episode_values(arms[a]), episode_values(arms[b])
        out[f"{a} - {b}"] = {key: paired(x[key], y[key]) for key in ("metric", "params", "accuracy_per_rent")
                             if x[key] and len(x[key]) == len(y[key])}
    return out


def summarize(exp_dir: Path, name: str, command: str) -> dict[str, Any]:
    from esper_core.experiments import arm_run_dirs, compare

    comparison = compare(exp_dir)
    runs = arm_run_dirs(exp_dir)
    arms: dict[str, Any] = {}
    for arm, metrics in comparison["arms"].items():
        record = arm_record(runs[arm])
        record["metrics"] = {k: v for k, v in metrics.items() if k != "run_dir"}
        record.update(derive(record))
        arms[arm] = record
    payload = {
        "experiment": comparison["experiment"],
        "name": name,
        "command": command,
        "arms": arms,
        "differences": differences(arms),
    }
    payload["criteria"] = criteria(payload)
    return payload


#: Per-record fields stored as columns (a header and one row per record) to keep the JSON small.
SEED_FIELDS = ("round", "slot", "surface", "family", "level", "max_level", "grows", "end", "contribution", "params")
EPISODE_FIELDS = ("round", "env", "metric", "val_loss", "params", "control_metric", "return")


def compact(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with every arm's ``seeds`` and ``episodes`` as ``{"fields": [...], "rows": [[...]]}``."""
    out = json.loads(json.dumps(payload))
    for arm in out["arms"].values():
        for key, fields in (("seeds", SEED_FIELDS), ("episodes", EPISODE_FIELDS)):
            arm[key] = {"fields": list(fields), "rows": [[record.get(f) for f in fields] for record in arm[key]]}
    return out


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``compact``: records as dictionaries again."""
    out = json.loads(json.dumps(payload))
    for arm in out["arms"].values():
        for key in ("seeds", "episodes"):
            table = arm[key]
            arm[key] = [dict(zip(table["fields"], row)) for row in table["rows"]]
    return out


def load_summary(path: Path) -> dict[str, Any]:
    """A summary JSON written by ``summarize``, records expanded."""
    return expand(json.loads(Path(path).read_text(encoding="utf-8")))


# -- exit criteria ---------------------------------------------------------------------------------


def per_slot_share(surfaces: dict[str, dict[str, Any]], surface: str, key: str) -> float | None:
    """``surface``'s share of germinations per slot: its germinations per slot (``key``) over the sum of
    every surface's germinations per slot. 0.5 between two surfaces is no preference, whatever the number
    of slots each has."""
    rates = {k: v[key] / v["slots"] for k, v in surfaces.items() if v["slots"]}
    total = sum(rates.values())
    return rates[surface] / total if total else None


def criteria(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Phase 2 exit criteria, each met or not met, from the summary alone (so a test can re-derive them).

    - ``surface_preference_tracks_roi``: in every lattice arm, the surface with the higher ROI of its
      ended seeds also took more germinations per slot than the other surface in the second half of the
      rounds (``per_slot_share`` > 0.5), and that share grew from the first half (a preference that
      formed, not the slot count or a tie broken by chance); only a policy that learns
      (``LEARNING_POLICIES``) can meet it.
    - ``internal_ops_replace_heavy_jumps``: in every arm, successful ladder grows outnumber conv_heavy
      germinations.
    - ``roi_improves``: accuracy per rent of the lattice + channel_ladder arm beats segments + conv_ladder
      by more than two paired standard errors.
    - ``governor_stable``: no rollbacks, gradient or policy anomalies, every arm completed.
    """
    arms = payload["arms"]
    out: dict[str, dict[str, Any]] = {}
    details = {}
    met = True
    lattice_arms = [a for a in arms if a.startswith("lattice")]
    for arm in lattice_arms:
        surfaces = {k: v for k, v in arms[arm]["surfaces"].items() if k in ("pre_pool", "post_pool")}
        rois = {k: v["roi_per_kparam"] for k, v in surfaces.items()}
        ok = False
        if len(surfaces) == 2 and all(v is not None for v in rois.values()):
            best = max(rois, key=lambda k: rois[k])
            late_share = per_slot_share(surfaces, best, "germinated_second_half")
            early_share = per_slot_share(surfaces, best, "germinated_first_half")
            learned = arms[arm].get("policy") in LEARNING_POLICIES
            ok = (learned and late_share is not None and early_share is not None and late_share > 0.5
                  and late_share > early_share)
            details[arm] = {"best_roi_surface": best, "roi": rois, "late_share_of_best": late_share,
                            "early_share_of_best": early_share, "learning_policy": learned, "met": ok}
        else:
            details[arm] = {"best_roi_surface": None, "roi": rois, "met": False}
        met = met and ok
    out["surface_preference_tracks_roi"] = {"met": bool(lattice_arms) and met, "arms": details}
    heavy = {arm: {"ladder_grows": a["ladder_grows"], "heavy_germinations": a["heavy_germinations"]} for arm, a in arms.items()}
    out["internal_ops_replace_heavy_jumps"] = {
        "met": all(v["ladder_grows"] > v["heavy_germinations"] for v in heavy.values()), "arms": heavy}
    diff = payload["differences"].get(f"lattice_channel - {BASELINE_ARM}", {}).get("accuracy_per_rent")
    roi_met = bool(diff and diff["stderr"] is not None and diff["mean"] > 2 * diff["stderr"])
    out["roi_improves"] = {"met": roi_met, "difference": diff}
    governor = {arm: {**a["governor"], "status": a["metrics"]["status"]} for arm, a in arms.items()}
    out["governor_stable"] = {
        "met": all(g["rollbacks"] == 0 and g["gradient_anomalies"] == 0 and g["policy_anomalies"] == 0
                   and g["status"] == "completed" for g in governor.values()),
        "arms": governor,
    }
    return out


# -- markdown --------------------------------------------------------------------------------------


def _f(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pm(mean: Any, se: Any, spec: str) -> str:
    if mean is None:
        return "-"
    return format(mean, spec) + ("" if se is None else " ± " + format(se, spec.replace("+", "")))


def markdown_tables(payload: dict[str, Any]) -> str:
    """The tables docs/phase2.md shows for one experiment summary (a pure function of the JSON)."""
    arms = payload["arms"]
    names = list(arms)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(arms[n]) for n in names) + " |")

    row("episodes (rounds × envs)", lambda a: str(len(a["episodes"])))
    row("policy updates", lambda a: str(a["policy_updates"]))
    row("wall time (one torch thread)", lambda a: _f(None if a["wall_seconds"] is None else a["wall_seconds"] / 60, ".1f") + " min")
    row("final accuracy (mean ± s.e. over rounds)", lambda a: _pm(a["mean"]["metric"], a["stderr"]["metric"], ".4f"))
    row("gain over the paired static control", lambda a: _pm(a["mean"]["gain_over_control"],
                                                            a["stderr"]["gain_over_control"], "+.4f"))
    row("final params in use (host + seeds)", lambda a: _f(a["mean"]["params"], ",.0f"))
    row("accuracy per rent (per episode, mean over rounds)", lambda a: _pm(a["mean"]["accuracy_per_rent"],
                                                        a["stderr"]["accuracy_per_rent"], ".4f"))
    row("mean return", lambda a: _f(a["metrics"]["mean_return"], ".3f"))
    row("germinated / fossilized / pruned", lambda a: f"{a['metrics']['germinated']} / {a['metrics']['fossilized']} / "
                                                      f"{a['metrics']['pruned']}")
    row("fossilize / prune ratio", lambda a: _f(a["metrics"]["fossilize_prune_ratio"], ".2f"))
    row("prunes after overshoot (rate per germination)",
        lambda a: f"{a['metrics']['overshoot_prunes']} ({_f(a['metrics']['overshoot_prune_rate'], '.2f')})")
    row("conv_heavy germinations (heavy share)",
        lambda a: f"{a['heavy_germinations']} ({_f(a['metrics']['heavy_share'], '.2f')})")
    row("ladder grows / shrinks", lambda a: f"{a['metrics']['internal_grows']} / {a['metrics']['internal_shrinks']}")
    row("heavy jumps / ladder grows per episode", lambda a: f"{_f(a['heavy_per_episode'], '.2f')} / "
                                                           f"{_f(a['grows_per_episode'], '.2f')}")
    row("mean level at fossilization", lambda a: _f(a["metrics"]["mean_level_at_fossilization"], ".2f"))
    row("mean ladder level over time (step:level)", lambda a: _level_path(a["metrics"]["level_time_series"]))
    row("germinations per surface", lambda a: _counts({k: v["germinated"] for k, v in a["surfaces"].items()}))
    row("slots per surface", lambda a: _counts({k: v["slots"] for k, v in a["surfaces"].items()}))
    row("germinations per surface, first → second half of the rounds",
        lambda a: _counts({k: f"{v['germinated_first_half']} → {v['germinated_second_half']}" for k, v in a["surfaces"].items()}))
    row("surviving fossils per surface", lambda a: _counts({k: v["fossils"] for k, v in a["surfaces"].items()}))
    row("ROI per surface (contribution per 1k params)",
        lambda a: _counts({k: _f(v["roi_per_kparam"], "+.3f") for k, v in a["surfaces"].items()}))
    row("slots: late germination share vs ROI (Spearman; slots with an ROI)",
        lambda a: f"{_f(a['slot_preference']['spearman'], '+.2f')} ({a['slot_preference']['slots_with_roi']})")
    row("rollbacks / gradient / policy anomalies",
        lambda a: f"{a['governor']['rollbacks']} / {a['governor']['gradient_anomalies']} / {a['governor']['policy_anomalies']}")
    row("op / slot / seed family head entropy (mean)", lambda a: _entropies(a["metrics"]["mean_head_entropy"]))
    row("the same, last update", lambda a: _entropies(a["metrics"]["final_head_entropy"]))
    lines.append("")
    lines.append("| paired difference (per round: same host init and data) | accuracy | params in use | accuracy per rent |")
    lines.append("|---|---|---|---|")
    for label, diff in payload["differences"].items():
        cells = [_pm(diff[k]["mean"], diff[k]["stderr"], f) if k in diff else "-"
                 for k, f in (("metric", "+.4f"), ("params", "+,.0f"), ("accuracy_per_rent", "+.4f"))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_criteria(payload: dict[str, Any]) -> str:
    """One line per exit criterion: met or not met, with the numbers it was decided on."""
    c = payload["criteria"]
    name = payload["name"]

    def verdict(key: str) -> str:
        return f"**{'met' if c[key]['met'] else 'not met'}**"

    surface = "; ".join(
        f"{arm}: best ROI {d['best_roi_surface'] or '-'}, its share per slot {_f(d.get('early_share_of_best'), '.2f')} → "
        f"{_f(d.get('late_share_of_best'), '.2f')}" + ("" if d.get("learning_policy", True) else " (the policy does not learn)")
        for arm, d in c["surface_preference_tracks_roi"]["arms"].items())
    heavy = "; ".join(f"{arm} {d['ladder_grows']} grows / {d['heavy_germinations']} heavy"
                      for arm, d in c["internal_ops_replace_heavy_jumps"]["arms"].items())
    diff = c["roi_improves"]["difference"]
    roi = "-" if not diff else f"lattice_channel − segments_conv accuracy per rent {_pm(diff['mean'], diff['stderr'], '+.4f')}"
    governor = c["governor_stable"]["arms"]
    stable = (f"{sum(g['rollbacks'] for g in governor.values())} rollbacks, "
              f"{sum(g['gradient_anomalies'] + g['policy_anomalies'] for g in governor.values())} anomalies, "
              f"{sum(g['status'] == 'completed' for g in governor.values())} of {len(governor)} arms completed")
    return "\n".join([
        f"- {name}, surface preference tracks ROI: {verdict('surface_preference_tracks_roi')} ({surface})",
        f"- {name}, internal ops replace heavy jumps: {verdict('internal_ops_replace_heavy_jumps')} ({heavy})",
        f"- {name}, ROI improves: {verdict('roi_improves')} ({roi})",
        f"- {name}, governor stable: {verdict('governor_stable')} ({stable})",
    ])


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _entropies(values: dict[str, float]) -> str:
    keys = [k for k in ("op", "slot", "blueprint") if k in values]
    return " / ".join(f"{values[k]:.2f}" for k in keys) if keys else "-"


def _level_path(series: list[list[float]]) -> str:
    if not series:
        return "-"
    picks = sorted({round(i * (len(series) - 1) / 4) for i in range(5)})
    return " ".join(f"{int(series[i][0])}:{series[i][1]:.2f}" for i in picks)


# -- command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the arms of one or more experiment files in parallel processes")
    p_run.add_argument("files", nargs="+", type=Path)
    p_run.add_argument("--jobs", type=int, default=2)
    p_run.add_argument("--work-dir", type=Path, default=None, help="output directory (default: the files' [run] output_dir)")
    p_run.add_argument("-s", "--set", action="append", default=[], help="SECTION.KEY=VALUE override for every file")
    p_run.add_argument("--arms", nargs="+", default=None, help="run only these arms")
    p_sum = sub.add_parser("summarize", help="write docs/data/phase2/experiment-NAME.json from an experiment directory")
    p_sum.add_argument("exp_dir", type=Path)
    p_sum.add_argument("--name", required=True)
    p_sum.add_argument("--json", type=Path, default=None)
    p_sum.add_argument("--plot", type=Path, default=None, help="copy comparison.png here")
    p_md = sub.add_parser("markdown", help="print the tables of a summary JSON")
    p_md.add_argument("json", type=Path)
    args = parser.parse_args(argv)
    command = "python benchmarks/phase2.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.command == "run":
        run(args.files, args.jobs, args.work_dir, args.set, args.arms)
    elif args.command == "summarize":
        payload = summarize(args.exp_dir, args.name, command)
        path = args.json or DATA_DIR / f"experiment-{args.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(compact(payload), separators=(",", ":")) + "\n", encoding="utf-8")
        print(f"written: {path}")
        if args.plot is not None:
            shutil.copyfile(args.exp_dir / "comparison.png", args.plot)
            print(f"written: {args.plot}")
        print(markdown_tables(payload))
        print(markdown_criteria(payload))
    else:
        payload = load_summary(args.json)
        print(markdown_tables(payload))
        print(markdown_criteria(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
