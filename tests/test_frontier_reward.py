"""The ``frontier`` reward: term signs, the telescoping return, and the expected return of each action sequence."""

from __future__ import annotations

import attrs
import pytest

from esper_core.leyline import FactoredAction, LifecycleOp, SeedMetrics, SeedStage, SeedStateReport
from esper_core.simic import MARGIN_TERMS, FrontierReward, FrontierRewardConfig, RewardContext, RewardSignals

HOST = 4_000
CONTEXT = RewardContext(episode_length=12, host_params=HOST, metric_name="accuracy")
WAIT, GERMINATE, FOSSILIZE, PRUNE = (FactoredAction(op=op) for op in (
    LifecycleOp.WAIT, LifecycleOp.GERMINATE, LifecycleOp.FOSSILIZE, LifecycleOp.PRUNE))


def report(stage=SeedStage.DORMANT, *, alpha=0.0, size=0, contribution=None, age=0, seed_id="s0") -> SeedStateReport:
    live = stage not in (SeedStage.DORMANT, SeedStage.PRUNED, SeedStage.EMBARGOED)
    return SeedStateReport(
        env_id=0, slot_id="r0c0", stage=stage, seed_id=seed_id if live else None, blueprint_id="b" if live else None,
        alpha=alpha, seed_params=size if live else 0, internal_effective_params=size if live else 0,
        effective_params=(size if stage is SeedStage.FOSSILIZED else alpha * size) if live else 0.0,
        metrics=SeedMetrics(counterfactual_contribution=contribution, seed_age_epochs=age),
    )


@attrs.frozen
class Epoch:
    """One epoch of a simulated episode: the slot's state after validation and the decision taken then."""

    stage: SeedStage
    alpha: float
    action: FactoredAction
    age: int = 0


def simulate(epochs: list[Epoch], *, effect: float, size: int, config: FrontierRewardConfig,
             control_start: float = 0.40, control_slope: float = 0.01) -> tuple[float, float]:
    """Drive the reward through an episode in which a seed of known ``effect`` (score gained at alpha 1)
    and ``size`` lives in one slot; the control improves linearly. Returns (return, margin)."""
    reward = FrontierReward(config, CONTEXT)

    def state(t: int) -> tuple[float, float, SeedStateReport]:
        epoch = epochs[t]
        control = control_start + control_slope * t
        on = epoch.stage in (SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)
        contribution = effect * epoch.alpha if on else None
        slot = report(epoch.stage, alpha=epoch.alpha, size=size, contribution=contribution, age=epoch.age)
        return control + (contribution or 0.0), control, slot

    total = margin = 0.0
    for t in range(len(epochs) - 1):
        metric_before, control_before, slot_before = state(t)
        metric, control, slot = state(t + 1)
        breakdown = reward.compute(RewardSignals(
            env_id=0, epoch=t + 1, episode_length=len(epochs), action=epochs[t].action, action_success=True,
            metric=metric, previous_metric=metric_before, host_params=HOST,
            effective_seed_params=slot.effective_params, slots=(slot,), previous_slots=(slot_before,),
            terminal=t + 1 == len(epochs) - 1, rolled_back=False, control_metric=control,
            control_previous_metric=control_before,
        ))
        assert breakdown.total == pytest.approx(sum(breakdown.components.values()))
        total += breakdown.total
        margin += sum(breakdown.components[name] for name in MARGIN_TERMS)
    return total, margin


D, T, B, H, F, P = (SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING,
                    SeedStage.FOSSILIZED, SeedStage.PRUNED)


def episode(kind: str) -> list[Epoch]:
    """Twelve epochs; the seed germinates after epoch 1, trains 2 epochs, blends over 3, then holds."""
    grown = [Epoch(D, 0.0, WAIT), Epoch(D, 0.0, GERMINATE), Epoch(T, 0.0, WAIT, 1), Epoch(T, 0.0, WAIT, 2),
             Epoch(B, 1 / 3, WAIT, 3), Epoch(B, 2 / 3, WAIT, 4), Epoch(H, 1.0, WAIT, 5)]
    if kind == "never grow":
        return [Epoch(D, 0.0, WAIT)] * 12
    if kind == "hold to the end":
        return grown + [Epoch(H, 1.0, WAIT, 6 + i) for i in range(5)]
    if kind == "fossilize":
        return grown[:-1] + [Epoch(H, 1.0, FOSSILIZE, 5)] + [Epoch(F, 1.0, WAIT, 6 + i) for i in range(5)]
    if kind == "prune while training":
        return [Epoch(D, 0.0, WAIT), Epoch(D, 0.0, GERMINATE), Epoch(T, 0.0, PRUNE, 1)] + [Epoch(P, 0.0, WAIT)] * 9
    raise ValueError(kind)


CONFIG = FrontierRewardConfig(price_per_kparam=0.01, scale=10.0)
SIZE = 2_000  # its price: 0.02 of score (two accuracy points)


@pytest.mark.parametrize(
    ("kind", "effect", "expected_margin", "expected_charges"),
    [
        # never growing is the static host: nothing gained, nothing paid
        ("never grow", 0.05, 0.0, 0.0),
        # a seed held (not fossilized) to the end is not part of the product: its gain and rent are undone
        ("hold to the end", 0.05, 0.0, -CONFIG.action_cost),
        # fossilizing a seed that pays (5 points for 2 points of price) banks the difference
        ("fossilize", 0.05, 10.0 * (0.05 - 0.02), -2 * CONFIG.action_cost),
        # fossilizing a seed that does not pay (1 point for 2 points of price) loses the difference
        ("fossilize", 0.01, 10.0 * (0.01 - 0.02), -2 * CONFIG.action_cost),
        # germinate/prune farming: no margin, and the churn price
        ("prune while training", 0.05, 0.0, -2 * CONFIG.action_cost - CONFIG.churn_cost),
    ],
)
def test_expected_return_of_each_action_sequence(kind, effect, expected_margin, expected_charges):
    """The table in docs/growth.md: the return of an episode for a seed of known effect and size."""
    total, margin = simulate(episode(kind), effect=effect, size=SIZE, config=CONFIG)
    assert margin == pytest.approx(expected_margin, abs=1e-9)
    assert total == pytest.approx(expected_margin + expected_charges, abs=1e-9)


def test_fossilize_beats_holding_exactly_when_the_seed_pays_its_price():
    for effect in (0.005, 0.015, 0.025, 0.08):
        fossil, _ = simulate(episode("fossilize"), effect=effect, size=SIZE, config=CONFIG)
        held, _ = simulate(episode("hold to the end"), effect=effect, size=SIZE, config=CONFIG)
        pays = effect > CONFIG.price_per_kparam * SIZE / 1000
        assert (fossil > held) == pays, effect


def test_the_return_does_not_depend_on_how_fast_the_control_learns():
    """Only the lead over the control counts: the host's own learning earns nothing."""
    returns = {slope: simulate(episode("fossilize"), effect=0.05, size=SIZE, config=CONFIG, control_slope=slope)[0]
               for slope in (0.0, 0.01, 0.04)}
    assert returns[0.0] == pytest.approx(returns[0.01]) == pytest.approx(returns[0.04])


def test_a_higher_price_turns_a_paying_fossil_into_a_loss():
    cheap = attrs.evolve(CONFIG, price_per_kparam=0.01)
    dear = attrs.evolve(CONFIG, price_per_kparam=0.05)
    assert simulate(episode("fossilize"), effect=0.05, size=SIZE, config=cheap)[1] > 0
    assert simulate(episode("fossilize"), effect=0.05, size=SIZE, config=dear)[1] < 0


def test_term_signs():
    reward = FrontierReward(CONFIG, CONTEXT)
    base = dict(env_id=0, epoch=3, episode_length=12, action=WAIT, action_success=True, host_params=HOST,
                terminal=False, rolled_back=False)
    dormant = (report(),)
    # leading the control by more than before is paid; falling behind is charged
    ahead = reward.compute(RewardSignals(**base, metric=0.52, previous_metric=0.50, control_metric=0.51,
                                         control_previous_metric=0.50, effective_seed_params=0.0,
                                         slots=dormant, previous_slots=dormant))
    assert ahead.components["growth"] == pytest.approx(10.0 * 0.01)
    behind = reward.compute(RewardSignals(**base, metric=0.50, previous_metric=0.50, control_metric=0.51,
                                          control_previous_metric=0.50, effective_seed_params=0.0,
                                          slots=dormant, previous_slots=dormant))
    assert behind.components["growth"] == pytest.approx(-10.0 * 0.01)
    # adding parameters in use costs rent; removing them refunds it
    grown = (report(B, alpha=0.5, size=1000, contribution=0.0),)
    added = reward.compute(RewardSignals(**base, metric=0.5, previous_metric=0.5, control_metric=0.5,
                                         control_previous_metric=0.5, effective_seed_params=500.0,
                                         slots=grown, previous_slots=dormant))
    assert added.components["rent"] == pytest.approx(-10.0 * 0.01 * 0.5)
    removed = reward.compute(RewardSignals(**base, metric=0.5, previous_metric=0.5, control_metric=0.5,
                                           control_previous_metric=0.5, effective_seed_params=0.0,
                                           slots=(report(P),), previous_slots=grown))
    assert removed.components["rent"] == pytest.approx(+10.0 * 0.01 * 0.5)
    # a failed op costs more than a successful one
    failed = reward.compute(RewardSignals(**{**base, "action": GERMINATE, "action_success": False}, metric=0.5,
                                          previous_metric=0.5, control_metric=0.5, control_previous_metric=0.5,
                                          effective_seed_params=0.0, slots=dormant, previous_slots=dormant))
    assert failed.components["action_cost"] == pytest.approx(-CONFIG.action_cost - CONFIG.invalid_action_cost)


def test_the_reward_refuses_to_run_without_the_control():
    reward = FrontierReward(CONFIG, CONTEXT)
    with pytest.raises(RuntimeError, match="control"):
        reward.compute(RewardSignals(
            env_id=0, epoch=1, episode_length=12, action=WAIT, action_success=True, metric=0.5,
            previous_metric=0.5, host_params=HOST, effective_seed_params=0.0, slots=(report(),),
            previous_slots=(report(),), terminal=False, rolled_back=False, control_metric=None,
            control_previous_metric=None,
        ))


# -- through the engine: the paired control -------------------------------------------------------


def _events(run_dir):
    from esper_core.telemetry.report import read_events

    return read_events(run_dir / "events.jsonl")


def test_a_policy_that_never_grows_earns_exactly_nothing(toy_manager, toy_config):
    """The control is paired (same host init and data order), so an environment that only WAITs tracks
    it bit for bit: every growth term is 0 and ROUND_COMPLETED's control metric equals its metric."""
    from esper_core.tolaria.engine import start_run

    run_dir = start_run(toy_config(reward={"name": "frontier"}), toy_manager)
    records = _events(run_dir)
    rewards = [r["data"] for r in records if r["event"] == "REWARD_COMPUTED"]
    assert rewards and all(r["reward"] == 0.0 for r in rewards)
    finished = next(r["data"] for r in records if r["event"] == "ROUND_COMPLETED")
    assert finished["final_metrics"] == [finished["control_metric"]] * 2
    assert finished["mean_return"] == 0.0
    epochs = {r["data"]["env_id"] for r in records if r["event"] == "EPOCH_COMPLETED"}
    assert epochs == {0, 1}  # the control (env 2) emits no per-epoch record


def test_growth_is_paid_as_the_lead_over_the_control(toy_manager, toy_config):
    """A fossilizing script's return is k x (lead over the control at the end - price x fossil size)."""
    from esper_core.tolaria.engine import start_run
    from tests.test_tolaria import LIFECYCLE_SCRIPT

    price = 0.02
    config = toy_config(reward={"name": "frontier", "price_per_kparam": price},
                        policy={"name": "scripted", "script": LIFECYCLE_SCRIPT})
    records = _events(start_run(config, toy_manager))
    finished = next(r["data"] for r in records if r["event"] == "ROUND_COMPLETED")
    last = {r["data"]["env_id"]: r["data"] for r in records if r["event"] == "EPOCH_COMPLETED"}
    for env_id in (0, 1):
        margin = sum(
            sum(r["data"]["components"][term] for term in MARGIN_TERMS)
            for r in records if r["event"] == "REWARD_COMPUTED" and r["data"]["env_id"] == env_id
        )
        lead = last[env_id]["val_metric"] - finished["control_metric"]
        expected = 10.0 * (lead - price / 1000 * last[env_id]["fossilized_params"])
        assert last[env_id]["fossilized_params"] > 0
        assert margin == pytest.approx(expected, abs=1e-9)


def test_a_run_with_a_control_resumes_exactly(toy_manager, toy_config):
    from esper_core.errors import RunAborted
    from esper_core.tolaria.engine import resume_run, start_run
    from tests.test_tolaria import LIFECYCLE_SCRIPT, comparable

    sections = {"reward": {"name": "frontier"}, "policy": {"name": "scripted", "script": LIFECYCLE_SCRIPT}}
    reference = start_run(toy_config(run={"rounds": 2}, **sections), toy_manager)
    created = []
    with pytest.raises(RunAborted):
        start_run(toy_config(run={"rounds": 2}, faults={"abort": {"round": 1, "epoch": 4}}, **sections),
                  toy_manager, on_run_dir=created.append)
    resumed = resume_run(created[0], toy_manager)
    assert comparable(_events(resumed)) == comparable(_events(reference))


# -- implants: a grown architecture trained from scratch ------------------------------------------


def test_implants_build_a_static_network_with_seeds_from_birth(toy_manager, toy_config):
    from esper_core.tolaria.engine import start_run

    plain = _events(start_run(toy_config(), toy_manager))
    implanted_config = toy_config(morphogenesis={"implants": [{"slot": "r0c1", "seed_family": "toy_ladder", "level": 2}]})
    implanted = _events(start_run(implanted_config, toy_manager))
    size = lambda records: next(r["data"] for r in records if r["event"] == "ROUND_COMPLETED")["final_params"]
    host = next(r["data"] for r in plain if r["event"] == "RUN_STARTED")["host_params"]
    assert size(plain) == [host, host]
    from tests import toy_plugin

    from esper_core.tolaria.engine import prepare

    channels = prepare(implanted_config, toy_manager).slot_config.channels_map["r0c1"]
    in_use = toy_plugin.ToyLadder(channels).internal_effective_params(2)
    assert size(implanted) == [host + in_use] * 2
    first = lambda records: [r["data"]["train_loss"] for r in records if r["event"] == "EPOCH_COMPLETED"]
    assert first(plain)[:2] != first(implanted)[:2]  # the implant trains from the first step
    assert not [r for r in implanted if r["event"] in ("SEED_GERMINATED", "SEED_FOSSILIZED")]


def test_a_bad_implant_is_a_config_error_naming_it(toy_manager, toy_config):
    from esper_core.errors import ConfigError
    from esper_core.tolaria.engine import prepare

    config = toy_config(morphogenesis={"implants": [
        {"slot": "r9c9", "seed_family": "toy_ladder"}, {"slot": "r0c1", "seed_family": "nope"},
        {"slot": "r0c0", "seed_family": "toy_ladder", "level": 9}]})
    with pytest.raises(ConfigError) as caught:
        prepare(config, toy_manager)
    text = "\n".join(caught.value.problems)
    assert "implants[0]: slot 'r9c9'" in text and "implants[1]" in text and "implants[2]: level 9" in text


def test_reference_gain_moves_the_yardstick_to_the_best_static_network():
    """With the best static network's advantage over the host charged, the margin is positive exactly
    when the grown network beats that network at the price."""
    for effect, beats in ((0.05, True), (0.03, False)):
        config = attrs.evolve(CONFIG, reference_gain=0.02)  # the best static net leads the host by 0.02 at this price
        _, margin = simulate(episode("fossilize"), effect=effect, size=SIZE, config=config)
        assert margin == pytest.approx(10.0 * (effect - 0.02 - 0.02))
        assert (margin > 0) == beats
    never, _ = simulate(episode("never grow"), effect=0.05, size=SIZE, config=attrs.evolve(CONFIG, reference_gain=0.02))
    assert never == pytest.approx(-0.2)


def test_the_control_of_an_implanted_run_is_the_bare_host(toy_manager, toy_config):
    """Implants are built into the run's environments, never into the paired control."""
    from esper_core.tolaria.engine import start_run

    plain = _events(start_run(toy_config(reward={"name": "frontier"}), toy_manager))
    implanted = _events(start_run(toy_config(
        reward={"name": "frontier"},
        morphogenesis={"implants": [{"slot": "r0c1", "seed_family": "toy_ladder", "level": 2}]}), toy_manager))
    round_of = lambda records: next(r["data"] for r in records if r["event"] == "ROUND_COMPLETED")
    assert round_of(implanted)["control_metric"] == round_of(plain)["control_metric"] == round_of(plain)["final_metrics"][0]
    assert round_of(implanted)["final_params"][0] > round_of(plain)["final_params"][0]


def test_an_implanted_network_is_charged_its_parameters_and_paid_its_lead_from_the_first_step(toy_manager, toy_config):
    """Implants differ from the control from birth: the first reward measures from the bare host, so the
    episode's margin is still k x (final lead - price x size in use) (minus the reference gain)."""
    from esper_core.tolaria.engine import start_run

    price = 0.02
    records = _events(start_run(toy_config(
        reward={"name": "frontier", "price_per_kparam": price},
        morphogenesis={"implants": [{"slot": "r0c1", "seed_family": "toy_ladder", "level": 2}]}), toy_manager))
    finished = next(r["data"] for r in records if r["event"] == "ROUND_COMPLETED")
    last = {r["data"]["env_id"]: r["data"] for r in records if r["event"] == "EPOCH_COMPLETED"}
    for env_id in (0, 1):
        margin = sum(sum(r["data"]["components"][t] for t in MARGIN_TERMS)
                     for r in records if r["event"] == "REWARD_COMPUTED" and r["data"]["env_id"] == env_id)
        expected = 10.0 * (last[env_id]["val_metric"] - finished["control_metric"]
                           - price / 1000 * last[env_id]["fossilized_params"])
        assert last[env_id]["fossilized_params"] > 0
        assert margin == pytest.approx(expected, abs=1e-9)


# -- auto_advance: one decision fewer per seed -----------------------------------------------------


def test_auto_advance_blends_a_training_seed_as_soon_as_gate_g1_passes():
    import attrs as _attrs

    from tests.conftest import make_slot
    from tests.test_kasmina import germinate

    for auto in (False, True):
        slot = make_slot(min_training=1)
        slot.settings = _attrs.evolve(slot.settings, auto_advance=auto)
        assert germinate(slot, target=1.0, blend_epochs=2).success
        slot.tick()  # GERMINATED -> TRAINING
        assert slot.stage is SeedStage.TRAINING
        slot.tick()  # gate G1 passes: auto_advance moves on by itself
        assert slot.stage is (SeedStage.BLENDING if auto else SeedStage.TRAINING)


def test_with_auto_advance_germinate_and_fossilize_are_enough(toy_manager, toy_config):
    from esper_core.tolaria.engine import start_run

    script = {"1": {"op": 1, "slot": 1, "tempo": 0, "alpha_target": 2}, "6": {"op": 5, "slot": 1}}  # no ADVANCE
    records = _events(start_run(toy_config(policy={"name": "scripted", "script": script},
                                           morphogenesis={"auto_advance": True}), toy_manager))
    assert len([r for r in records if r["event"] == "SEED_FOSSILIZED"]) == 2  # one per environment
    without = _events(start_run(toy_config(policy={"name": "scripted", "script": script}), toy_manager))
    assert not [r for r in without if r["event"] == "SEED_FOSSILIZED"]


def test_with_auto_advance_advance_is_masked_because_it_could_only_fail(toy_manager, toy_config):
    from esper_core.leyline import LifecycleOp, SeedStage
    from esper_core.tamiyo.masks import compute_masks
    from esper_core.testing import slot_report
    from esper_core.tolaria.engine import start_run

    training = [slot_report(0, SeedStage.TRAINING)]
    assert compute_masks([training], num_seed_families=1, max_seeds=2).op[0, LifecycleOp.ADVANCE]
    masked = compute_masks([training], num_seed_families=1, max_seeds=2, auto_advance=True)
    assert not masked.op[0, LifecycleOp.ADVANCE] and not masked.slot[0, LifecycleOp.ADVANCE].any()
    assert masked.op[0, LifecycleOp.PRUNE]  # the other ops of a TRAINING seed stay

    script = {"1": {"op": 1, "slot": 1, "tempo": 0, "alpha_target": 2}, "2": {"op": 2, "slot": 1}}
    records = _events(start_run(toy_config(policy={"name": "scripted", "script": script},
                                           morphogenesis={"auto_advance": True}), toy_manager))
    advances = [r["data"] for r in records if r["event"] == "ACTION_TAKEN" and r["data"]["action"]["op"] == "ADVANCE"]
    assert advances and all(a["reason"] == "masked: executed as WAIT" for a in advances)
