"""docs/benchmarks.md's Phase 2 tables are recomputed from the committed JSON under docs/data/phase2/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "data" / "phase2"
DOC = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
sys.path.insert(0, str(REPO / "benchmarks"))

import channels_last  # noqa: E402  (benchmarks/ is not a package)
import dormant_overhead  # noqa: E402


def _load(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def test_the_lattice_dormant_overhead_table_is_the_json():
    results = _load("dormant-overhead.json")
    assert {key.split("/")[1] for key in results["presets"]} == {"segments", "lattice"}
    assert dormant_overhead.markdown_table(results) in DOC


def test_the_dormant_lattice_meets_its_target_as_the_docs_say():
    results = _load("dormant-overhead.json")
    medians = [row["cases"]["dormant model"]["ratio_vs_bare"]["median"] for row in results["presets"].values()]
    assert max(medians) <= dormant_overhead.TARGET
    assert "**met** for all four" in DOC


def test_the_channels_last_table_is_the_json():
    results = _load("channels-last.json")
    assert channels_last.markdown_table(results) in DOC
    ratios = [case["ratio_channels_last_vs_contiguous"]["median"]
              for row in results["presets"].values() for case in row["ratios"].values()]
    assert max(ratios) < 1.0  # the docs say channels_last is faster on this CPU


def test_the_channel_ladder_table_is_the_json_and_the_verdict_follows_it():
    import channel_ladder_cost

    results = _load("channel-ladder-cost.json")
    assert channel_ladder_cost.markdown_table(results) in DOC
    medians = [row["cpu"]["ratio"]["median"] for key, row in results["rows"].items() if key.startswith("ladder@")]
    assert results["met"] == all(m <= channel_ladder_cost.TARGET for m in medians)
    verdict = "met" if results["met"] else "not met"
    assert f"**Target ≤ 1.05 at every level: {verdict}.**" in DOC


def test_the_prose_numbers_of_sections_9_to_11_are_the_json():
    import channel_ladder_cost

    dormant = _load("dormant-overhead.json")["presets"].values()
    medians = [row["cases"]["dormant model"]["ratio_vs_bare"]["median"] for row in dormant]
    assert f"(medians {min(medians):.2f}–{max(medians):.2f})" in DOC
    fixed = [row["fixed_cost_seconds_per_call"]["median"] * 1e6 for row in dormant]
    assert f"{min(fixed):.0f}–{max(fixed):.0f} µs per call" in DOC
    ratios = [case["ratio_channels_last_vs_contiguous"]["median"]
              for row in _load("channels-last.json")["presets"].values() for case in row["ratios"].values()]
    assert f"channels_last is {round((1 - max(ratios)) * 100, -1):.0f}–{round((1 - min(ratios)) * 100, -1):.0f} % faster" in DOC
    ladder = _load("channel-ladder-cost.json")
    change = ladder["rows"]["level_change_seconds"]["median"] * 1e6
    assert f"takes {change:.1f} µs ({ladder['rows']['level_change_per_step_at_level_1']:.4f} ×" in DOC
    missed = [key.split("@")[1].split("/")[0] for key, row in ladder["rows"].items()
              if key.startswith("ladder@") and row["cpu"]["ratio"]["median"] > channel_ladder_cost.TARGET]
    assert f"Level {', '.join(missed)} missed here." in DOC
