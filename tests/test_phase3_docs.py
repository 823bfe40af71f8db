"""docs/phase3.md's numbers are recomputed from the committed JSON under docs/data/phase3/, and its configs parse."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "data" / "phase3"
DOC_PATH = REPO / "docs" / "phase3.md"
sys.path.insert(0, str(REPO / "benchmarks"))

import phase3  # noqa: E402  (benchmarks/ is not a package)

EXPERIMENTS = sorted(DATA.glob("experiment-*.json"))
CONFIGS = sorted((REPO / "examples" / "phase3").glob("*.toml"))


def doc() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


def test_there_are_configs_and_a_doc():
    assert CONFIGS, "no configs under examples/phase3"
    assert DOC_PATH.exists()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_phase3_config_validates_with_paired_arms(path):
    from esper_core.config import read_toml
    from esper_core.experiments import parse_experiment
    from esper_core.plugins import PluginManager

    # parsing does not read the task's data, so the TinyStories variant (not run: no local copy) validates too
    experiment = parse_experiment(read_toml(path), PluginManager(), source=str(path))
    names = list(experiment.arms)
    assert names == [n for n in phase3.ARM_ORDER if n in names], "arms in the table's order"
    assert {"ladder_only", "subtargets"} <= set(names), "the paired arms without and with subtarget ops"
    assert len({config.run.seed for config in experiment.arms.values()}) == 1, "arms must run on the same seeds"
    families = {config.morphogenesis.seed_families for config in experiment.arms.values()}
    assert len(families) == 1, "every arm offers the same seed families"
    assert all(config.run.torch_threads == 1 for config in experiment.arms.values())
    policies = {name: config.policy for name, config in experiment.arms.items()}
    if "adalora" in policies:
        assert policies["adalora"].name == "adalora_schedule"
        assert not policies["adalora"].options.subtarget_ops, "the baseline's only subtarget ops are its schedule"
    if policies["subtargets"].name == "ppo":
        assert policies["subtargets"].options.subtarget_unlock_round == 0
        assert policies["ladder_only"].options.subtarget_unlock_round > experiment.arms["ladder_only"].run.rounds
    else:
        assert policies["subtargets"].options.subtarget_ops and not policies["ladder_only"].options.subtarget_ops
    if "static" in policies:
        assert policies["static"].options.warmup_epochs > experiment.arms["static"].run.episode_length, \
            "the static arm never germinates"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_each_arm_is_recomputed_from_its_raw_record(path):
    payload = json.loads(path.read_text())
    for name, arm in payload["arms"].items():
        derived = json.loads(json.dumps(phase3.derive(arm)))
        for key, value in derived.items():
            assert _close(value, arm[key]), (name, key)
        assert arm["mean"]["metric"] == pytest.approx(statistics.fmean(e["metric"] for e in arm["episodes"])), name
        assert arm["subtarget_ops"] == sum(e["subtarget_ops"] for e in arm["episodes"]), name
        assert arm["subtarget_ops"] == arm["subtarget_changes"]["enable"] + arm["subtarget_changes"]["disable"], name
        assert all(e["params"] == e["params_series"][-1] for e in arm["episodes"]), name


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
    payload = json.loads(path.read_text())
    assert _close(phase3.differences(payload["arms"]), payload["differences"])
    assert _close(phase3.criteria(payload), payload["criteria"])


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_the_tables_and_verdicts_in_the_doc_are_the_json(path):
    payload = json.loads(path.read_text())
    text = doc()
    assert phase3.markdown_tables(payload) in text, f"docs/phase3.md lacks the tables of {path.name}"
    assert phase3.markdown_criteria(payload) in text, f"docs/phase3.md lacks the verdicts of {path.name}"


# -- the analysis itself, on synthetic records -----------------------------------------------------


def _arm(qualities, params, *, sub_ops=0, ladder=False, host=100):
    episodes = [{"round": i, "env": 0, "metric": q, "val_loss": 1.0 - q, "params": p, "params_series": [host, p],
                 "subtarget_ops": sub_ops, "internal_ops": 0, "return": None}
                for i, (q, p) in enumerate(zip(qualities, params))]
    arm = {"host_params": host, "score_basis": "metric", "episodes": episodes, "seeds": [],
           "ops": {"ENABLE_SUBTARGET": {"decisions": sub_ops * len(episodes), "succeeded": sub_ops * len(episodes)},
                   "WAIT": {"decisions": 10, "succeeded": 10}},
           "subtarget_changes": {"enable": sub_ops * len(episodes), "disable": 0},
           "updates": [], "anomalies": [], "metrics": {}, "head_sizes": {"subtarget": 4}}
    arm.update(phase3.derive(arm))
    return arm


def test_the_criteria_follow_their_definitions_on_synthetic_arms():
    """Each criterion can fail: more params, a quality loss beyond the tolerance, no ops, a collapsed head."""
    ladder = _arm([0.80, 0.82, 0.81, 0.79], [200, 210, 205, 190])
    sub = _arm([0.80, 0.815, 0.81, 0.79], [150, 160, 150, 140], sub_ops=1)
    ada = _arm([0.78, 0.80, 0.80, 0.77], [160, 170, 160, 150])
    payload = {"arms": {"ladder_only": ladder, "subtargets": sub, "adalora": ada}}
    payload["differences"] = phase3.differences(payload["arms"])
    verdicts = phase3.criteria(payload)
    assert verdicts["subtarget_ops_used"]["met"]
    assert verdicts["params_decrease_without_quality_loss"]["met"]
    assert verdicts["beats_adalora_at_equal_quality"]["met"]
    assert "no_persistent_head_collapse" not in verdicts  # the heuristic reports no head entropies

    worse = _arm([0.70, 0.72, 0.71, 0.69], [150, 160, 150, 140], sub_ops=0)
    payload = {"arms": {"ladder_only": ladder, "subtargets": worse, "adalora": ada}}
    payload["differences"] = phase3.differences(payload["arms"])
    verdicts = phase3.criteria(payload)
    assert not verdicts["subtarget_ops_used"]["met"]
    assert not verdicts["params_decrease_without_quality_loss"]["met"]
    assert not verdicts["beats_adalora_at_equal_quality"]["met"]

    bigger = _arm([0.80, 0.82, 0.81, 0.79], [250, 260, 255, 240], sub_ops=1)
    payload = {"arms": {"ladder_only": ladder, "subtargets": bigger}}
    payload["differences"] = phase3.differences(payload["arms"])
    assert not phase3.criteria(payload)["params_decrease_without_quality_loss"]["met"]


def test_persistent_collapse_of_the_subtarget_head_is_caught():
    """Collapse is judged from the reported entropies against the core's bound, 0.05 x ln K nats."""
    arm = _arm([0.8, 0.8], [100, 100], sub_ops=1)
    arm["head_sizes"] = {"subtarget": 4}
    bound = 0.05 * math.log(4)

    def judge(values):
        arm["updates"] = [{"round": r, "entropy": {"op": 1.0, "subtarget": v}} for r, v in enumerate(values)]
        arm.update(phase3.derive(arm))
        return phase3.criteria({"arms": {"subtargets": arm}, "differences": {}})["no_persistent_head_collapse"]

    verdict = judge([1.0, bound / 2, bound / 2, bound / 2, 1.0])
    assert not verdict["met"] and verdict["subtarget"]["collapse"]["longest_run"] == 3
    assert verdict["subtarget"]["collapse"]["bound"] == pytest.approx(bound)
    assert judge([1.0, bound / 2, bound / 2, 1.0, 1.0])["met"]
    assert not judge([1.0, 1.0, 1.0, 1.0, bound / 2])["met"], "collapsed at the last update"
    arm["updates"] = [{"round": 0, "entropy": {"op": 1.0}}]
    arm.update(phase3.derive(arm))
    verdict = phase3.criteria({"arms": {"subtargets": arm}, "differences": {}})["no_persistent_head_collapse"]
    assert not verdict["met"], "a head that was never reported is no evidence of health"


def test_arm_record_reads_subtarget_events(tmp_path):
    """The reader counts subtarget changes per episode and follows a seed's size through them."""
    def line(event, **data):
        return json.dumps({"event": event, "time": 0.0, "data": data})

    base = {"env_id": 0, "round": 0}
    seed = {**base, "slot_id": "r0c1", "seed_id": "s1", "blueprint_id": "head_group_attention"}
    lines = [
        line("RUN_STARTED", host_params=100, score_basis="loss", policy="heuristic", rounds=1, envs=1,
             episode_length=2, slots=["r0c1"], slot_surfaces=["post_attn"]),
        line("SEED_GERMINATED", **seed, epoch=0, seed_params=40, subtarget_active_count=4),
        line("ACTION_TAKEN", **base, epoch=0, action={"op": "GERMINATE"}, success=True, reason=""),
        line("EPOCH_COMPLETED", **base, epoch=0, host_params=100, seed_params=40, fossilized_params=0,
             val_metric=0.3, val_loss=2.0),
        line("ACTION_TAKEN", **base, epoch=1, action={"op": "DISABLE_SUBTARGET"}, success=True, reason=""),
        line("SEED_SUBTARGET_CHANGED", **seed, epoch=1, subtarget_idx=2, enabled=False,
             subtarget_active_count=3, internal_effective_params=30),
        line("ACTION_TAKEN", **base, epoch=1, action={"op": "DISABLE_SUBTARGET"}, success=False, reason="x"),
        line("EPOCH_COMPLETED", **base, epoch=1, host_params=100, seed_params=30, fossilized_params=0,
             val_metric=0.31, val_loss=1.9),
        '{"event": "RUN_FINI',  # a torn last line
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines), encoding="utf-8")
    record = phase3.arm_record(tmp_path)
    record.update(phase3.derive(record))
    assert record["seeds"][0]["params"] == 30 and record["seeds"][0]["active_groups"] == 3
    assert record["subtarget_changes"] == {"enable": 0, "disable": 1}
    assert record["subtarget_ops"] == 1 and record["subtarget_ops_tried"] == 2
    assert record["invalid_action_rate"] == pytest.approx(1 / 3)
    assert record["episodes"][0]["params_series"] == [140, 130]
    assert record["mean"]["quality"] == pytest.approx(-1.9)  # loss-scored: quality is minus the loss
    assert record["mean"]["quality_per_rent"] == pytest.approx(1.9 * (1 + math.log1p(0.3)))


SUMMARY_ORDER = ("cnn-heuristic", "cnn-heuristic-price2", "cnn-ppo", "pydoc-heuristic", "pydoc-ppo")


def test_the_summary_of_verdicts_in_the_doc_is_the_json():
    payloads = [json.loads((DATA / f"experiment-{name}.json").read_text()) for name in SUMMARY_ORDER
                if (DATA / f"experiment-{name}.json").exists()]
    if len(payloads) < len(SUMMARY_ORDER):
        pytest.skip("not every experiment of the summary has its JSON")
    assert phase3.markdown_summary_rows(payloads) in doc()
