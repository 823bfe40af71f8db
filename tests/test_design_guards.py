"""The guards against the prior implementation's known faults (docs/design.md, section 4), each tested on
the real CNN and transformer hosts through the engine; ``ESPER_MUTATION`` re-introduces one fault
(``tests/mutation_check.py`` shows that every guard test then fails)."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

from esper_core.config import parse_config
from esper_core.leyline import AlphaSpeed, AlphaTarget, BlendStyle, LifecycleOp, SeedStage, Tempo
from esper_core.plugins import PluginManager
from esper_core.telemetry.report import read_events
from esper_core.tolaria.engine import Engine, start_run
from esper_core.tolaria.environment import Environment
from esper_core.testing import toy_plugin

REPO = Path(__file__).resolve().parents[1]
MUTATION_ENV = "ESPER_MUTATION"

#: The reward term paying the score's change, and the PPO update's metrics the guards read.
GAIN_TERM = "metric_gain"
CLIP_FRACTION, APPROX_KL = "clip_fraction", "approx_kl"
EPOCHS_RUN, MINIBATCH_STEPS = "charts/update_epochs_run", "charts/minibatch_steps"

#: Stages whose seed is blended in or fossilized: each gets a counterfactual ablation.
ABLATED_STAGES = (SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)


def _manager() -> PluginManager:
    """Every installed plugin plus the testing kit's toy plugin (its scripted policy and memory sink)."""
    return PluginManager(extra=[toy_plugin])


def _installed() -> set[str]:
    return {plugin.name for plugin in _manager().plugins}


pytestmark = pytest.mark.skipif(
    not {"cnn", "vision", "transformer", "text", "ppo"} <= _installed(),
    reason="the first-party cnn, vision, transformer, text and ppo plugins are not installed (run scripts/bootstrap)",
)


# -- the real hosts, tiny -----------------------------------------------------------------------------


@attrs.frozen
class HostCase:
    """A real host on a real task, as small as the tests allow: three slots, a few epochs."""

    name: str
    task: dict[str, Any]
    host: dict[str, Any]
    seed_family: str
    #: the task's score is -ln(validation loss) (language modelling) rather than its metric
    loss_based: bool


HOSTS = {
    "cnn": HostCase(
        name="cnn",
        task={"name": "shapes", "train_size": 64, "val_size": 64},
        host={"name": "cnn", "channels": [8, 8, 8], "pool": [True, True, False]},
        seed_family="conv_light",
        loss_based=False,
    ),
    "transformer": HostCase(
        name="transformer",
        task={"name": "pydoc", "context_length": 16, "max_train_windows": 64, "max_val_windows": 32},
        host={"name": "transformer", "n_layer": 2, "d_model": 16, "n_head": 2, "slot_layout": "lattice"},
        seed_family="mlp_small",
        loss_based=True,
    ),
}
HOST_NAMES = tuple(HOSTS)

HOST_LR = 0.05
SEED_LR = 0.02
EMBARGO_EPOCHS = 2
EPISODE_LENGTH = 13
#: environment 1 gets a NaN in its host at this epoch: the governor rolls it back (the optimizers are rebuilt)
NAN_EPOCH = 9


def run_data(case: HostCase, output_dir: Path, *, policy: dict[str, Any], envs: int = 2,
             episode_length: int = EPISODE_LENGTH, reward: str = "shaped", **sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "run": {"name": f"guards-{case.name}", "envs": envs, "episode_length": episode_length, "rounds": 1,
                "checkpoint_every": 0, "torch_threads": 1, "output_dir": str(output_dir)},
        "task": dict(case.task),
        "host": dict(case.host),
        "training": {"batch_size": 32, "batches_per_epoch": 2, "eval_batch_size": 128, "lr_schedule": "constant",
                     "host_lr": HOST_LR, "seed_lr": SEED_LR},
        "morphogenesis": {"seed_families": [case.seed_family], "min_training_epochs": 1, "embargo_epochs": EMBARGO_EPOCHS},
        "policy": policy,
        "reward": {"name": reward},
        "sinks": {"memory": {}},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def act(op: LifecycleOp, slot: int, **heads: int) -> dict[str, int]:
    return {"op": int(op), "slot": slot, "blueprint": 0, **{name: int(value) for name, value in heads.items()}}


# One op per epoch (the key: the epoch after whose validation it is decided), the same for every
# environment. Slots are indices in slot order: 0 is the first slot, so every host parameter that
# only feeds it is upstream of the seed grown there. A FAST blend takes 3 ticks; embargo lasts 2.
FULL_SEED, HALF_SEED, YOUNG_SEED = 0, 1, 2
GERMINATE_FULL = act(LifecycleOp.GERMINATE, FULL_SEED, style=BlendStyle.ADD, tempo=Tempo.FAST, alpha_target=AlphaTarget.FULL)
LIFECYCLE_SCRIPT = {
    "0": GERMINATE_FULL,
    "1": act(LifecycleOp.ADVANCE, FULL_SEED),  # BLENDING at 1, 2, 3: HOLDING at alpha 1 after epoch 3's tick
    "2": act(LifecycleOp.GERMINATE, HALF_SEED, style=BlendStyle.ADD, tempo=Tempo.FAST, alpha_target=AlphaTarget.HALF),
    "3": act(LifecycleOp.ADVANCE, HALF_SEED),  # HOLDING at alpha 0.5 after epoch 5's tick
    "4": act(LifecycleOp.FOSSILIZE, FULL_SEED),
    "5": act(LifecycleOp.GERMINATE, YOUNG_SEED, style=BlendStyle.ADD, tempo=Tempo.FAST, alpha_target=AlphaTarget.FULL),
    "6": act(LifecycleOp.FOSSILIZE, HALF_SEED),  # a partial-alpha seed reaches HOLDING and fossilizes
    "7": act(LifecycleOp.PRUNE, YOUNG_SEED, alpha_speed=AlphaSpeed.INSTANT),  # two epochs old: churn
    "10": act(LifecycleOp.GERMINATE, YOUNG_SEED, alpha_target=AlphaTarget.FULL),  # still RESETTING: refused
    "11": act(LifecycleOp.GERMINATE, YOUNG_SEED, alpha_target=AlphaTarget.FULL),  # the first epoch it can succeed
}
FULL_FOSSILIZED_AT, HALF_ADVANCED_AT, HALF_FOSSILIZED_AT, PRUNED_AT = 4, 3, 6, 7
#: the first epoch whose training runs with the FULL seed at alpha 1
FULL_AT_ALPHA_ONE = 4


# -- mutations: each re-introduces one known fault (ESPER_MUTATION=<name>) -------------------------------


@attrs.frozen
class Mutation:
    fault: str
    apply: Callable[[pytest.MonkeyPatch], None]
    #: the guard tests that must fail (names without parameters) and the hosts they must fail on
    tests: tuple[str, ...]
    hosts: tuple[str, ...] = HOST_NAMES


def _isolation_after_training(mp: pytest.MonkeyPatch) -> None:
    from esper_core.kasmina.blending import blend
    from esper_core.kasmina.slot import SeedSlot

    original = SeedSlot.forward

    def forward(self, h):
        if self.stage in ABLATED_STAGES:  # the fault: the seed still reads a detached host activation
            return blend(self.style, h, self.seed(h.detach()), self.alpha_tensor, self.gate)
        return original(self, h)

    mp.setattr(SeedSlot, "forward", forward)


def _fossils(env: Environment) -> list[Any]:
    return [slot for slot in env.model.slots.values() if slot.stage is SeedStage.FOSSILIZED]


def _fossil_frozen(mp: pytest.MonkeyPatch) -> None:
    original = Environment.sync_optimizers

    def sync_optimizers(self):
        original(self)
        for slot in _fossils(self):  # the fault: a fossil is frozen
            for parameter in slot.seed_parameters():
                parameter.requires_grad_(False)

    mp.setattr(Environment, "sync_optimizers", sync_optimizers)


def _fossil_frozen_after_rebuild(mp: pytest.MonkeyPatch) -> None:
    original = Environment.build_optimizers

    def build_optimizers(self):
        original(self)
        for slot in _fossils(self):  # the fault: the rebuild path (governor rollback) freezes fossils
            for parameter in slot.seed_parameters():
                parameter.requires_grad_(False)

    mp.setattr(Environment, "build_optimizers", build_optimizers)


def _fossil_keeps_its_seed_optimizer(mp: pytest.MonkeyPatch) -> None:
    original = Environment.sync_optimizers

    def sync_optimizers(self):
        original(self)
        for slot in _fossils(self):  # the fault: a fossil keeps training as a seed, not with the host
            fossil = {id(parameter) for parameter in slot.seed_parameters()}
            for group in self.host_optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in fossil]
            self.host_optimizer.param_groups = [g for g in self.host_optimizer.param_groups if g["params"]]
            if slot.seed_id not in self.seed_optimizers:
                self.seed_optimizers[slot.seed_id] = torch.optim.SGD(slot.seed_parameters(), lr=SEED_LR)

    mp.setattr(Environment, "sync_optimizers", sync_optimizers)


def _partial_alpha_never_holds(mp: pytest.MonkeyPatch) -> None:
    from esper_core.kasmina.slot import SeedSlot

    original = SeedSlot.tick

    def tick(self):
        if self.stage is SeedStage.BLENDING and not self.blend_out and self.schedule.target < 1.0:
            # the fault: BLENDING -> HOLDING only once alpha reaches 1, which a partial target never does
            self.seed_age += 1
            self.epochs_in_stage += 1
            self._set_alpha(self.schedule.tick())
            return
        original(self)

    mp.setattr(SeedSlot, "tick", tick)


def _embargo_counted_twice(mp: pytest.MonkeyPatch) -> None:
    from esper_core.kasmina.slot import SeedSlot

    original = SeedSlot.tick

    def tick(self):
        if self.stage is SeedStage.EMBARGOED:
            self.embargo_left -= 1  # the fault: the embargo counts down twice per epoch
        original(self)

    mp.setattr(SeedSlot, "tick", tick)


def _two_ticks_per_epoch(mp: pytest.MonkeyPatch) -> None:
    from esper_core.kasmina.model import MorphogeneticModel

    original = MorphogeneticModel.tick

    def tick(self):
        original(self)
        original(self)  # the fault: a second lifecycle clock in the same epoch

    mp.setattr(MorphogeneticModel, "tick", tick)


class _ShardedTask:
    """The task as environment ``index`` of ``count`` saw it in the prior implementation: a shard of the validation split."""

    def __init__(self, task: Any, index: int, count: int) -> None:
        self._task, self._index, self._count = task, index, count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def validation_batches(self, batch_size: int):
        batches = self._task.validation_batches(batch_size)
        share = sum(int(targets.shape[0]) for _, targets in batches) // self._count
        start = self._index * share
        inputs = torch.cat([inputs for inputs, _ in batches])[start : start + share]
        targets = torch.cat([targets for _, targets in batches])[start : start + share]
        return [(inputs[i : i + batch_size], targets[i : i + batch_size]) for i in range(0, share, batch_size)]


def _validation_shard_per_env(mp: pytest.MonkeyPatch) -> None:
    original = Environment.validate

    def validate(self, batch_size):
        task = self.task
        self.task = _ShardedTask(task, self.env_id % 2, 2)  # the fault: 1/n_envs of the split each
        try:
            return original(self, batch_size)
        finally:
            self.task = task

    mp.setattr(Environment, "validate", validate)


def _one_pass_per_ablation(mp: pytest.MonkeyPatch) -> None:
    from esper_core.kasmina.model import MorphogeneticModel

    def forward_with_ablations(self, x, ablate):
        outputs = [self(x)]
        for slot_id in ablate:  # the fault: a whole forward pass for every ablation
            alpha = self.slots[slot_id].alpha_tensor
            saved = alpha.clone()
            alpha.zero_()
            outputs.append(self(x))
            alpha.copy_(saved)
        return torch.stack(outputs)

    mp.setattr(MorphogeneticModel, "forward_with_ablations", forward_with_ablations)


def _loss_score_sign_inverted(mp: pytest.MonkeyPatch) -> None:
    from esper_core.tasks import TaskInfo

    original = TaskInfo.score

    def score(self, metric, loss):
        if self.score_basis == "loss":
            return math.log(loss)  # the fault: a higher loss scores (and is rewarded) higher
        return original(self, metric, loss)

    mp.setattr(TaskInfo, "score", score)


def _gain_sign_inverted(mp: pytest.MonkeyPatch) -> None:
    from esper_core.simic import shaped
    from esper_core.simic.rewards import RewardBreakdown

    original = shaped.ShapedReward.compute

    def compute(self, signals):
        components = dict(original(self, signals).components)
        components[GAIN_TERM] = -components[GAIN_TERM]  # the fault: the gain's sign inverted
        return RewardBreakdown.from_components(components)

    mp.setattr(shaped.ShapedReward, "compute", compute)


def _churn_not_priced(mp: pytest.MonkeyPatch) -> None:
    from esper_core.simic import shaped

    mp.setattr(shaped, "churn_charge", lambda signals, **costs: 0.0)  # the fault: only masks stop churn


def _unpaired_arms(mp: pytest.MonkeyPatch) -> None:
    from esper_core import experiments

    original = experiments.parse_experiment

    def parse_experiment(*args, **kwargs):
        experiment = original(*args, **kwargs)
        arms = {  # the fault: every arm draws its own environment seeds and data order
            name: attrs.evolve(config, run=attrs.evolve(config.run, seed=config.run.seed + index))
            for index, (name, config) in enumerate(experiment.arms.items())
        }
        return attrs.evolve(experiment, arms=arms)

    mp.setattr(experiments, "parse_experiment", parse_experiment)


def _ppo_one_full_batch_epoch(mp: pytest.MonkeyPatch) -> None:
    from esper_tamiyo_ppo.policy import PPOPolicy

    original = PPOPolicy.__init__

    def __init__(self, config, context):
        # the fault: one epoch over one full batch, so the ratio is always 1 and clipping never acts
        original(self, attrs.evolve(config, update_epochs=1, num_minibatches=1), context)

    mp.setattr(PPOPolicy, "__init__", __init__)


MUTATIONS: dict[str, Mutation] = {
    "isolation_after_training": Mutation(
        "gradient isolation kept after TRAINING: no gradient reaches the host upstream of a fossil at alpha 1",
        _isolation_after_training, ("test_host_upstream_of_a_seed_at_alpha_one_still_learns",),
    ),
    "fossil_frozen": Mutation(
        "a fossilized seed is frozen",
        _fossil_frozen, ("test_fossilized_seeds_train_with_the_host_optimizer",),
    ),
    "fossil_frozen_after_rebuild": Mutation(
        "fossils are frozen when the optimizers are rebuilt (governor rollback) but train otherwise",
        _fossil_frozen_after_rebuild, ("test_fossilized_seeds_train_with_the_host_optimizer",),
    ),
    "fossil_keeps_seed_optimizer": Mutation(
        "a fossilized seed keeps training in its own seed optimizer",
        _fossil_keeps_its_seed_optimizer, ("test_fossilized_seeds_train_with_the_host_optimizer",),
    ),
    "partial_alpha_never_holds": Mutation(
        "a seed germinated with a partial alpha target never reaches HOLDING",
        _partial_alpha_never_holds, ("test_a_partial_alpha_target_reaches_holding_and_fossilizes",),
    ),
    "embargo_counted_twice": Mutation(
        "embargo ticks counted twice per epoch",
        _embargo_counted_twice, ("test_one_lifecycle_clock_per_epoch_makes_the_embargo_exact",),
    ),
    "two_ticks_per_epoch": Mutation(
        "the lifecycle clock ticks twice per epoch",
        _two_ticks_per_epoch, ("test_one_lifecycle_clock_per_epoch_makes_the_embargo_exact",),
    ),
    "validation_shard_per_env": Mutation(
        "each environment validates on 1/n_envs of the validation split",
        _validation_shard_per_env, ("test_counterfactuals_use_the_whole_validation_set_in_one_batched_pass",),
    ),
    "one_pass_per_ablation": Mutation(
        "every ablation costs a whole forward pass",
        _one_pass_per_ablation, ("test_counterfactuals_use_the_whole_validation_set_in_one_batched_pass",),
    ),
    "loss_score_sign_inverted": Mutation(
        "the loss-based score (and so its reward) has its sign inverted",
        _loss_score_sign_inverted, ("test_reward_terms_have_their_signs_on_engine_rewards",),
        hosts=("transformer",),  # the only loss-based task here
    ),
    "gain_sign_inverted": Mutation(
        "the reward term paying the score change has its sign inverted",
        _gain_sign_inverted, ("test_reward_terms_have_their_signs_on_engine_rewards",),
    ),
    "churn_not_priced": Mutation(
        "churn is not priced (germinate/prune farming)",
        _churn_not_priced, ("test_churn_is_priced_for_an_early_prune",),
    ),
    "unpaired_arms": Mutation(
        "experiment arms are not paired (each arm its own environment seeds and data order)",
        _unpaired_arms, ("test_experiment_arms_are_paired",),
    ),
    "ppo_one_full_batch_epoch": Mutation(
        "the PPO update runs one full-batch epoch (ratio always 1, clipping never acts)",
        _ppo_one_full_batch_epoch, ("test_ppo_runs_clipped_multi_epoch_minibatch_updates",),
    ),
}


@pytest.fixture(scope="module", autouse=True)
def mutation() -> Iterator[str | None]:
    """Applies the mutation named by ``ESPER_MUTATION`` (if any) for the whole module."""
    name = os.environ.get(MUTATION_ENV) or None
    if name is None:
        yield None
        return
    if name not in MUTATIONS:
        raise pytest.UsageError(f"{MUTATION_ENV}={name!r} is not one of {', '.join(MUTATIONS)}")
    with pytest.MonkeyPatch.context() as mp:
        MUTATIONS[name].apply(mp)
        yield name


# -- recording what the engine does ------------------------------------------------------------------


@attrs.frozen
class FossilState:
    """One fossil after one epoch: its weights and which optimizers hold them."""

    params: torch.Tensor
    host_lrs: tuple[float | None, ...]  # per parameter: the lr of the host optimizer group holding it
    in_seed_optimizer: bool


@attrs.frozen
class EpochRecord:
    env_id: int
    epoch: int
    rolled_back: bool
    stages: tuple[SeedStage, ...]
    alphas: tuple[float, ...]
    upstream_grad_norm: float
    fossils: dict[str, FossilState]


@attrs.frozen
class ValidationRecord:
    env_id: int
    epoch: int
    metric: float
    loss: float
    contributions: dict[str, float]
    prefix_samples: int
    reference: dict[str | None, tuple[float, float]]  # slot ablated (None: none) -> (metric, loss) in separate passes
    val_size: int


@attrs.define
class EngineRun:
    run_dir: Path
    case: HostCase
    slot_ids: tuple[str, ...] = ()
    upstream: dict[int, tuple[str, ...]] = attrs.Factory(dict)
    epochs: list[EpochRecord] = attrs.Factory(list)
    validations: list[ValidationRecord] = attrs.Factory(list)
    events: list[dict[str, Any]] = attrs.Factory(list)

    def of(self, kind: str, env_id: int | None = None) -> list[dict[str, Any]]:
        return [
            r["data"] for r in self.events
            if r["event"] == kind and (env_id is None or r["data"].get("env_id") == env_id)
        ]


def prefix_only_parameters(model: Any, probe: torch.Tensor) -> tuple[str, ...]:
    """Host parameters that feed the first slot and are not used after it (found by autograd on a copy)."""
    host = copy.deepcopy(model.host).eval()
    first = model.slot_ids[0]
    named = dict(host.named_parameters())

    def touched(output: torch.Tensor) -> set[str]:
        grads = torch.autograd.grad(output.float().square().sum(), list(named.values()), allow_unused=True)
        return {name for name, grad in zip(named, grads) if grad is not None and bool(grad.abs().sum() > 0)}

    h = host.forward_to(first, probe, from_slot=None)
    before = touched(h)
    after = touched(host.forward_from(first, h.detach().requires_grad_()))
    return tuple(sorted(before - after))


def fossil_state(env: Environment, slot: Any) -> FossilState:
    host_lr = {id(p): group["lr"] for group in env.host_optimizer.param_groups for p in group["params"]}
    in_seed = {id(p) for optimizer in env.seed_optimizers.values() for group in optimizer.param_groups for p in group["params"]}
    params = slot.seed_parameters()
    return FossilState(
        params=torch.cat([p.detach().flatten() for p in params]).clone(),
        host_lrs=tuple(host_lr.get(id(p)) for p in params),
        in_seed_optimizer=any(id(p) in in_seed for p in params),
    )


def reference_validation(env: Environment, batch_size: int) -> dict[str | None, tuple[float, float]]:
    """(metric, loss) of the full model and of each ablation, one separate pass each over the whole split."""
    model, task = env.model, env.task
    model.eval()

    def one_pass() -> tuple[float, float]:
        loss_sum = metric_sum = 0.0
        count = 0
        with torch.no_grad():
            for inputs, targets in task.validation_batches(batch_size):
                loss, metric = task.metric_sums(model(inputs).unsqueeze(0), targets)
                loss_sum += float(loss[0])
                metric_sum += float(metric[0])
                count += int(targets.shape[0])
        return metric_sum / count, loss_sum / count

    results: dict[str | None, tuple[float, float]] = {None: one_pass()}
    for slot_id in model.slot_ids:
        slot = model.slots[slot_id]
        if slot.stage in ABLATED_STAGES:
            saved = slot.alpha_tensor.clone()
            slot.alpha_tensor.zero_()
            try:
                results[slot_id] = one_pass()
            finally:
                slot.alpha_tensor.copy_(saved)
    return results


def record_engine_run(case: HostCase, data: dict[str, Any], manager: PluginManager) -> EngineRun:
    """Run ``data`` through ``start_run``, recording every environment after each epoch and every validation."""
    config = parse_config(data, manager)
    record = EngineRun(run_dir=Path(), case=case)
    current = {"epoch": -1}
    run_epoch, validate = Engine.run_epoch, Environment.validate  # as mutated, if a mutation is active

    def recording_run_epoch(engine: Engine, round_index: int, epoch: int) -> None:
        current["epoch"] = epoch
        if not record.slot_ids:
            record.slot_ids = tuple(engine.envs[0].model.slot_ids)
            probe = engine.setup.task.validation_batches(4)[0][0]
            for env in engine.envs:
                record.upstream[env.env_id] = prefix_only_parameters(env.model, probe)
        run_epoch(engine, round_index, epoch)
        for env in engine.envs:
            named = dict(env.model.host.named_parameters())
            grads = [named[name].grad for name in record.upstream[env.env_id]]
            norm = math.sqrt(sum(float(g.square().sum()) for g in grads if g is not None))
            slots = [env.model.slots[slot_id] for slot_id in record.slot_ids]
            record.epochs.append(
                EpochRecord(
                    env_id=env.env_id, epoch=epoch, rolled_back=env.rolled_back,
                    stages=tuple(slot.stage for slot in slots), alphas=tuple(slot.alpha for slot in slots),
                    upstream_grad_norm=norm,
                    fossils={slot.slot_id: fossil_state(env, slot) for slot in slots if slot.stage is SeedStage.FOSSILIZED},
                )
            )

    def recording_validate(env: Environment, batch_size: int):
        host = env.model.host
        first = env.model.slot_ids[0]
        prefix = [0]
        forward_to = host.forward_to

        def counting_forward_to(slot_id, x, from_slot=None):
            if slot_id == first and from_slot is None:
                prefix[0] += int(x.shape[0])
            return forward_to(slot_id, x, from_slot=from_slot)

        host.forward_to = counting_forward_to
        try:
            result = validate(env, batch_size)
        finally:
            del host.forward_to
        record.validations.append(
            ValidationRecord(
                env_id=env.env_id, epoch=current["epoch"], metric=result.metric, loss=result.loss,
                contributions=dict(result.contributions), prefix_samples=prefix[0],
                reference=reference_validation(env, batch_size), val_size=env.task.info.val_size,
            )
        )
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Engine, "run_epoch", recording_run_epoch)
        mp.setattr(Environment, "validate", recording_validate)
        record.run_dir = start_run(config, manager)
    record.events = read_events(record.run_dir / "events.jsonl")
    return record


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return _manager()


@pytest.fixture(scope="module", params=HOST_NAMES)
def lifecycle(request, mutation, manager, tmp_path_factory) -> EngineRun:
    """The scripted lifecycle on one real host: two environments, environment 1 rolled back at NAN_EPOCH."""
    case = HOSTS[request.param]
    data = run_data(case, tmp_path_factory.mktemp(f"lifecycle-{case.name}"),
                    policy={"name": "scripted", "script": LIFECYCLE_SCRIPT},
                    faults={"host_nan": [{"epoch": NAN_EPOCH, "env": 1}]})
    return record_engine_run(case, data, manager)


def seed_events(run: EngineRun, env_id: int, slot_index: int, kind: str) -> list[dict[str, Any]]:
    slot_id = run.slot_ids[slot_index]
    return [data for data in run.of(kind, env_id) if data["slot_id"] == slot_id]


def actions_at(run: EngineRun, env_id: int) -> dict[int, dict[str, Any]]:
    return {data["epoch"]: data for data in run.of("ACTION_TAKEN", env_id)}


# -- the guards ---------------------------------------------------------------------------------------


def test_the_lifecycle_run_rolled_back_only_where_planned(lifecycle: EngineRun) -> None:
    """The other tests read this run; it must be the one they assume (no unplanned rollback)."""
    rollbacks = [(data["env_id"], data["epoch"]) for data in lifecycle.of("GOVERNOR_ROLLBACK")]
    assert rollbacks == [(1, NAN_EPOCH)]
    assert len(lifecycle.slot_ids) >= 3


def test_host_upstream_of_a_seed_at_alpha_one_still_learns(lifecycle: EngineRun) -> None:
    """Isolation ends with TRAINING: with the first slot's seed blended to alpha 1 and then fossilized,
    every host parameter that only feeds that slot still receives a gradient each epoch."""
    assert all(lifecycle.upstream.values()), "no host parameter feeds only the first slot"
    full = [r for r in lifecycle.epochs if r.epoch >= FULL_AT_ALPHA_ONE and not r.rolled_back]
    assert {r.env_id for r in full} == {0, 1}
    for record in full:
        assert record.alphas[FULL_SEED] == 1.0 and record.stages[FULL_SEED] in (SeedStage.HOLDING, SeedStage.FOSSILIZED)
        assert record.upstream_grad_norm > 0.0, (
            f"env {record.env_id} epoch {record.epoch}: no gradient reached {lifecycle.upstream[record.env_id]}"
        )


def test_fossilized_seeds_train_with_the_host_optimizer(lifecycle: EngineRun) -> None:
    """One code path: after every epoch (including the rollback, which rebuilds the optimizers) each
    fossil is in the host optimizer at host_lr and in no seed optimizer, and its weights keep changing."""
    previous: dict[tuple[int, str], torch.Tensor] = {}
    checked_after_rollback = False
    for record in lifecycle.epochs:
        for slot_id, fossil in record.fossils.items():
            where = f"env {record.env_id} epoch {record.epoch} fossil {slot_id}"
            assert fossil.host_lrs and all(lr == HOST_LR for lr in fossil.host_lrs), f"{where}: host lrs {fossil.host_lrs}"
            assert not fossil.in_seed_optimizer, f"{where} is still in a seed optimizer"
            key = (record.env_id, slot_id)
            if key in previous and not record.rolled_back:
                assert not torch.equal(previous[key], fossil.params), f"{where}: weights did not change"
                checked_after_rollback |= record.env_id == 1 and record.epoch == NAN_EPOCH + 1
            previous[key] = fossil.params
    fossilized = {(r.env_id, slot_id) for r in lifecycle.epochs for slot_id in r.fossils}
    assert fossilized == {(env, lifecycle.slot_ids[s]) for env in (0, 1) for s in (FULL_SEED, HALF_SEED)}
    assert checked_after_rollback


def test_a_partial_alpha_target_reaches_holding_and_fossilizes(lifecycle: EngineRun) -> None:
    """Germinated with alpha target 0.5, the seed holds when its schedule ends and fossilizes at 0.5."""
    blend_epochs = Tempo.FAST.epochs
    for env_id in (0, 1):
        holding = [d["epoch"] for d in seed_events(lifecycle, env_id, HALF_SEED, "SEED_STAGE_CHANGED")
                   if d["to_stage"] == "HOLDING"]
        assert holding == [HALF_ADVANCED_AT + blend_epochs - 1], f"env {env_id}: HOLDING at epochs {holding}"
        fossilize = actions_at(lifecycle, env_id)[HALF_FOSSILIZED_AT]
        assert fossilize["success"], f"env {env_id}: FOSSILIZE failed: {fossilize['reason']}"
        fossils = seed_events(lifecycle, env_id, HALF_SEED, "SEED_FOSSILIZED")
        assert [d["alpha"] for d in fossils] == [0.5], f"env {env_id}"
    after = [r for r in lifecycle.epochs if r.epoch >= HALF_FOSSILIZED_AT]
    assert after and all(r.stages[HALF_SEED] is SeedStage.FOSSILIZED and r.alphas[HALF_SEED] == 0.5 for r in after)


def test_one_lifecycle_clock_per_epoch_makes_the_embargo_exact(lifecycle: EngineRun) -> None:
    """Pruned at epoch 7 with a 2-epoch embargo: EMBARGOED at 7's tick, RESETTING two ticks later,
    DORMANT one tick after that; a germination is refused until then and succeeds at once after."""
    changes = [(d["epoch"], d["to_stage"]) for d in seed_events(lifecycle, 0, YOUNG_SEED, "SEED_STAGE_CHANGED")]
    after_prune = [change for change in changes if change[0] >= PRUNED_AT]
    assert after_prune[:4] == [
        (PRUNED_AT, "PRUNED"),
        (PRUNED_AT, "EMBARGOED"),
        (PRUNED_AT + EMBARGO_EPOCHS, "RESETTING"),
        (PRUNED_AT + EMBARGO_EPOCHS + 1, "DORMANT"),
    ]
    actions = actions_at(lifecycle, 0)
    assert not actions[10]["success"] and actions[11]["success"]
    blending = [(d["epoch"], d["to_stage"]) for d in seed_events(lifecycle, 0, FULL_SEED, "SEED_STAGE_CHANGED")]
    assert (1, "BLENDING") in blending and (1 + Tempo.FAST.epochs - 1, "HOLDING") in blending  # one tick per epoch


def test_counterfactuals_use_the_whole_validation_set_in_one_batched_pass(lifecycle: EngineRun) -> None:
    """Every environment validates on the whole fixed split; each blended or fossilized seed's contribution
    equals score(with) - score(without) from separate passes, yet the host prefix sees each sample once."""
    case = lifecycle.case
    with_ablations = [v for v in lifecycle.validations if len(v.reference) > 1]
    assert {v.env_id for v in with_ablations} == {0, 1} and max(len(v.reference) for v in with_ablations) >= 3
    for v in lifecycle.validations:
        where = f"env {v.env_id} epoch {v.epoch}"
        if not math.isfinite(v.loss):  # the injected NaN, before the governor rolls back
            assert (v.env_id, v.epoch) == (1, NAN_EPOCH), where
            continue
        metric, loss = v.reference[None]
        assert v.loss == pytest.approx(loss, rel=1e-5), f"{where}: not the whole validation split"
        assert v.metric == pytest.approx(metric, abs=1.5 / v.val_size), where
        assert set(v.contributions) == set(v.reference) - {None}, where
        for slot_id, contribution in v.contributions.items():
            ablated_metric, ablated_loss = v.reference[slot_id]
            if case.loss_based:
                assert contribution == pytest.approx(math.log(ablated_loss / loss), rel=1e-4, abs=1e-6), where
            else:
                assert contribution == pytest.approx(metric - ablated_metric, abs=3.0 / v.val_size), where
    for v in with_ablations:
        assert v.prefix_samples == v.val_size, f"env {v.env_id} epoch {v.epoch}: the host prefix ran on {v.prefix_samples} samples"


def score_of(case: HostCase, epoch: dict[str, Any]) -> float:
    """The task's score, computed here (not by TaskInfo.score): -ln(loss) for a language task, else the metric."""
    return -math.log(epoch["val_loss"]) if case.loss_based else epoch["val_metric"]


def test_reward_terms_have_their_signs_on_engine_rewards(lifecycle: EngineRun) -> None:
    """The gain term has the sign of the score's change (a falling loss is a gain), in proportion to it;
    rent is negative while seeds cost parameters; action_cost is negative for an op, zero for WAIT."""
    ratios = []
    for env_id in (0, 1):
        epochs = {d["epoch"]: d for d in lifecycle.of("EPOCH_COMPLETED", env_id)}
        actions = actions_at(lifecycle, env_id)
        rewards = lifecycle.of("REWARD_COMPUTED", env_id)
        assert [d["epoch"] for d in rewards] == list(range(1, EPISODE_LENGTH))
        for reward in rewards:
            t = reward["epoch"]
            where = f"env {env_id} epoch {t}"
            terms = reward["components"]
            change = score_of(lifecycle.case, epochs[t]) - score_of(lifecycle.case, epochs[t - 1])
            if change == 0.0:
                assert terms[GAIN_TERM] == 0.0, where
            else:
                ratios.append(terms[GAIN_TERM] / change)
            if epochs[t - 1]["fossilized_params"] > 0:  # fossils never leave this run
                assert terms["rent"] < 0.0, where
            assert terms["rent"] <= 0.0, where
            if actions[t - 1]["action"]["op"] == "WAIT":
                assert terms["action_cost"] == 0.0, where
            else:
                assert terms["action_cost"] < 0.0, where
    assert len(ratios) >= 4, "too few score changes to tell the sign"
    assert min(ratios) > 0.0, f"{GAIN_TERM} / score change ratios {ratios}"
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-6)


def test_churn_is_priced_for_an_early_prune(lifecycle: EngineRun) -> None:
    """The seed pruned two epochs after germination is charged churn when its prune is paid (epoch 8);
    no other reward of the run carries a churn charge."""
    for env_id in (0, 1):
        churn = {d["epoch"]: d["components"]["churn"] for d in lifecycle.of("REWARD_COMPUTED", env_id)}
        assert churn[PRUNED_AT + 1] < 0.0, f"env {env_id}: churn by epoch {churn}"
        assert all(value == 0.0 for epoch, value in churn.items() if epoch != PRUNED_AT + 1), f"env {env_id}: {churn}"


# -- paired cohorts -----------------------------------------------------------------------------------


PAIRED_SCRIPT = {"1": GERMINATE_FULL, "2": act(LifecycleOp.ADVANCE, FULL_SEED)}


@pytest.mark.parametrize("host", HOST_NAMES)
def test_experiment_arms_are_paired(host, mutation, manager, tmp_path) -> None:
    """Two arms that differ only in the reward train identical environments (host weights, data order,
    seeds), while the environments within an arm differ: the comparison is paired."""
    from esper_core.experiments import arm_run_dirs, run_experiment

    case = HOSTS[host]
    data = run_data(case, tmp_path, policy={"name": "scripted", "script": PAIRED_SCRIPT}, episode_length=5)
    data["experiment"] = {"name": "paired", "arms": [{"name": "basic", "set": {"reward.name": "basic"}},
                                                     {"name": "shaped", "set": {"reward.name": "shaped"}}]}
    runs = arm_run_dirs(run_experiment(data, manager))

    def trajectory(run_dir: Path) -> list[tuple]:
        return [
            (r["data"]["env_id"], r["data"]["epoch"], r["data"]["train_loss"], r["data"]["val_loss"])
            for r in read_events(run_dir / "events.jsonl") if r["event"] == "EPOCH_COMPLETED"
        ]

    basic, shaped = trajectory(runs["basic"]), trajectory(runs["shaped"])
    assert len(basic) == 2 * 5
    first_epoch = {env: loss for env, epoch, loss, _ in basic if epoch == 0}
    assert first_epoch[0] != first_epoch[1]  # environment seeds matter, so equal arms are paired ones
    assert basic == shaped


# -- PPO ----------------------------------------------------------------------------------------------


PPO_UPDATE_EPOCHS, PPO_MINIBATCHES = 4, 2


@pytest.mark.parametrize("host", HOST_NAMES)
def test_ppo_runs_clipped_multi_epoch_minibatch_updates(host, mutation, manager, tmp_path) -> None:
    """On rollouts from the real host, one update runs every epoch over every minibatch, and the ratio
    moves off 1: the clip acts and the approximate KL is positive."""
    case = HOSTS[host]
    policy = {"name": "ppo", "update_epochs": PPO_UPDATE_EPOCHS, "num_minibatches": PPO_MINIBATCHES,
              "rounds_per_update": 1, "min_decisions_per_update": 0, "learning_rate": 3e-3}
    data = run_data(case, tmp_path, policy=policy, episode_length=6)
    run_dir = start_run(parse_config(data, manager), manager)
    updates = [r["data"]["metrics"] for r in read_events(run_dir / "events.jsonl") if r["event"] == "POLICY_UPDATED"]
    assert len(updates) == 1
    metrics = updates[0]
    assert metrics[EPOCHS_RUN] == PPO_UPDATE_EPOCHS
    assert metrics[MINIBATCH_STEPS] == PPO_UPDATE_EPOCHS * PPO_MINIBATCHES
    assert metrics[CLIP_FRACTION] > 0.0
    assert metrics[APPROX_KL] > 0.0


# -- the mutation check -------------------------------------------------------------------------------


def test_the_design_table_names_existing_tests_and_every_guard_here() -> None:
    """docs/design.md's table of rules and faults names tests that exist, including every guard test above."""
    import re

    lines = (REPO / "docs" / "design.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("| rule | where | fault of the prior implementation it avoids |")
    rows = [line for line in lines[start + 2 : start + 60] if line.startswith("| ")]
    rows = rows[: next((i for i, row in enumerate(rows) if not row.startswith("| **")), len(rows))]
    named = {name for row in rows for name in re.findall(r"`(test_\w+)`", row.split(" | ")[1])}
    sources = "\n".join(
        path.read_text(encoding="utf-8")
        for folder in (REPO / "tests", *sorted(REPO.glob("plugins/*/tests")))
        for path in sorted(folder.glob("test_*.py"))
    )
    missing = sorted(name for name in named if f"def {name}(" not in sources)
    assert not missing, f"docs/design.md names tests that do not exist: {missing}"
    guards = {test for mutation in MUTATIONS.values() for test in mutation.tests}
    assert guards <= named, f"guard tests missing from docs/design.md's table: {sorted(guards - named)}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_mutations_are_caught() -> None:
    """Every guard test fails when a fault it guards against is re-introduced (tests/mutation_check.py).

    The suite checks the first mutation of each guard test (every guard test shown to catch a fault, in
    about two thirds of the time); ``.venv/bin/python tests/mutation_check.py`` checks all of them.
    """
    env = {key: value for key, value in os.environ.items() if key != MUTATION_ENV}
    first_per_guard: dict[str, str] = {}
    for name, mutation in MUTATIONS.items():
        for test in mutation.tests:
            first_per_guard.setdefault(test, name)
    chosen = sorted(set(first_per_guard.values()))
    assert len(first_per_guard) >= 9, "every guard test has a mutation"
    result = subprocess.run(
        # --no-baseline: the suite runs every guard test unmutated itself (the tests above)
        [sys.executable, str(REPO / "tests" / "mutation_check.py"), "--no-baseline", "--only", *chosen],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=1700,
    )
    assert result.returncode == 0, result.stdout + result.stderr
