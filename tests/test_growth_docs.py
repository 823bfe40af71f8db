"""docs/growth.md's numbers are recomputed from the committed JSON summaries under docs/data/growth/."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "data" / "growth"
DOC = (REPO / "docs" / "growth.md").read_text(encoding="utf-8")
sys.path.insert(0, str(REPO / "benchmarks"))

import growth  # noqa: E402  (benchmarks/ is not a package)

FRONTIERS = sorted(DATA.glob("frontier-*.json"))
RESULTS = sorted(DATA.glob("growth-*.json")) + sorted(DATA.glob("autoadvance-*.json"))


def test_there_is_evidence_to_check():
    assert FRONTIERS, "no frontier JSON under docs/data/growth"
    assert RESULTS, "no growth benchmark JSON under docs/data/growth"


@pytest.mark.parametrize("path", FRONTIERS, ids=lambda p: p.stem)
def test_the_frontier_table_in_the_docs_is_the_json(path):
    frontier = json.loads(path.read_text())
    for name, row in frontier["frontier"].items():
        assert row["mean"] == pytest.approx(statistics.fmean(row["values"]))
        if len(row["values"]) > 1:
            se = statistics.stdev(row["values"]) / math.sqrt(len(row["values"]))
            assert row["stderr"] == pytest.approx(se), name
    assert growth.markdown_frontier(frontier) in DOC, f"docs/growth.md lacks the frontier table of {path.name}"


@pytest.mark.parametrize("path", FRONTIERS, ids=lambda p: p.stem)
def test_the_headroom_verdict_follows_from_the_values(path):
    frontier = json.loads(path.read_text())
    headroom = frontier["headroom"]
    small, grown = frontier["frontier"][headroom["small"]], frontier["frontier"][headroom["grown_like"]]
    difference = grown["mean"] - small["mean"]
    assert headroom["difference"] == pytest.approx(difference)
    if frontier["higher_is_better"]:
        gain = 100 * difference
    else:
        gain = -100 * difference / small["mean"]
    assert headroom["gain"] == pytest.approx(gain)
    assert headroom["met"] == (gain >= 10)


def test_the_headroom_table_in_the_docs_is_the_json():
    frontiers = [json.loads(path.read_text()) for path in FRONTIERS]
    order = {"digits": 0, "shapes_deep": 1, "pydoc": 2}
    frontiers.sort(key=lambda f: order.get(f["regime"], 9))
    assert growth.markdown_headroom(frontiers) in DOC


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_the_results_table_in_the_docs_is_recomputed_from_the_episodes(path):
    payload = json.loads(path.read_text())
    rows = growth.episode_rows(payload)
    for name, values in rows.items():
        stored = payload["table"][name]["per_seed"]
        for key in ("score", "params", "return", "margin", "below_frontier"):
            assert values[key] == pytest.approx(stored[key]), (name, key)
    assert growth.markdown_table(payload) in DOC, f"docs/growth.md lacks the results table of {path.name}"


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_the_goal_verdicts_follow_from_the_table(path):
    payload = json.loads(path.read_text())
    rows = growth.episode_rows(payload)
    expected = growth.goals_of(rows, payload["frontier_host_params"], payload["metric_name"])
    ppo_below = statistics.fmean(rows["ppo"]["below_frontier"])
    if not expected["ppo_grows"]:  # a policy that never grows meets no frontier goal
        assert not expected["ppo_on_or_above_frontier"] and not expected["ppo_above_heuristic_vs_frontier"]
    else:
        assert expected["ppo_on_or_above_frontier"] == (ppo_below <= (0.01 if payload["metric_name"] != "val_loss" else 0.02))
    assert payload["goals"] == expected
    for goal, met in expected.items():
        assert f"`{goal}`: **{'met' if met else 'not met'}**" in DOC, f"docs/growth.md misstates {goal} for {path.stem}"
