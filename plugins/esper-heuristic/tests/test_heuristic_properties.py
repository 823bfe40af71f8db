"""Hypothesis property tests: both policies only emit allowed actions; random is reproducible and covers every allowed op."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core.leyline import CAUSAL_RELEVANCE, AlphaCurve, AlphaSpeed, LifecycleOp, SeedStage
from esper_core.tamiyo import ActionMasks, EnvObservation
from esper_heuristic import HeuristicConfig, HeuristicPolicy, RandomPolicy, RandomPolicyConfig

PROPERTY_SETTINGS = settings(max_examples=80, deadline=None)
#: The scenario kit's action space (checked against the ``kit`` fixture in every test).
NUM_SLOTS = 3
NUM_SEED_FAMILIES = 3
EPISODE_LENGTH = 40

# Strategies draw plain descriptions (indices, numbers); ``materialize`` turns them into observations
# and masks with the kit's builders (conftest is not importable under --import-mode=importlib).


@st.composite
def slot_states(draw: st.DrawFn, slot: int, env_id: int) -> dict[str, Any]:
    stage = draw(st.sampled_from(SeedStage))
    return {
        "slot": slot,
        "stage": stage,
        "contribution": draw(st.none() | st.floats(-0.3, 0.3, allow_nan=False)),
        "epochs_in_stage": draw(st.integers(0, 8)),
        "family_index": draw(st.integers(0, NUM_SEED_FAMILIES - 1)),
        "seed_id": f"e{env_id}-s{slot}-{draw(st.integers(0, 2))}",
        "blend_out": stage is SeedStage.BLENDING and draw(st.booleans()),
        "env_id": env_id,
    }


@st.composite
def environment_batches(draw: st.DrawFn, n_envs: int) -> dict[str, Any]:
    """One epoch for ``n_envs`` environments in random slot states."""
    epoch = draw(st.integers(0, EPISODE_LENGTH - 1))
    metric = st.floats(0.0, 1.0, allow_nan=False)
    return {
        "epoch": epoch,
        "max_seeds": draw(st.integers(1, NUM_SLOTS)),
        "seed_family_allowed": draw(
            st.none()
            | st.lists(
                st.lists(st.booleans(), min_size=NUM_SEED_FAMILIES, max_size=NUM_SEED_FAMILIES),
                min_size=NUM_SLOTS, max_size=NUM_SLOTS,
            )
        ),
        "envs": [
            {
                "slots": [draw(slot_states(slot, env_id)) for slot in range(NUM_SLOTS)],
                "history": tuple(draw(st.lists(metric, min_size=epoch + 1, max_size=epoch + 1))),
            }
            for env_id in range(n_envs)
        ],
    }


@st.composite
def episodes(draw: st.DrawFn, max_epochs: int = 4) -> tuple[int, list[dict[str, Any]]]:
    n_envs = draw(st.integers(1, 3))
    return n_envs, draw(st.lists(environment_batches(n_envs), min_size=1, max_size=max_epochs))


heuristic_options = st.fixed_dictionaries(
    {
        "prune_threshold": st.floats(0.0, 0.1),
        "prune_alpha_speed": st.sampled_from([speed.name.lower() for speed in AlphaSpeed]),
        "prune_alpha_curve": st.sampled_from([curve.name.lower() for curve in AlphaCurve]),
        "fossilize_threshold": st.floats(0.0, 0.2),
        "holding_patience": st.integers(1, 4),
        "min_training_epochs": st.integers(0, 4),
        "warmup_epochs": st.integers(0, 6),
        "plateau_window": st.integers(1, 5),
        "plateau_delta": st.floats(0.0, 0.5),
        "seed_family_cooldown_epochs": st.integers(0, 5),
    }
)
family_preferences = st.permutations(range(NUM_SEED_FAMILIES)).flatmap(
    lambda order: st.integers(0, NUM_SEED_FAMILIES).map(lambda count: tuple(order[:count]))
)


def materialize(kit, batch: dict[str, Any]) -> tuple[list[EnvObservation], ActionMasks]:
    assert (len(kit.slot_ids), len(kit.seed_families), kit.episode_length) == (NUM_SLOTS, NUM_SEED_FAMILIES, EPISODE_LENGTH)
    observations = []
    for env_id, env in enumerate(batch["envs"]):
        slots = {}
        for state in env["slots"]:
            options = dict(state)
            options["seed_family"] = kit.seed_families[options.pop("family_index")]
            slots[state["slot"]] = kit.slot(options.pop("slot"), options.pop("stage"), **options)
        observations.append(
            kit.observation(
                epoch=batch["epoch"], slots=slots, metric_history=env["history"], env_id=env_id,
                max_seeds=batch["max_seeds"],
            )
        )
    masks = kit.masks(observations, max_seeds=batch["max_seeds"], seed_family_allowed=batch["seed_family_allowed"])
    return observations, masks


def _assert_allowed_and_pinned(actions, masks: ActionMasks) -> None:
    assert len(actions) == masks.num_envs
    for env, action in enumerate(actions):
        assert masks.allows(env, action), (env, action)
        for head, value in action.head_values().items():
            if head not in CAUSAL_RELEVANCE[action.op]:
                assert value == 0, (action, head)


@PROPERTY_SETTINGS
@given(options=heuristic_options, preference=family_preferences, episode=episodes())
def test_heuristic_only_emits_allowed_actions(kit, options, preference, episode):
    n_envs, batches = episode
    config = HeuristicConfig(seed_families=tuple(kit.seed_families[index] for index in preference), **options)
    policy = HeuristicPolicy(config, kit.context(n_envs=n_envs))
    policy.begin_episode(0, n_envs)
    for batch in batches:
        observations, masks = materialize(kit, batch)
        _assert_allowed_and_pinned(policy.act(observations, masks), masks)


@PROPERTY_SETTINGS
@given(
    wait_probability=st.none() | st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    episode=episodes(),
)
def test_random_only_emits_allowed_actions(kit, wait_probability, seed, episode):
    n_envs, batches = episode
    policy = RandomPolicy(RandomPolicyConfig(wait_probability=wait_probability), kit.context(seed=seed))
    policy.begin_episode(0, n_envs)
    for batch in batches:
        observations, masks = materialize(kit, batch)
        _assert_allowed_and_pinned(policy.act(observations, masks), masks)


@PROPERTY_SETTINGS
@given(seed=st.integers(0, 2**31 - 1), episode=episodes(max_epochs=6), split=st.integers(0, 6))
def test_random_is_reproducible_from_its_seed_and_from_a_restored_state(kit, seed, episode, split):
    n_envs, descriptions = episode
    batches = [materialize(kit, batch) for batch in descriptions]
    split = min(split, len(batches))

    def fresh(run_seed: int) -> RandomPolicy:
        policy = RandomPolicy(RandomPolicyConfig(), kit.context(seed=run_seed))
        policy.begin_episode(0, n_envs)
        return policy

    first, second = fresh(seed), fresh(seed)
    first_actions = [first.act(observations, masks) for observations, masks in batches]
    assert [second.act(observations, masks) for observations, masks in batches] == first_actions

    interrupted = fresh(seed)
    for observations, masks in batches[:split]:
        interrupted.act(observations, masks)
    resumed = fresh(seed + 1)
    resumed.load_state_dict(interrupted.state_dict())
    assert [resumed.act(observations, masks) for observations, masks in batches[split:]] == first_actions[split:]


@settings(max_examples=25, deadline=None)
@given(batch=environment_batches(n_envs=1), seed=st.integers(0, 2**31 - 1))
def test_random_covers_every_allowed_op_and_every_valid_slot(kit, batch, seed):
    observations, masks = materialize(kit, batch)
    policy = RandomPolicy(RandomPolicyConfig(), kit.context(seed=seed))
    policy.begin_episode(0, 1)
    slots_by_op: dict[LifecycleOp, set[int]] = defaultdict(set)
    for _ in range(600):
        action = policy.act(observations, masks)[0]
        slots_by_op[action.op].add(action.slot)
    allowed_ops = {op for op in LifecycleOp if bool(masks.op[0, int(op)])}
    assert set(slots_by_op) == allowed_ops
    for op in allowed_ops - {LifecycleOp.WAIT}:
        valid_slots = {slot for slot in range(NUM_SLOTS) if bool(masks.slot[0, int(op), slot])}
        assert slots_by_op[op] == valid_slots, op


@PROPERTY_SETTINGS
@given(options=heuristic_options, episode=episodes(max_epochs=6), split=st.integers(0, 6))
def test_heuristic_resumes_exactly_from_a_restored_state(kit, options, episode, split):
    n_envs, descriptions = episode
    batches = [materialize(kit, batch) for batch in descriptions]
    split = min(split, len(batches))

    def fresh() -> HeuristicPolicy:
        policy = HeuristicPolicy(HeuristicConfig(**options), kit.context(n_envs=n_envs))
        policy.begin_episode(0, n_envs)
        return policy

    uninterrupted = fresh()
    expected = [uninterrupted.act(observations, masks) for observations, masks in batches]
    interrupted = fresh()
    for observations, masks in batches[:split]:
        interrupted.act(observations, masks)
    resumed = fresh()
    resumed.load_state_dict(interrupted.state_dict())
    assert [resumed.act(observations, masks) for observations, masks in batches[split:]] == expected[split:]
    assert resumed.state_dict() == uninterrupted.state_dict()
