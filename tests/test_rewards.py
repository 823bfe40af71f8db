"""Rewards: the sign and scale of every term of the basic, shaped and simplified modes."""

from __future__ import annotations

import math

import attrs
import pytest

from esper_core.leyline import FactoredAction, LifecycleOp, SeedMetrics, SeedStage, SeedStateReport
from esper_core.simic import (
    BasicReward,
    BasicRewardConfig,
    FrontierRewardConfig,
    RewardContext,
    RewardSignals,
    ShapedReward,
    ShapedRewardConfig,
    SimplifiedReward,
    SimplifiedRewardConfig,
    bounded_attribution,
    parameter_rent,
    potential_shaping,
)

HOST = 10_000
CONTEXT = RewardContext(episode_length=10, host_params=HOST, metric_name="accuracy")
WAIT = FactoredAction(op=LifecycleOp.WAIT)
GERMINATE = FactoredAction(op=LifecycleOp.GERMINATE)


def slot(stage=SeedStage.DORMANT, *, seed_id=None, alpha=0.0, params=0, contribution=None, progress=None, age=0,
         slot_id="r0c0", level=0, last_direction=0, since_change=None, in_use=None) -> SeedStateReport:
    return SeedStateReport(
        env_id=0, slot_id=slot_id, stage=stage, seed_id=seed_id, blueprint_id="b" if seed_id else None,
        alpha=alpha, seed_params=params, effective_params=alpha * params,
        internal_effective_params=params if in_use is None else in_use, internal_level=level,
        internal_kind="conv_stages" if level or last_direction else None, internal_max_level=4,
        internal_last_direction=last_direction, epochs_since_internal_change=since_change,
        metrics=SeedMetrics(counterfactual_contribution=contribution, score_delta_since_germination=progress,
                            seed_age_epochs=age),
    )


def signals(*, slots=(slot(),), previous=(slot(),), metric=0.5, previous_metric=0.5, action=WAIT, success=True,
            terminal=False, effective=0.0, rolled_back=False, control=None, control_previous=None) -> RewardSignals:
    return RewardSignals(
        env_id=0, epoch=3, episode_length=10, action=action, action_success=success, metric=metric,
        previous_metric=previous_metric, host_params=HOST, effective_seed_params=effective,
        slots=tuple(slots), previous_slots=tuple(previous), terminal=terminal, rolled_back=rolled_back,
        control_metric=control, control_previous_metric=control_previous,
    )


def shaped(**changes) -> ShapedReward:
    return ShapedReward(attrs.evolve(ShapedRewardConfig(), **changes), CONTEXT)


def test_components_sum_to_the_total():
    reward = shaped().compute(signals(metric=0.6, action=GERMINATE, effective=500.0, terminal=True))
    assert reward.total == pytest.approx(sum(reward.components.values()))


def test_parameter_rent_is_logarithmic_capped_and_non_negative():
    assert parameter_rent(0.0, HOST, weight=0.5, cap=1.0) == 0.0
    assert parameter_rent(HOST, HOST, weight=0.5, cap=1.0) == pytest.approx(0.5 * math.log(2))
    assert parameter_rent(1e12, HOST, weight=0.5, cap=1.0) == 1.0
    with pytest.raises(ValueError):
        parameter_rent(1.0, 0, weight=0.5, cap=1.0)


def test_metric_gain_has_the_sign_of_the_improvement():
    for reward in (BasicReward(BasicRewardConfig(), CONTEXT), shaped()):
        up = reward.compute(signals(metric=0.6, previous_metric=0.5)).components["metric_gain"]
        down = reward.compute(signals(metric=0.4, previous_metric=0.5)).components["metric_gain"]
        assert up > 0 > down and up == pytest.approx(-down)


def test_rent_grows_with_effective_parameters_and_is_negative():
    reward = shaped(rent_weight=0.5)
    small = reward.compute(signals(effective=100.0)).components["rent"]
    large = reward.compute(signals(effective=5000.0)).components["rent"]
    assert 0 > small > large
    assert large == pytest.approx(-0.5 * math.log1p(0.5))


def test_attribution_pays_contribution_but_never_more_than_progress():
    helpful = slot(SeedStage.HOLDING, seed_id="s", alpha=1.0, params=100, contribution=0.05, progress=0.08)
    inflated = slot(SeedStage.HOLDING, seed_id="s", alpha=1.0, params=100, contribution=0.30, progress=0.02)
    harmful = slot(SeedStage.BLENDING, seed_id="s", alpha=0.5, params=100, contribution=-0.04, progress=0.1)
    assert bounded_attribution(helpful) == pytest.approx(0.05)
    assert bounded_attribution(inflated) == pytest.approx(0.02)  # the host was made to depend on the seed
    assert bounded_attribution(harmful) == pytest.approx(-0.04)
    training = slot(SeedStage.TRAINING, seed_id="s", contribution=0.5, progress=0.5)
    assert bounded_attribution(training) == 0.0
    reward = shaped(contribution_weight=5.0)
    assert reward.compute(signals(slots=(helpful,), previous=(helpful,))).components["attribution"] == pytest.approx(0.25)
    assert reward.compute(signals(slots=(harmful,), previous=(harmful,))).components["attribution"] < 0


def test_stage_shaping_rewards_progress_and_is_potential_based():
    dormant = (slot(),)
    training = (slot(SeedStage.TRAINING, seed_id="s"),)
    holding = (slot(SeedStage.HOLDING, seed_id="s", alpha=1.0),)
    assert potential_shaping(training, holding, 0.99) > 0
    assert potential_shaping(holding, training, 0.99) < 0
    # the discounted sum telescopes to gamma^T phi(s_T) - phi(s_0): no policy can farm it
    path = [dormant, training, holding, training]
    gamma = 0.9
    total = sum(gamma**t * potential_shaping(a, b, gamma) for t, (a, b) in enumerate(zip(path, path[1:])))
    assert total == pytest.approx(gamma**3 * 0.4 - 0.0)


def test_alpha_shock_charges_sudden_alpha_changes_by_seed_size():
    before = (slot(SeedStage.BLENDING, seed_id="s", alpha=0.2, params=2000),)
    smooth = (slot(SeedStage.BLENDING, seed_id="s", alpha=0.3, params=2000),)
    jump = (slot(SeedStage.HOLDING, seed_id="s", alpha=1.0, params=2000),)
    reward = shaped(shock_weight=1.0)
    small = reward.compute(signals(slots=smooth, previous=before)).components["alpha_shock"]
    large = reward.compute(signals(slots=jump, previous=before)).components["alpha_shock"]
    assert 0 > small > large
    assert large == pytest.approx(-(0.8**2) * 2000 / HOST)


def test_action_costs_for_any_op_and_more_for_a_failed_one():
    reward = shaped(action_cost=0.01, invalid_action_cost=0.05)
    assert reward.compute(signals()).components["action_cost"] == 0.0
    assert reward.compute(signals(action=GERMINATE)).components["action_cost"] == pytest.approx(-0.01)
    assert reward.compute(signals(action=GERMINATE, success=False)).components["action_cost"] == pytest.approx(-0.06)


def test_churn_prices_early_prunes_but_not_governor_rollbacks():
    young = (slot(SeedStage.TRAINING, seed_id="s", params=100, age=2),)
    old = (slot(SeedStage.HOLDING, seed_id="s", params=100, age=9),)
    pruned = (slot(SeedStage.EMBARGOED, seed_id="s"),)
    reward = shaped(churn_cost=0.2, churn_window=4)
    assert reward.compute(signals(slots=pruned, previous=young)).components["churn"] == pytest.approx(-0.2)
    assert reward.compute(signals(slots=pruned, previous=old)).components["churn"] == 0.0
    assert reward.compute(signals(slots=pruned, previous=young, rolled_back=True)).components["churn"] == 0.0
    fossil = (slot(SeedStage.FOSSILIZED, seed_id="s", params=100, alpha=1.0),)
    held = (slot(SeedStage.HOLDING, seed_id="s", params=100, alpha=1.0, age=2),)
    assert reward.compute(signals(slots=fossil, previous=held)).components["churn"] == 0.0


def test_terminal_term_pays_the_final_metric_only_at_the_end():
    reward = shaped(terminal_weight=2.0)
    assert reward.compute(signals(metric=0.7)).components["terminal"] == 0.0
    assert reward.compute(signals(metric=0.7, terminal=True)).components["terminal"] == pytest.approx(1.4)


def test_simplified_reward_terms():
    reward = SimplifiedReward(SimplifiedRewardConfig(fossil_bonus=0.5, terminal_weight=2.0, action_cost=0.01), CONTEXT)
    good = slot(SeedStage.FOSSILIZED, seed_id="a", contribution=0.03, slot_id="r0c0")
    useless = slot(SeedStage.FOSSILIZED, seed_id="b", contribution=-0.01, slot_id="r0c1")
    final = reward.compute(signals(slots=(good, useless), previous=(good, useless), metric=0.8, terminal=True))
    assert final.components["fossil_bonus"] == pytest.approx(0.5)
    assert final.components["terminal"] == pytest.approx(1.6)
    step = reward.compute(signals(action=GERMINATE))
    assert step.components["action_cost"] == pytest.approx(-0.01) and step.components["fossil_bonus"] == 0.0
    assert set(step.components) == {"stage_shaping", "action_cost", "terminal", "fossil_bonus"}


def test_churn_prices_grow_shrink_reversals_inside_the_window():
    reward = shaped(reversal_cost=0.05, reversal_window=3, churn_cost=0.2)
    grown_recently = (slot(SeedStage.HOLDING, seed_id="s", alpha=1.0, params=100, level=2, last_direction=1, since_change=1),)
    shrunk = (slot(SeedStage.HOLDING, seed_id="s", alpha=1.0, params=100, level=1, last_direction=-1, since_change=0),)
    assert reward.compute(signals(slots=shrunk, previous=grown_recently)).components["churn"] == pytest.approx(-0.05)
    grown_long_ago = (slot(SeedStage.HOLDING, seed_id="s", alpha=1.0, params=100, level=2, last_direction=1, since_change=5),)
    assert reward.compute(signals(slots=shrunk, previous=grown_long_ago)).components["churn"] == 0.0
    grown_again = (slot(SeedStage.HOLDING, seed_id="s", alpha=1.0, params=100, level=3, last_direction=1, since_change=0),)
    assert reward.compute(signals(slots=grown_again, previous=grown_recently)).components["churn"] == 0.0


def test_rent_and_shock_use_the_capacity_in_use():
    before = (slot(SeedStage.BLENDING, seed_id="s", alpha=0.2, params=8000, in_use=1000, level=1),)
    after = (slot(SeedStage.HOLDING, seed_id="s", alpha=1.0, params=8000, in_use=1000, level=1),)
    shock = shaped(shock_weight=1.0).compute(signals(slots=after, previous=before)).components["alpha_shock"]
    assert shock == pytest.approx(-(0.8**2) * 1000 / HOST)


@pytest.mark.parametrize(
    ("config_class", "field", "value", "reason"),
    [
        (BasicRewardConfig, "metric_weight", math.inf, "must be a finite number >= 0, got inf"),
        (ShapedRewardConfig, "gamma", math.nan, "must be a finite number in [0, 1], got nan"),
        (ShapedRewardConfig, "churn_window", True, "must be an integer, got True"),
        (SimplifiedRewardConfig, "fossil_min_contribution", -math.inf, "must be a finite number, got -inf"),
        (FrontierRewardConfig, "scale", 0.0, "must be a finite number > 0, got 0.0"),
    ],
)
def test_reward_options_are_checked_by_the_shared_validators(config_class, field, value, reason):
    from esper_core.validators import InvalidValue

    with pytest.raises(InvalidValue) as raised:
        config_class(**{field: value})
    assert (raised.value.field, raised.value.reason) == (field, reason)
    assert str(raised.value) == f"{field} {reason}"
