"""docs/phase2.md's numbers are recomputed from the committed JSON under docs/data/phase2/, and its configs parse."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "data" / "phase2"
DOC_PATH = REPO / "docs" / "phase2.md"
sys.path.insert(0, str(REPO / "benchmarks"))

import growth  # noqa: E402  (benchmarks/ is not a package)
import phase2  # noqa: E402

FRONTIERS = sorted(DATA.glob("frontier-*.json"))
EXPERIMENTS = sorted(DATA.glob("experiment-*.json"))
CONFIGS = sorted((REPO / "examples" / "phase2").glob("*.toml"))


def doc() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


def test_the_compact_form_round_trips():
    payload = {"arms": {"a": {"seeds": [{f: index for index, f in enumerate(phase2.SEED_FIELDS)}],
                              "episodes": [{f: 0.5 for f in phase2.EPISODE_FIELDS}], "host_params": 3}}}
    assert phase2.expand(phase2.compact(payload)) == payload


def test_there_is_evidence_to_check():
    assert len(FRONTIERS) == 2, "expected the digits_deep and digits_shallow frontiers under docs/data/phase2"
    assert EXPERIMENTS, "no experiment JSON under docs/data/phase2"
    assert CONFIGS, "no configs under examples/phase2"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_phase2_config_validates_with_four_paired_arms(path):
    from esper_core.config import read_toml
    from esper_core.experiments import parse_experiment
    from esper_core.plugins import PluginManager

    experiment = parse_experiment(read_toml(path), PluginManager(), source=str(path))
    assert list(experiment.arms) == list(phase2.ARMS)
    layouts = {name: config.host.options.slot_layout for name, config in experiment.arms.items()}
    assert layouts == {"segments_conv": "segments", "segments_channel": "segments",
                       "lattice_conv": "lattice", "lattice_channel": "lattice"}
    seeds = {config.run.seed for config in experiment.arms.values()}
    assert len(seeds) == 1, "arms must run on the same seeds"
    for name, config in experiment.arms.items():
        ladder = "channel_ladder" if name.endswith("channel") else "conv_ladder"
        assert config.morphogenesis.seed_families == (ladder, "conv_heavy"), name


@pytest.mark.parametrize("path", FRONTIERS, ids=lambda p: p.stem)
def test_the_frontier_and_headroom_in_the_doc_are_the_json(path):
    frontier = json.loads(path.read_text())
    for name, row in frontier["frontier"].items():
        assert row["mean"] == pytest.approx(statistics.fmean(row["values"])), name
        se = statistics.stdev(row["values"]) / math.sqrt(len(row["values"]))
        assert row["stderr"] == pytest.approx(se), name
    headroom = frontier["headroom"]
    small, grown = frontier["frontier"][headroom["small"]], frontier["frontier"][headroom["grown_like"]]
    assert headroom["gain"] == pytest.approx(100 * (grown["mean"] - small["mean"]))
    assert headroom["met"] == (headroom["gain"] >= 10)
    assert growth.markdown_frontier(frontier) in doc(), f"docs/phase2.md lacks the frontier table of {path.name}"


def test_the_headroom_table_in_the_doc_is_the_json():
    frontiers = [json.loads(path.read_text()) for path in FRONTIERS]
    frontiers.sort(key=lambda f: f["regime"])
    assert growth.markdown_headroom(frontiers) in doc()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_each_arm_is_recomputed_from_its_episodes_and_seeds(path):
    payload = phase2.load_summary(path)
    assert list(payload["arms"]) == list(phase2.ARMS)
    for name, arm in payload["arms"].items():
        derived = json.loads(json.dumps(phase2.derive(arm)))
        for key, value in derived.items():
            assert _close(value, arm[key]), (name, key)
        metrics = arm["metrics"]
        assert metrics["germinated"] == len(arm["seeds"]), name
        assert metrics["fossilized"] >= sum(s["end"] == "fossilized" for s in arm["seeds"]), name
        assert metrics["internal_grows"] >= arm["ladder_grows"], name
        assert sum(v["germinated"] for v in arm["surfaces"].values()) == len(arm["seeds"]), name
        assert {k: v for k, v in metrics["surface_usage"].items() if v} == \
            {k: v["germinated"] for k, v in arm["surfaces"].items() if v["germinated"]}, name
        assert metrics["rollbacks"] == arm["governor"]["rollbacks"], name
        episodes = arm["episodes"]
        rounds = sorted({e["round"] for e in episodes})
        per_round = [statistics.fmean(e["metric"] for e in episodes if e["round"] == r) for r in rounds]
        assert arm["mean"]["metric"] == pytest.approx(statistics.fmean(per_round)), name


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_the_paired_differences_and_verdicts_follow_from_the_arms(path):
    payload = phase2.load_summary(path)
    assert _close(phase2.differences(payload["arms"]), payload["differences"])
    assert _close(phase2.criteria(payload), payload["criteria"])


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_the_tables_and_verdicts_in_the_doc_are_the_json(path):
    payload = phase2.load_summary(path)
    text = doc()
    assert phase2.markdown_tables(payload) in text, f"docs/phase2.md lacks the tables of {path.name}"
    assert phase2.markdown_criteria(payload) in text, f"docs/phase2.md lacks the verdicts of {path.name}"


def test_the_criteria_follow_their_definitions_on_a_synthetic_summary():
    """A criterion must be able to fail: a lattice arm whose better-ROI surface gets more germinations only
    because it has more slots does not meet the surface criterion; one whose heavy jumps outnumber its
    grows fails the ladder one; an ROI gain within two standard errors and a rollback fail theirs."""
    def arm(surfaces, heavy, grows, policy="ppo"):
        return {"policy": policy, "surfaces": surfaces, "heavy_germinations": heavy, "ladder_grows": grows,
                "governor": {"rollbacks": 0, "gradient_anomalies": 0, "policy_anomalies": 0},
                "metrics": {"status": "completed"}}

    good = {"pre_pool": {"slots": 1, "roi_per_kparam": 0.5, "germinated_first_half": 4, "germinated_second_half": 8},
            "post_pool": {"slots": 1, "roi_per_kparam": 0.1, "germinated_first_half": 4, "germinated_second_half": 2}}
    # more germinations on the better surface, but only because it has more slots: no preference per slot
    bad = {"pre_pool": {"slots": 3, "roi_per_kparam": 0.5, "germinated_first_half": 6, "germinated_second_half": 6},
           "post_pool": {"slots": 1, "roi_per_kparam": 0.1, "germinated_first_half": 2, "germinated_second_half": 2}}
    diff = {"accuracy_per_rent": {"mean": 0.03, "stderr": 0.01, "n": 10}}
    payload = {"arms": {"segments_conv": arm({}, 1, 3), "lattice_channel": arm(good, 0, 2)},
               "differences": {"lattice_channel - segments_conv": diff}}
    verdicts = phase2.criteria(payload)
    assert verdicts["surface_preference_tracks_roi"]["met"]
    assert verdicts["internal_ops_replace_heavy_jumps"]["met"]
    assert verdicts["roi_improves"]["met"]
    assert verdicts["governor_stable"]["met"]
    payload["arms"]["lattice_channel"] = arm(bad, 3, 2)
    payload["arms"]["segments_conv"]["governor"]["rollbacks"] = 1
    payload["differences"]["lattice_channel - segments_conv"] = {"accuracy_per_rent": {"mean": 0.01, "stderr": 0.01, "n": 10}}
    verdicts = phase2.criteria(payload)
    assert not any(v["met"] for v in verdicts.values())
    payload["arms"]["lattice_channel"] = arm(good, 0, 2, policy="heuristic")  # its slot choice is list order
    assert not phase2.criteria(payload)["surface_preference_tracks_roi"]["met"]


def test_spearman_is_rank_correlation():
    assert phase2.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert phase2.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert phase2.spearman([1, 1, 1], [1, 2, 3]) is None
