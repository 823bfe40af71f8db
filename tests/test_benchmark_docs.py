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
