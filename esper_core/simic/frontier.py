"""The ``frontier`` reward: growth paid against a paired static control at a user-set price per parameter."""

from __future__ import annotations

import attrs

from esper_core.leyline import LIVE_STAGES, SeedStateReport
from esper_core.simic.rewards import RewardBreakdown, RewardContext, RewardSignals
from esper_core.simic.shaped import action_charge, churn_charge
from esper_core.validators import non_negative, non_negative_int, positive


@attrs.frozen
class FrontierRewardConfig:
    """Options of the ``frontier`` reward.

    ``price_per_kparam`` is the trade-off, and it is the user's: how much score one is willing to give
    for 1,000 fewer parameters in use (score units: accuracy as a fraction, or the log-loss score of a
    loss-based task, see ``TaskInfo.score``). 0.01 means "a network must gain one accuracy point (or
    about 1 % lower loss) per 1,000 parameters it adds". ``scale`` multiplies every term so that
    returns sit near 1 for typical gains (10: ten accuracy points = 1.0).

    ``reference_gain`` moves the yardstick from the host to the best static network at your price:
    ``max over static networks of (score - price x params) - (host's score - price x host params)``,
    which the growth benchmark measures for a regime (0 when the host is that best network, which holds
    when the price is at least the frontier's steepest slope from the host). It is charged once, on the
    terminal step, so an episode's margin is positive exactly when the grown network beats every static
    network of the measured frontier at your price.
    """

    price_per_kparam: float = attrs.field(default=0.01, validator=non_negative())
    scale: float = attrs.field(default=10.0, validator=positive())
    action_cost: float = attrs.field(default=0.005, validator=non_negative())
    invalid_action_cost: float = attrs.field(default=0.02, validator=non_negative())
    churn_cost: float = attrs.field(default=0.05, validator=non_negative())
    churn_window: int = attrs.field(default=4, validator=non_negative_int())
    reversal_cost: float = attrs.field(default=0.02, validator=non_negative())
    reversal_window: int = attrs.field(default=3, validator=non_negative_int())
    reference_gain: float = attrs.field(default=0.0, validator=non_negative())


def uncommitted(slots: tuple[SeedStateReport, ...]) -> list[SeedStateReport]:
    """Seeds still live (not fossilized) in ``slots``: they are not part of the episode's product."""
    return [report for report in slots if report.stage in LIVE_STAGES]


class FrontierReward:
    """Pays what growth adds over the static host, minus the price of the parameters it adds.

    The engine trains a **control**: the same host (same initial weights, same data order) that never
    grows, beside the episode's environments. With ``s`` the environment's score, ``c`` the control's,
    ``P`` the rent base (alpha x parameters in use for live seeds, parameters in use for fossils) and
    ``k = scale``, ``p = price_per_kparam / 1000``, every step pays:

    - ``growth``: ``k * ((s' - c') - (s - c))``, the change of the lead over the control;
    - ``rent``: ``-k * p * (P' - P)``, the price of parameters added (a refund when they leave);
    - ``commit`` (terminal step only): the episode's product is the host plus its **fossils**; each
      seed still live at the end is valued as if pruned: ``k * (-contribution + p * alpha * size)``,
      its measured counterfactual contribution taken back and its rent refunded, and ``reference_gain``
      is charged. FOSSILIZE is how a seed that has earned its place is kept; holding one to the end
      earns nothing;
    - ``action_cost``, ``churn``: small explicit charges (per non-WAIT op, per failed op, per seed
      removed within ``churn_window`` epochs of its germination, per level change reversed within
      ``reversal_window`` epochs).

    The growth and rent terms telescope from zero: the first reward of an episode (epoch 1) measures the
    lead and the parameters from the bare host (a lead of 0, no seed parameters), so a network that
    differs from the control from birth (``[morphogenesis] implants``) is paid and charged for it too.
    An episode's ``growth + rent + commit`` is ``k * [(s_T - c_T - live contributions) -
    p * (fossil parameters) - reference_gain]``: with ``reference_gain`` 0, positive exactly when the
    committed network beats the static host by more than the price of what it added — it lies above the line of slope ``p`` through the host's
    point, hence above the static frontier wherever that line is above the frontier (a concave frontier
    whose slope at the host is at most ``p``). A policy that never grows earns 0.
    """

    needs_control = True

    def __init__(self, config: FrontierRewardConfig, context: RewardContext) -> None:
        self.config = config
        self.context = context

    def compute(self, signals: RewardSignals) -> RewardBreakdown:
        config = self.config
        if signals.control_metric is None or signals.control_previous_metric is None:
            raise RuntimeError("the frontier reward needs the control environment's scores; the engine gave none")
        k = config.scale
        price = config.price_per_kparam / 1000.0
        lead = signals.metric - signals.control_metric
        if signals.epoch == 1:  # the episode's first reward: measure from the bare host at zero
            previous_params, previous_lead = 0.0, 0.0
        else:
            previous_params = sum(report.effective_params for report in signals.previous_slots)
            previous_lead = signals.previous_metric - signals.control_previous_metric
        commit = 0.0
        if signals.terminal:
            for report in uncommitted(signals.slots):
                contribution = report.metrics.counterfactual_contribution
                if contribution is None:
                    if report.alpha > 0.0:
                        raise RuntimeError(
                            f"seed {report.seed_id} in {report.slot_id} blends at alpha {report.alpha:g} but its "
                            "contribution was never measured"
                        )
                    contribution = 0.0
                commit += -contribution + price * report.effective_params
            commit -= config.reference_gain
        action_cost = action_charge(signals, config.action_cost, config.invalid_action_cost)
        churn = churn_charge(signals, churn_cost=config.churn_cost, churn_window=config.churn_window,
                             reversal_cost=config.reversal_cost, reversal_window=config.reversal_window)
        return RewardBreakdown.from_components(
            {
                "growth": k * (lead - previous_lead),
                "rent": -k * price * (signals.effective_seed_params - previous_params),
                "commit": k * commit,
                "action_cost": action_cost,
                "churn": churn,
            }
        )


#: The terms whose episode sum is the frontier margin (the rest are explicit charges).
MARGIN_TERMS: tuple[str, ...] = ("growth", "rent", "commit")
