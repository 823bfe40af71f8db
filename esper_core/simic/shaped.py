"""The ``shaped`` and ``simplified`` reward modes: every term named, signed and documented."""

from __future__ import annotations

import attrs

from esper_core.leyline import (
    BLENDED_STAGES,
    LIVE_STAGES,
    LifecycleOp,
    SeedStage,
    SeedStateReport,
)
from esper_core.simic.rewards import RewardBreakdown, RewardContext, RewardSignals, parameter_rent
from esper_core.validators import finite, non_negative, non_negative_int, probability

#: Potential of a slot by stage for potential-based shaping: progress towards a useful fossil.
STAGE_POTENTIAL: dict[SeedStage, float] = {
    SeedStage.DORMANT: 0.0,
    SeedStage.GERMINATED: 0.2,
    SeedStage.TRAINING: 0.4,
    SeedStage.BLENDING: 0.6,
    SeedStage.HOLDING: 0.8,
    SeedStage.FOSSILIZED: 1.0,
    SeedStage.PRUNED: 0.0,
    SeedStage.EMBARGOED: 0.0,
    SeedStage.RESETTING: 0.0,
}

def stage_potential(slots: tuple[SeedStateReport, ...]) -> float:
    return sum(STAGE_POTENTIAL[report.stage] for report in slots)


def potential_shaping(previous: tuple[SeedStateReport, ...], current: tuple[SeedStateReport, ...], gamma: float) -> float:
    """``gamma * phi(s') - phi(s)``: leaves the optimal policy unchanged (Ng et al., 1999)."""
    return gamma * stage_potential(current) - stage_potential(previous)


def removed_seeds(previous: tuple[SeedStateReport, ...], current: tuple[SeedStateReport, ...]) -> list[SeedStateReport]:
    """Live seeds of ``previous`` that are gone in ``current`` (pruned), as their previous reports."""
    gone = []
    for before, after in zip(previous, current):
        if before.stage in LIVE_STAGES and (after.seed_id != before.seed_id or after.stage not in LIVE_STAGES | {SeedStage.FOSSILIZED}):
            gone.append(before)
    return gone


def alpha_shock(previous: tuple[SeedStateReport, ...], current: tuple[SeedStateReport, ...], host_params: int) -> float:
    """Sum over slots of (alpha change)^2 times the capacity in use relative to the host (>= 0)."""
    shock = 0.0
    for before, after in zip(previous, current):
        params = max(before.internal_effective_params, after.internal_effective_params)
        if params:
            shock += (after.alpha - before.alpha) ** 2 * params / host_params
    return shock


def internal_reversals(
    previous: tuple[SeedStateReport, ...], current: tuple[SeedStateReport, ...], window: int
) -> int:
    """Level changes this step that undo the seed's previous level change made fewer than ``window``
    epochs earlier (grow then shrink, or shrink then grow): capacity churn."""
    count = 0
    for before, after in zip(previous, current):
        if after.seed_id is None or after.seed_id != before.seed_id or after.internal_level == before.internal_level:
            continue
        direction = 1 if after.internal_level > before.internal_level else -1
        recent = before.epochs_since_internal_change is not None and before.epochs_since_internal_change < window
        if recent and before.internal_last_direction == -direction:
            count += 1
    return count


def action_charge(signals: RewardSignals, action_cost: float, invalid_action_cost: float) -> float:
    """``-action_cost`` for any non-WAIT op, ``-invalid_action_cost`` more when it failed (<= 0)."""
    if signals.action.op is LifecycleOp.WAIT:
        return 0.0
    return -action_cost - (0.0 if signals.action_success else invalid_action_cost)


def churn_charge(signals: RewardSignals, *, churn_cost: float, churn_window: int, reversal_cost: float,
                 reversal_window: int) -> float:
    """The churn price (<= 0): ``churn_cost`` per seed removed within ``churn_window`` epochs of its
    germination and ``reversal_cost`` per level change undoing the previous one within
    ``reversal_window`` epochs; nothing for a governor rollback."""
    if signals.rolled_back:
        return 0.0
    previous, current = signals.previous_slots, signals.slots
    churn = -churn_cost * sum(1 for r in removed_seeds(previous, current) if r.metrics.seed_age_epochs < churn_window)
    return churn - reversal_cost * internal_reversals(previous, current, reversal_window)


def bounded_attribution(report: SeedStateReport) -> float:
    """A blended seed's counterfactual contribution, bounded by its measured progress.

    Positive credit cannot exceed how much the metric has actually improved since the seed was
    germinated, so a seed cannot earn by making the host depend on it (removing it hurts) while the
    model as a whole got no better. Negative contributions pass through in full.
    """
    contribution = report.metrics.counterfactual_contribution
    if contribution is None or report.stage not in BLENDED_STAGES:
        return 0.0
    if contribution <= 0:
        return contribution
    progress = report.metrics.score_delta_since_germination
    return min(contribution, max(progress if progress is not None else 0.0, 0.0))


@attrs.frozen
class ShapedRewardConfig:
    """Options of the ``shaped`` reward. ``gamma`` should equal the learner's discount."""

    contribution_weight: float = attrs.field(default=5.0, validator=non_negative())
    metric_weight: float = attrs.field(default=2.0, validator=non_negative())
    stage_weight: float = attrs.field(default=0.1, validator=non_negative())
    gamma: float = attrs.field(default=0.99, validator=probability())
    rent_weight: float = attrs.field(default=0.5, validator=non_negative())
    rent_cap: float = attrs.field(default=1.0, validator=non_negative())
    shock_weight: float = attrs.field(default=1.0, validator=non_negative())
    action_cost: float = attrs.field(default=0.01, validator=non_negative())
    invalid_action_cost: float = attrs.field(default=0.05, validator=non_negative())
    churn_cost: float = attrs.field(default=0.2, validator=non_negative())
    churn_window: int = attrs.field(default=4, validator=non_negative_int())
    reversal_cost: float = attrs.field(default=0.05, validator=non_negative())
    reversal_window: int = attrs.field(default=3, validator=non_negative_int())
    terminal_weight: float = attrs.field(default=2.0, validator=non_negative())


class ShapedReward:
    """The full reward: attribution + metric gain + stage shaping - rent - shock - costs - churn + terminal.

    Terms (all in ``components``, summing to the total):

    - ``attribution``: ``contribution_weight`` x the sum of blended seeds' bounded attributions.
    - ``metric_gain``: ``metric_weight`` x (metric after - metric at the decision).
    - ``stage_shaping``: ``stage_weight`` x (gamma * phi(s') - phi(s)), phi = summed stage potentials.
    - ``rent``: -parameter_rent(effective seed params).
    - ``alpha_shock``: -``shock_weight`` x sum (delta alpha)^2 x parameters in use
      (``internal_effective_params``) / host params. A level change at constant alpha is not a
      shock: a ladder's new capacity enters without an output jump (the conformance kit checks it);
      its price is rent on the larger capacity and, if reversed soon, ``reversal_cost``.
    - ``action_cost``: -``action_cost`` for any non-WAIT op, -``invalid_action_cost`` more if it failed.
    - ``churn``: -``churn_cost`` per seed removed within ``churn_window`` epochs of its germination
      (germinate/prune farming), whoever removed it (the policy, or gate G0), and -``reversal_cost`` per
      internal level change that undoes the previous one within ``reversal_window`` epochs (grow/shrink
      oscillation); governor rollbacks are not charged.
    - ``terminal``: ``terminal_weight`` x the final metric, on the terminal step only.
    """

    def __init__(self, config: ShapedRewardConfig, context: RewardContext) -> None:
        self.config = config
        self.context = context

    def compute(self, signals: RewardSignals) -> RewardBreakdown:
        config = self.config
        previous, current = signals.previous_slots, signals.slots
        action_cost = action_charge(signals, config.action_cost, config.invalid_action_cost)
        churn = churn_charge(signals, churn_cost=config.churn_cost, churn_window=config.churn_window,
                             reversal_cost=config.reversal_cost, reversal_window=config.reversal_window)
        return RewardBreakdown.from_components(
            {
                "attribution": config.contribution_weight * sum(bounded_attribution(r) for r in current),
                "metric_gain": config.metric_weight * (signals.metric - signals.previous_metric),
                "stage_shaping": config.stage_weight * potential_shaping(previous, current, config.gamma),
                "rent": -parameter_rent(
                    signals.effective_seed_params, signals.host_params, weight=config.rent_weight, cap=config.rent_cap
                ),
                "alpha_shock": -config.shock_weight * alpha_shock(previous, current, signals.host_params),
                "action_cost": action_cost,
                "churn": churn,
                "terminal": config.terminal_weight * signals.metric if signals.terminal else 0.0,
            }
        )


@attrs.frozen
class SimplifiedRewardConfig:
    """Options of the ``simplified`` reward."""

    stage_weight: float = attrs.field(default=0.1, validator=non_negative())
    gamma: float = attrs.field(default=0.99, validator=probability())
    action_cost: float = attrs.field(default=0.01, validator=non_negative())
    terminal_weight: float = attrs.field(default=2.0, validator=non_negative())
    fossil_bonus: float = attrs.field(default=0.5, validator=non_negative())
    fossil_min_contribution: float = attrs.field(default=0.0, validator=finite())


class SimplifiedReward:
    """Stage shaping - a cost per non-WAIT action + terminal metric + a bonus per contributing fossil.

    ``fossil_bonus`` is paid on the terminal step for each fossilized seed whose contribution, measured
    before it was fossilized, exceeds ``fossil_min_contribution``.
    """

    def __init__(self, config: SimplifiedRewardConfig, context: RewardContext) -> None:
        self.config = config
        self.context = context

    def compute(self, signals: RewardSignals) -> RewardBreakdown:
        config = self.config
        terminal = 0.0
        fossils = 0.0
        if signals.terminal:
            terminal = config.terminal_weight * signals.metric
            contributing = [
                r for r in signals.slots
                if r.stage is SeedStage.FOSSILIZED
                and r.metrics.counterfactual_contribution is not None
                and r.metrics.counterfactual_contribution > config.fossil_min_contribution
            ]
            fossils = config.fossil_bonus * len(contributing)
        return RewardBreakdown.from_components(
            {
                "stage_shaping": config.stage_weight
                * potential_shaping(signals.previous_slots, signals.slots, config.gamma),
                "action_cost": -config.action_cost if signals.action.op is not LifecycleOp.WAIT else 0.0,
                "terminal": terminal,
                "fossil_bonus": fossils,
            }
        )
