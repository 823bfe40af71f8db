"""Anomaly detection on synthetic numbers: gradient pathologies per seed and host segment, and the
policy's entropy collapse, value-loss blow-up and KL spikes (read by the metrics contract)."""

from __future__ import annotations

import math

import pytest

from esper_core.leyline import SeedStage, TelemetryEventType
from esper_core.leyline.telemetry import GradientAnomalyPayload, PolicyAnomalyPayload
from esper_core.telemetry.anomalies import (
    AnomalyThresholds,
    GradientNorm,
    action_head_sizes,
    anomaly_events,
    detect_gradient_anomalies,
    detect_policy_anomalies,
)

DEFAULTS = AnomalyThresholds()
WHERE = {"env_id": 1, "round_index": 2, "epoch": 3}


def seed(norm: float, stage: SeedStage = SeedStage.TRAINING, slot: str = "r0c0") -> GradientNorm:
    return GradientNorm.seed(slot, norm, seed_id=f"seed-{slot}", stage=stage)


def kinds(found: list) -> list[tuple[str, str | None]]:
    return [(p.kind, getattr(p, "name", None) or getattr(p, "head", None)) for p in found]


def test_healthy_gradients_give_no_anomaly() -> None:
    norms = [GradientNorm.host_segment("host", 3.2), seed(0.5), seed(1e-3, SeedStage.BLENDING, "r0c1")]
    assert detect_gradient_anomalies(norms, DEFAULTS, **WHERE) == []


def test_each_gradient_pathology_is_found_once_with_its_threshold() -> None:
    norms = [
        GradientNorm.host_segment("host", math.nan),
        GradientNorm.host_segment("block2", 5e3),
        seed(math.inf, slot="a"),
        seed(2e3, slot="b"),
        seed(0.0, slot="c"),
        seed(1e-9, slot="d"),
        seed(0.0, SeedStage.HOLDING, slot="e"),  # a blended seed is not judged dead: small alpha, small gradient
        seed(1e-9, SeedStage.BLENDING, slot="f"),
    ]
    found = detect_gradient_anomalies(norms, DEFAULTS, **WHERE)
    assert kinds(found) == [
        ("non_finite", "host"), ("exploding", "block2"), ("non_finite", "a"), ("exploding", "b"),
        ("dead_seed", "c"), ("vanishing", "d"),
    ]
    assert found[1] == GradientAnomalyPayload(
        env_id=1, round=2, epoch=3, where="host_segment", name="block2", kind="exploding", value=5e3, threshold=1e3
    )
    assert found[0].threshold is None and math.isnan(found[0].value)
    assert found[5].threshold == 1e-7 and found[5].seed_id == "seed-d" and found[5].where == "seed"


def test_thresholds_move_the_boundaries() -> None:
    strict = AnomalyThresholds(exploding_grad_norm=1.0, vanishing_grad_norm=0.1)
    assert kinds(detect_gradient_anomalies([seed(1.5), seed(0.05, slot="x")], strict, **WHERE)) == [
        ("exploding", "r0c0"), ("vanishing", "x")
    ]
    assert detect_gradient_anomalies([seed(1.0), seed(0.1, slot="x")], strict, **WHERE) == []  # bounds are strict


def test_gradient_norm_records_need_a_stage_exactly_for_seeds() -> None:
    with pytest.raises(ValueError, match="needs its stage"):
        GradientNorm("seed", "r0c0", 1.0)
    with pytest.raises(ValueError, match="needs its stage"):
        GradientNorm("host_segment", "host", 1.0, stage=SeedStage.TRAINING)
    with pytest.raises(ValueError, match="where must be one of seed, host_segment"):
        GradientNorm("optimizer", "adam", 1.0)


def test_entropy_collapse_is_judged_against_the_head_size() -> None:
    sizes = action_head_sizes(n_slots=1, n_seed_families=4)
    assert sizes["op"] == 10 and sizes["slot"] == 1 and sizes["blueprint"] == 4 and sizes["subtarget"] == 1
    assert action_head_sizes(n_slots=1, n_seed_families=4, subtarget_count=6)["subtarget"] == 6
    metrics = {
        "entropy/op": 0.05,         # bound 0.05 * ln 10 = 0.115: collapsed
        "entropy/subtarget": 0.0,   # a size-1 head (no inventories): always 0 nats, not judged
        "entropy/blueprint": 0.08,  # bound 0.05 * ln 4 = 0.069: fine
        "entropy/slot": 0.0,        # one slot: always 0 nats, not judged
        "entropy/mystery": 0.005,   # size unknown: bound 0.01 nats
        "entropy": 0.135,           # the whole action's entropy is not a head
        "ppo/explained_variance": -3.0,
    }
    found = detect_policy_anomalies(metrics, [], DEFAULTS, round_index=4, head_sizes=sizes)
    assert kinds(found) == [("entropy_collapse", "op"), ("entropy_collapse", "mystery")]
    assert found[0] == PolicyAnomalyPayload(round=4, kind="entropy_collapse", value=0.05,
                                            threshold=pytest.approx(0.05 * math.log(10)), head="op")
    assert found[1].threshold == 0.01
    without_sizes = detect_policy_anomalies({"entropy/op": 0.05}, [], DEFAULTS, round_index=4)
    assert without_sizes == [], "without sizes every head is judged in nats: 0.05 > 0.01"


def test_value_loss_blowup_needs_history_and_compares_with_the_running_median() -> None:
    history = [1.0, 2.0, 100.0, 1.5]  # median 1.75 despite the outlier
    assert detect_policy_anomalies({"value_loss": 17.0}, history, DEFAULTS, round_index=5) == []
    found = detect_policy_anomalies({"value_loss": 18.0}, history, DEFAULTS, round_index=5)
    assert found == [PolicyAnomalyPayload(round=5, kind="value_loss_blowup", value=18.0, threshold=17.5)]
    assert detect_policy_anomalies({"value_loss": 1e6}, [1.0, 1.0], DEFAULTS, round_index=5) == [], "2 < min history 3"
    non_finite = detect_policy_anomalies({"value_loss": math.nan}, [], DEFAULTS, round_index=0)
    assert [p.kind for p in non_finite] == ["value_loss_blowup"] and non_finite[0].threshold is None
    windowed = AnomalyThresholds(value_loss_window=3, value_loss_min_history=3)
    # only the last 3 values count: median of (10, 10, 10) = 10, so 50 is no blow-up; over all values it would be
    assert detect_policy_anomalies({"value_loss": 50.0}, [1.0, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0], windowed,
                                   round_index=9) == []
    assert detect_policy_anomalies({"value_loss": 50.0}, [1.0, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0], DEFAULTS,
                                   round_index=9)[0].threshold == 10.0


def test_kl_spike() -> None:
    assert detect_policy_anomalies({"approx_kl": 0.1}, [], DEFAULTS, round_index=0) == []
    found = detect_policy_anomalies({"approx_kl": 0.3, "clip_fraction": 0.4}, [], DEFAULTS, round_index=0)
    assert found == [PolicyAnomalyPayload(round=0, kind="kl_spike", value=0.3, threshold=0.1)]
    assert detect_policy_anomalies({}, [1.0, 2.0, 3.0], DEFAULTS, round_index=0) == [], "a policy that does not learn"


def test_payloads_become_events_of_their_type() -> None:
    found = [*detect_gradient_anomalies([seed(0.0)], DEFAULTS, **WHERE),
             *detect_policy_anomalies({"approx_kl": 1.0}, [], DEFAULTS, round_index=0)]
    events = anomaly_events(found)
    assert [e.event_type for e in events] == [TelemetryEventType.GRADIENT_ANOMALY, TelemetryEventType.POLICY_ANOMALY]
    assert [e.payload for e in events] == found


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"exploding_grad_norm": 0.0}, "exploding_grad_norm must be a finite number > 0"),
        ({"kl_spike": math.inf}, "kl_spike must be a finite number > 0"),
        ({"entropy_collapse_fraction": 1.0}, r"entropy_collapse_fraction must be a finite number in \(0, 1\)"),
        ({"value_loss_window": 0}, "value_loss_window must be >= 1"),
        ({"value_loss_window": 2, "value_loss_min_history": 3}, "must not exceed value_loss_window"),
        ({"vanishing_grad_norm": 10.0, "exploding_grad_norm": 5.0}, "must be below exploding_grad_norm"),
    ],
)
def test_thresholds_reject_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AnomalyThresholds(**changes)
