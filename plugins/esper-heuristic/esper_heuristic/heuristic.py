"""The ``heuristic`` policy: fixed lifecycle rules (prune damage, fossilize what pays its price, advance,
germinate on plateau, choosing the seed family by the run's evidence: start cheap, escalate when growth pays;
switch a seed's subtarget groups off when it does not pay their rent, on when it pays comfortably)."""

from __future__ import annotations

import difflib
import enum
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs

from esper_core.errors import ConfigError
from esper_core.leyline import (
    BLENDED_STAGES,
    LIVE_STAGES,
    RECOVERY_STAGES,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlendStyle,
    FactoredAction,
    LifecycleOp,
    SeedStage,
    SeedStateReport,
    Tempo,
)
from esper_core.tamiyo import ActionMasks, EnvObservation, PolicyContext
from esper_core.validators import (
    InvalidValue,
    Validator,
    finite,
    in_range,
    non_negative,
    non_negative_int,
    one_of,
    optional,
    positive_int,
)

_flag = attrs.validators.instance_of(bool)

from esper_heuristic.actions import check_batch, pinned_action

# -- config validation -----------------------------------------------------------------------------


def _enum_choice(enum_class: type[enum.Enum]) -> Validator:
    """One of the lower-case member names of ``enum_class``."""
    return one_of(*(member.name.lower() for member in enum_class))


def _name_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"'seed_families' must be a list of seed family names, got {value!r}")
    return tuple(value)


def _distinct_names(_instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    not_strings = [name for name in value if not isinstance(name, str)]
    if not_strings:
        raise TypeError(f"'{attribute.name}' must hold seed family names (strings), got {not_strings!r}")
    repeated = sorted({name for name in value if value.count(name) > 1})
    if repeated:
        raise InvalidValue(attribute.name, f"lists {', '.join(repeated)} more than once", value)


def _not_below_minus_prune_threshold(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < -instance.prune_threshold:
        raise InvalidValue(
            attribute.name,
            f"must be at least -prune_threshold ({-instance.prune_threshold}), got {value} "
            "(a seed cannot both earn fossilization and be pruned for damage)",
            value,
        )


@attrs.frozen(kw_only=True)
class HeuristicConfig:
    """Options of the ``heuristic`` policy (the ``[policy]`` TOML section). Enum-valued options are
    the lower-case member names (``style = "gate"``, ``tempo = "slow"``)."""

    #: keys renamed in 0.2.0: the old key is an error that names the new one
    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "blueprints": "seed_families", "blueprint_cooldown_epochs": "seed_family_cooldown_epochs",
    }

    #: Rule 1: prune a BLENDING/HOLDING seed whose measured contribution is below -prune_threshold.
    prune_threshold: float = attrs.field(default=0.01, validator=non_negative())
    #: Rules 1 and 3: how fast a prune blends the seed out (``instant`` removes it at once); an AlphaSpeed name.
    prune_alpha_speed: str = attrs.field(default="instant", validator=_enum_choice(AlphaSpeed))
    #: Rules 1 and 3: the alpha curve of a scheduled blend-out (unused by ``instant``); an AlphaCurve name.
    prune_alpha_curve: str = attrs.field(default="linear", validator=_enum_choice(AlphaCurve))
    #: The price of size, in score units per 1,000 parameters in use: a seed *pays* when its measured
    #: contribution exceeds ``price_per_kparam * seed_params / 1000`` (0.01 = one accuracy point per
    #: 1,000 parameters). Rule 2 fossilizes only seeds that pay; the ladder grows only seeds that pay;
    #: rule 5 escalates or falls back on whether ended seeds paid.
    price_per_kparam: float = attrs.field(default=0.01, validator=non_negative())
    #: Rule 5: an ended seed whose contribution exceeded this multiple of its price paid *a lot*: the
    #: next germination in its slot uses the next larger seed family.
    escalate_margin: float = attrs.field(default=2.0, validator=in_range(1.0, None))
    #: Rule 2: fossilize a HOLDING seed whose measured contribution is at least this (and pays its price).
    fossilize_threshold: float = attrs.field(
        default=0.005, validator=[finite(), _not_below_minus_prune_threshold]
    )
    #: Rule 3: prune a HOLDING seed after this many decisions without reaching fossilize_threshold.
    holding_patience: int = attrs.field(default=5, validator=positive_int())
    #: Rule 4: advance a TRAINING seed once this many epochs have passed since its germination; unset
    #: follows the run's ``[morphogenesis] min_training_epochs`` (gate G1), so ADVANCE is never refused.
    min_training_epochs: int | None = attrs.field(default=None, validator=optional(non_negative_int()))
    #: Ladder rules: grow a blended ladder seed whose contribution rose by at least this since the last
    #: measurement; a growth that has not raised the contribution by this much after
    #: ``ladder_patience`` epochs is undone (and the seed is not grown past that level again).
    ladder_min_gain: float = attrs.field(default=0.005, validator=non_negative())
    #: Ladder rules: epochs a growth gets to pay before it is judged.
    ladder_patience: int = attrs.field(default=2, validator=positive_int())
    #: Subtarget rule: switch the groups of seeds with a subtarget inventory (ENABLE/DISABLE_SUBTARGET);
    #: false never uses those ops (the ladders-only arm of an experiment).
    subtarget_ops: bool = attrs.field(default=True, validator=_flag)
    #: Subtarget rule: enable a disabled group of a seed whose contribution exceeds this multiple of its rent.
    subtarget_enable_margin: float = attrs.field(default=2.0, validator=in_range(1.0, None))
    #: Subtarget rule: epochs a subtarget change gets before the seed is judged again (or fossilized).
    subtarget_patience: int = attrs.field(default=2, validator=positive_int())
    #: Rule 5: no germination before this many epochs of the episode are complete.
    warmup_epochs: int = attrs.field(default=5, validator=non_negative_int())
    #: Rule 5: the plateau is judged over this many most recent epochs.
    plateau_window: int = attrs.field(default=3, validator=positive_int())
    #: Rule 5: a plateau is an improvement smaller than this over the window.
    plateau_delta: float = attrs.field(default=0.005, validator=non_negative())
    #: Rule 5: seed families to germinate, in preference order; empty means all, in the run's order.
    seed_families: tuple[str, ...] = attrs.field(default=(), converter=_name_tuple, validator=_distinct_names)
    #: Rule 5: a seed family pruned in an environment is not germinated there again for this many epochs.
    seed_family_cooldown_epochs: int = attrs.field(default=10, validator=non_negative_int())
    #: Rule 5: blend style of new seeds; a BlendStyle name.
    style: str = attrs.field(default="add", validator=_enum_choice(BlendStyle))
    #: Rule 5: blend-in tempo of new seeds; a Tempo name.
    tempo: str = attrs.field(default="standard", validator=_enum_choice(Tempo))
    #: Rule 5: alpha target of new seeds; an AlphaTarget name.
    alpha_target: str = attrs.field(default="full", validator=_enum_choice(AlphaTarget))
    #: Rule 5: blend-in curve of new seeds; an AlphaCurve name.
    alpha_curve: str = attrs.field(default="linear", validator=_enum_choice(AlphaCurve))

    @property
    def prune_speed(self) -> AlphaSpeed:
        return AlphaSpeed[self.prune_alpha_speed.upper()]

    @property
    def prune_curve(self) -> AlphaCurve:
        return AlphaCurve[self.prune_alpha_curve.upper()]

    @property
    def blend_style(self) -> BlendStyle:
        return BlendStyle[self.style.upper()]

    @property
    def blend_tempo(self) -> Tempo:
        return Tempo[self.tempo.upper()]

    @property
    def blend_alpha_target(self) -> AlphaTarget:
        return AlphaTarget[self.alpha_target.upper()]

    @property
    def blend_curve(self) -> AlphaCurve:
        return AlphaCurve[self.alpha_curve.upper()]

    def epochs_to_verdict(self, min_training_epochs: int) -> int:
        """Decisions a new seed needs after its germination to reach its last holding verdict:
        ``min_training_epochs`` of incubation, the blend-in, and ``holding_patience`` holding
        decisions (the first of which falls on the tick after the blend ends)."""
        return min_training_epochs + self.blend_tempo.epochs + self.holding_patience


def resolve_seed_family_order(config: HeuristicConfig, run_families: tuple[str, ...]) -> tuple[int, ...]:
    """Indices into the run's seed family list in germination preference order.

    Raises ``ConfigError`` with one problem per configured name the run does not know.
    """
    if not config.seed_families:
        return tuple(range(len(run_families)))
    problems = []
    for name in config.seed_families:
        if name not in run_families:
            message = f"[policy] unknown seed family '{name}' in seed_families"
            close = difflib.get_close_matches(name, run_families, n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
            known = ", ".join(run_families) if run_families else "none"
            message += f"; this run's seed families: {known}"
            problems.append(message)
    if problems:
        raise ConfigError(problems)
    return tuple(run_families.index(name) for name in config.seed_families)


def seed_family_rungs(order: tuple[int, ...], context: PolicyContext) -> tuple[tuple[int, ...], ...]:
    """Per slot, the candidate seed families (indices into the run's list) from cheapest to largest by
    their size at birth in that slot (``context.seed_family_params``); equal sizes keep ``order``."""
    slot_ids = context.slot_config.slot_ids
    sizes = context.seed_family_params
    if len(sizes) != len(slot_ids) or any(len(row) != len(context.seed_families) for row in sizes):
        raise ValueError(
            f"seed_family_params must give one size per seed family ({len(context.seed_families)}) for each slot "
            f"({len(slot_ids)}); got {[len(row) for row in sizes]}"
        )
    return tuple(
        tuple(sorted(order, key=lambda index, row=row: (row[index], order.index(index)))) for row in sizes
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def least_important_group(report: SeedStateReport) -> tuple[int, float]:
    """The enabled group of the report's inventory with the lowest importance (the highest index on
    ties, as a ladder shrinks from the top) and that importance; the report must have an enabled group."""
    mask = report.subtarget_active_mask[: report.subtarget_count]
    importance = report.subtarget_importance
    scores = {
        index: (float(importance[index]) if index < len(importance) else 0.0)
        for index, enabled in enumerate(mask)
        if enabled
    }
    if not scores:
        raise ValueError(f"slot {report.slot_id}: seed {report.seed_id} has no enabled subtarget group")
    group = min(scores, key=lambda index: (scores[index], -index))
    return group, scores[group]


# -- per-environment memory ------------------------------------------------------------------------


@attrs.frozen
class EndedSeed:
    """A seed seen ending (fossilized, or gone from its slot: pruned) with what it last showed alive."""

    slot: int
    seed_id: str
    seed_family: str
    #: its last measured counterfactual contribution while alive (None: never measured)
    contribution: float | None
    #: its size (parameters in use) when last seen alive
    seed_params: int
    fossilized: bool


@attrs.define
class EnvMemory:
    """What the heuristic remembers about one environment within an episode.

    - ``holding_without_verdict``: seed id -> consecutive HOLDING decisions in which the seed had no
      measured contribution that earns fossilization (at or above ``fossilize_threshold`` and paying
      its price; only seeds HOLDING now are kept).
    - ``pruned_seeds_in_recovery``: seed ids already counted as pruned that still occupy their slot
      in PRUNED, EMBARGOED or RESETTING (so a long embargo is counted once).
    - ``seed_family_pruned_at``: seed family name -> the epoch at which its latest prune was first seen.
    - ``ladder_trials`` / ``ladder_ceiling``: growths of ladder seeds under evaluation, and levels that
      did not pay.
    - ``live_seeds``: slot id -> [seed id, seed family, last measured contribution or None, seed_params]
      of the live seed last seen there, so its end (FOSSILIZED, or gone) can be judged.
    - ``subtarget_trials`` / ``subtarget_ceiling``: subtarget changes under evaluation, and the most
      enabled groups a seed may have after a group was disabled for rent.
    """

    holding_without_verdict: dict[str, int] = attrs.Factory(dict)
    pruned_seeds_in_recovery: set[str] = attrs.Factory(set)
    seed_family_pruned_at: dict[str, int] = attrs.Factory(dict)
    #: seed id -> [epoch of the growth, contribution before it] while a growth is on trial
    ladder_trials: dict[str, list[float]] = attrs.Factory(dict)
    #: seed id -> highest level worth having (a growth past it did not pay)
    ladder_ceiling: dict[str, int] = attrs.Factory(dict)
    #: slot id -> [seed id, seed family, last measured contribution, seed_params] of its live seed
    live_seeds: dict[str, list[Any]] = attrs.Factory(dict)
    #: seed id -> the epoch of its subtarget change on trial (judged ``subtarget_patience`` epochs later)
    subtarget_trials: dict[str, int] = attrs.Factory(dict)
    #: seed id -> the most enabled groups worth having (a group disabled for rent is not enabled back past it)
    subtarget_ceiling: dict[str, int] = attrs.Factory(dict)
    #: seed id -> [epoch it was blended in, its parameters in use then, epoch of its next scheduled disable]:
    #: the ``adalora_schedule`` policy's budget schedule (always empty for ``heuristic``)
    subtarget_schedule: dict[str, list[int]] = attrs.Factory(dict)

    def observe(
        self, observation: EnvObservation, earns_fossilization: Callable[[SeedStateReport], bool]
    ) -> list[EndedSeed]:
        """Fold this epoch's slot reports into the memory (call once per decision); returns the seeds
        seen ending since the last call, in slot order."""
        in_recovery: set[str] = set()
        holding: dict[str, int] = {}
        for report in observation.slots:
            if report.stage in RECOVERY_STAGES and report.seed_id is not None:
                in_recovery.add(report.seed_id)
                if report.seed_id not in self.pruned_seeds_in_recovery:
                    if report.blueprint_id is None:
                        raise ValueError(
                            f"environment {observation.env_id} slot {report.slot_id}: pruned seed "
                            f"{report.seed_id} reports no seed family (blueprint_id)"
                        )
                    self.seed_family_pruned_at[report.blueprint_id] = observation.epoch
            if report.stage is SeedStage.HOLDING:
                if report.seed_id is None:
                    raise ValueError(
                        f"environment {observation.env_id} slot {report.slot_id} is HOLDING without a seed id"
                    )
                if earns_fossilization(report):
                    holding[report.seed_id] = 0
                else:
                    holding[report.seed_id] = self.holding_without_verdict.get(report.seed_id, 0) + 1
        self.pruned_seeds_in_recovery = in_recovery
        self.holding_without_verdict = holding
        live = {report.seed_id for report in observation.slots if report.stage in BLENDED_STAGES}
        self.ladder_trials = {k: v for k, v in self.ladder_trials.items() if k in live}
        self.ladder_ceiling = {k: v for k, v in self.ladder_ceiling.items() if k in live}
        self.subtarget_trials = {k: v for k, v in self.subtarget_trials.items() if k in live}
        self.subtarget_ceiling = {k: v for k, v in self.subtarget_ceiling.items() if k in live}
        self.subtarget_schedule = {k: v for k, v in self.subtarget_schedule.items() if k in live}
        return self._track_live_seeds(observation)

    def _track_live_seeds(self, observation: EnvObservation) -> list[EndedSeed]:
        ended: list[EndedSeed] = []
        for slot, report in enumerate(observation.slots):
            tracked = self.live_seeds.get(report.slot_id)
            alive = report.stage in LIVE_STAGES and report.seed_id is not None and report.blueprint_id is not None
            if tracked is not None and not (alive and report.seed_id == tracked[0]):
                seed_id, family, contribution, seed_params = tracked
                fossilized = report.stage is SeedStage.FOSSILIZED and report.seed_id == seed_id
                ended.append(EndedSeed(slot, seed_id, family, contribution, seed_params, fossilized))
                del self.live_seeds[report.slot_id]
            if alive:
                previous = self.live_seeds.get(report.slot_id)
                contribution = report.metrics.counterfactual_contribution
                if contribution is None and previous is not None:
                    contribution = previous[2]  # keep the last measurement through unmeasured epochs
                self.live_seeds[report.slot_id] = [
                    report.seed_id, report.blueprint_id, contribution, int(report.seed_params)
                ]
        return ended

    def cooling_down(self, family: str, epoch: int, cooldown_epochs: int) -> bool:
        """Whether seed family ``family`` was pruned fewer than ``cooldown_epochs`` epochs before ``epoch``."""
        if family not in self.seed_family_pruned_at:
            return False
        return epoch - self.seed_family_pruned_at[family] < cooldown_epochs

    def to_state(self) -> dict[str, Any]:
        return {
            "holding_without_verdict": dict(sorted(self.holding_without_verdict.items())),
            "pruned_seeds_in_recovery": sorted(self.pruned_seeds_in_recovery),
            "seed_family_pruned_at": dict(sorted(self.seed_family_pruned_at.items())),
            "ladder_trials": {k: list(v) for k, v in sorted(self.ladder_trials.items())},
            "ladder_ceiling": dict(sorted(self.ladder_ceiling.items())),
            "live_seeds": {k: list(v) for k, v in sorted(self.live_seeds.items())},
            "subtarget_trials": dict(sorted(self.subtarget_trials.items())),
            "subtarget_ceiling": dict(sorted(self.subtarget_ceiling.items())),
            "subtarget_schedule": {k: list(v) for k, v in sorted(self.subtarget_schedule.items())},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EnvMemory:
        expected = {
            "holding_without_verdict", "pruned_seeds_in_recovery", "seed_family_pruned_at", "ladder_trials",
            "ladder_ceiling", "live_seeds", "subtarget_trials", "subtarget_ceiling", "subtarget_schedule",
        }
        if "blueprint_pruned_at" in state and "seed_family_pruned_at" not in state:  # written before 0.2.0
            state = {("seed_family_pruned_at" if key == "blueprint_pruned_at" else key): value
                     for key, value in state.items()}
        if not {"subtarget_trials", "subtarget_ceiling", "subtarget_schedule"} & set(state):  # written before 0.2.1
            state = {**state, "subtarget_trials": {}, "subtarget_ceiling": {}, "subtarget_schedule": {}}
        if set(state) != expected:
            raise ValueError(f"heuristic memory state has keys {sorted(state)}; expected {sorted(expected)}")
        return cls(
            holding_without_verdict={str(k): int(v) for k, v in state["holding_without_verdict"].items()},
            pruned_seeds_in_recovery={str(seed_id) for seed_id in state["pruned_seeds_in_recovery"]},
            seed_family_pruned_at={str(k): int(v) for k, v in state["seed_family_pruned_at"].items()},
            ladder_trials={str(k): [float(x) for x in v] for k, v in state["ladder_trials"].items()},
            ladder_ceiling={str(k): int(v) for k, v in state["ladder_ceiling"].items()},
            live_seeds={
                str(k): [str(seed_id), str(family), _optional_float(contribution), int(params)]
                for k, (seed_id, family, contribution, params) in state["live_seeds"].items()
            },
            subtarget_trials={str(k): int(v) for k, v in state["subtarget_trials"].items()},
            subtarget_ceiling={str(k): int(v) for k, v in state["subtarget_ceiling"].items()},
            subtarget_schedule={str(k): [int(x) for x in v] for k, v in state["subtarget_schedule"].items()},
        )


# -- run-wide evidence -----------------------------------------------------------------------------


class Verdict(enum.Enum):
    """How an ended seed's last measured contribution compared with its price."""

    PAID_WELL = "paid_well"  # contribution > escalate_margin * price: escalate
    PAID = "paid"  # price < contribution <= escalate_margin * price: stay
    UNPAID = "unpaid"  # contribution <= price, or never measured: fall back


@attrs.define
class SlotEvidence:
    """What this run has learned about germinating in one slot (kept across episodes).

    - ``target``: the seed family the next germination in the slot aims for (None: the cheapest).
    - ``last``: the latest ended seed's [seed id, seed family, contribution or None, price, verdict].
    - ``ended``: how many seeds have ended in the slot (all environments, all episodes).
    """

    target: str | None = None
    last: list[Any] | None = None
    ended: int = 0

    def to_state(self) -> dict[str, Any]:
        return {"target": self.target, "last": None if self.last is None else list(self.last), "ended": self.ended}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SlotEvidence:
        if set(state) != {"target", "last", "ended"}:
            raise ValueError(f"heuristic slot evidence has keys {sorted(state)}; expected ['ended', 'last', 'target']")
        last = state["last"]
        if last is not None:
            seed_id, family, contribution, price, verdict = last
            last = [str(seed_id), str(family), _optional_float(contribution), float(price), Verdict(verdict).value]
        target = state["target"]
        return cls(target=None if target is None else str(target), last=last, ended=int(state["ended"]))


# -- decisions -------------------------------------------------------------------------------------


class Rule(enum.Enum):
    """Which rule produced a decision, in priority order."""

    PRUNE_DAMAGE = "prune_damage"
    SHRINK_UNPAID = "shrink_unpaid"
    DISABLE_RENT = "disable_rent"
    SHRINK_RENT = "shrink_rent"
    GROW_RISING = "grow_rising"
    ENABLE_PAYING = "enable_paying"
    SCHEDULE_DISABLE = "schedule_disable"
    FOSSILIZE = "fossilize"
    PRUNE_PATIENCE = "prune_patience"
    ADVANCE = "advance"
    GERMINATE = "germinate"
    WAIT = "wait"


@attrs.frozen
class Decision:
    """One environment's action and the rule that chose it, with a one-line reason."""

    action: FactoredAction
    rule: Rule
    reason: str


class HeuristicPolicy:
    """A rule-based policy that does not learn. See the package README for the rules."""

    def __init__(self, config: HeuristicConfig, context: PolicyContext) -> None:
        self.config = config
        self.context = context
        self._seed_family_order = resolve_seed_family_order(config, context.seed_families)
        self._rungs = seed_family_rungs(self._seed_family_order, context)
        #: slot id -> what this run has learned about germinating there (survives begin_episode)
        self._evidence: dict[str, SlotEvidence] = {slot_id: SlotEvidence() for slot_id in context.slot_config.slot_ids}
        self.min_training_epochs = (
            context.lifecycle.min_training_epochs if config.min_training_epochs is None else config.min_training_epochs
        )
        self._memories: dict[int, EnvMemory] = {}
        self._last_batch_size: int | None = None
        #: The decisions of the latest ``act`` call, one per environment (for telemetry and tests).
        self.last_decisions: tuple[Decision, ...] = ()

    # -- Policy protocol ---------------------------------------------------------------------------

    def begin_episode(self, round_index: int, n_envs: int) -> None:
        """Forget what was remembered about the previous episode's environments (``0..n_envs-1`` now);
        the run's seed family evidence per slot is kept. Seeds still alive when an episode ends teach nothing."""
        if n_envs < 1:
            raise ValueError(f"an episode needs at least one environment, got n_envs={n_envs}")
        self._memories = {env_id: EnvMemory() for env_id in range(n_envs)}
        self._last_batch_size = None
        self.last_decisions = ()
        return None

    def act(self, observations: Sequence[EnvObservation], masks: ActionMasks) -> list[FactoredAction]:
        check_batch(observations, masks, self.context)
        decisions = []
        for env_index, observation in enumerate(observations):
            memory = self._memory(observation.env_id)
            for ended in memory.observe(observation, self.earns_fossilization):
                self._weigh(ended)
            decision = self.decide(observation, masks, env_index, memory)
            if not masks.allows(env_index, decision.action):
                raise RuntimeError(
                    f"heuristic chose {decision.action!r} ({decision.rule.value}) for environment "
                    f"{observation.env_id}, which the masks forbid"
                )
            decisions.append(decision)
        self.last_decisions = tuple(decisions)
        self._last_batch_size = len(decisions)
        return [decision.action for decision in decisions]

    def record(self, rewards: Sequence[float], terminal: bool) -> None:
        """The heuristic does not learn from rewards; only checks they match the last decisions."""
        if self._last_batch_size is None:
            raise RuntimeError("record() called before act() in this episode")
        if len(rewards) != self._last_batch_size:
            raise ValueError(f"got {len(rewards)} rewards for {self._last_batch_size} decisions")
        return None

    def end_episode(self, round_index: int) -> dict[str, float]:
        """Nothing to update: the heuristic reports no metrics."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "envs": [
                {"env_id": env_id, "memory": memory.to_state()}
                for env_id, memory in sorted(self._memories.items())
            ],
            "evidence": {slot_id: evidence.to_state() for slot_id, evidence in self._evidence.items()},
            "last_batch_size": self._last_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"envs", "evidence", "last_batch_size"}:
            raise ValueError(
                f"heuristic state has keys {sorted(state)}; expected ['envs', 'evidence', 'last_batch_size']"
            )
        slot_ids = self.context.slot_config.slot_ids
        if set(state["evidence"]) != set(slot_ids):
            raise ValueError(
                f"heuristic evidence covers slots {sorted(state['evidence'])}; this run's slots are {list(slot_ids)}"
            )
        evidence = {slot_id: SlotEvidence.from_state(state["evidence"][slot_id]) for slot_id in slot_ids}
        for slot, slot_id in enumerate(slot_ids):
            target = evidence[slot_id].target
            if target is not None and target not in [self.context.seed_families[i] for i in self._rungs[slot]]:
                raise ValueError(f"heuristic evidence for slot {slot_id} targets {target!r}, not a candidate seed family")
        self._memories = {
            int(entry["env_id"]): EnvMemory.from_state(entry["memory"]) for entry in state["envs"]
        }
        self._evidence = evidence
        self._last_batch_size = state["last_batch_size"]
        self.last_decisions = ()
        return None

    # -- prices and evidence -----------------------------------------------------------------------

    def price(self, seed_params: int) -> float:
        """What a seed of ``seed_params`` parameters in use must contribute to pay for itself."""
        return self.config.price_per_kparam * seed_params / 1000

    def pays(self, report: SeedStateReport) -> bool:
        """Whether the seed's measured contribution exceeds its price (False when unmeasured)."""
        contribution = report.metrics.counterfactual_contribution
        return contribution is not None and contribution > self.price(report.seed_params)

    def earns_fossilization(self, report: SeedStateReport) -> bool:
        """Rule 2's test: measured, at least ``fossilize_threshold``, and paying its price."""
        contribution = report.metrics.counterfactual_contribution
        return contribution is not None and contribution >= self.config.fossilize_threshold and self.pays(report)

    def verdict(self, contribution: float | None, seed_params: int) -> Verdict:
        price = self.price(seed_params)
        if contribution is None or contribution <= price:
            return Verdict.UNPAID
        if contribution > self.config.escalate_margin * price:
            return Verdict.PAID_WELL
        return Verdict.PAID

    def evidence(self, slot_id: str) -> SlotEvidence:
        """The run's evidence for one slot (read-only use: telemetry and tests)."""
        return self._evidence[slot_id]

    def target_rung(self, slot: int) -> int:
        """The position, in the slot's rungs (candidates from cheapest to largest), the next germination aims for."""
        target = self._evidence[self.context.slot_config.slot_ids[slot]].target
        names = [self.context.seed_families[index] for index in self._rungs[slot]]
        return 0 if target is None else names.index(target)

    def _weigh(self, ended: EndedSeed) -> None:
        """Move the slot's target by one ended seed: a rung up if it paid a lot, stay if it paid, a rung
        down if it did not. Seeds of seed families that are not candidates teach nothing."""
        names = [self.context.seed_families[index] for index in self._rungs[ended.slot]]
        if ended.seed_family not in names:
            return
        rung = names.index(ended.seed_family)
        verdict = self.verdict(ended.contribution, ended.seed_params)
        if verdict is Verdict.PAID_WELL:
            rung = min(rung + 1, len(names) - 1)
        elif verdict is Verdict.UNPAID:
            rung = max(rung - 1, 0)
        evidence = self._evidence[self.context.slot_config.slot_ids[ended.slot]]
        evidence.target = names[rung]
        evidence.last = [
            ended.seed_id, ended.seed_family, ended.contribution, self.price(ended.seed_params), verdict.value
        ]
        evidence.ended += 1

    # -- the rules ---------------------------------------------------------------------------------

    def decide(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision:
        """The highest-priority rule that fires for this environment, or WAIT."""
        for rule in self.rules():
            decision = rule(observation, masks, env_index, memory)
            if decision is not None:
                return decision
        return Decision(pinned_action(LifecycleOp.WAIT), Rule.WAIT, "no rule fired")

    def rules(self) -> tuple[Callable[[EnvObservation, ActionMasks, int, EnvMemory], Decision | None], ...]:
        """The rules in priority order (a subclass may insert its own)."""
        return (
            self._prune_damage,
            self._shrink_unpaid,
            self._disable_rent,
            self._shrink_rent,
            self._grow_rising,
            self._enable_paying,
            self._fossilize,
            self._prune_patience,
            self._advance,
            self._germinate,
        )

    def holds_back_fossilization(self, report: SeedStateReport, memory: EnvMemory) -> bool:
        """Whether rule 2 must leave this seed alone for now (the heuristic never holds one back)."""
        return False

    def _prune_action(self, slot: int) -> FactoredAction:
        return pinned_action(
            LifecycleOp.PRUNE,
            slot=slot,
            alpha_speed=int(self.config.prune_speed),
            alpha_curve=int(self.config.prune_curve),
        )

    def _prune_damage(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision | None:
        """Rule 1: the blended seed with the most negative measured contribution below -prune_threshold."""
        worst: tuple[float, int] | None = None
        for slot, report in enumerate(observation.slots):
            contribution = report.metrics.counterfactual_contribution
            if report.stage not in BLENDED_STAGES or contribution is None:
                continue
            if contribution >= -self.config.prune_threshold:
                continue
            if not masks.allows(env_index, self._prune_action(slot)):
                continue
            if worst is None or contribution < worst[0]:
                worst = (contribution, slot)
        if worst is None:
            return None
        contribution, slot = worst
        return Decision(
            self._prune_action(slot),
            Rule.PRUNE_DAMAGE,
            f"{observation.slots[slot].slot_id}: contribution {contribution:.4g} < -{self.config.prune_threshold}",
        )

    def _shrink_unpaid(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision | None:
        """Ladder rule: a growth judged after ladder_patience epochs that did not raise the contribution by
        ladder_min_gain is undone, and the seed is capped at the level below."""
        for slot, report in enumerate(observation.slots):
            trial = memory.ladder_trials.get(report.seed_id) if report.seed_id is not None else None
            contribution = report.metrics.counterfactual_contribution
            if trial is None or contribution is None or report.stage not in BLENDED_STAGES:
                continue
            grown_at, before = trial
            if observation.epoch - grown_at < self.config.ladder_patience:
                continue
            del memory.ladder_trials[report.seed_id]
            gain = contribution - before
            if gain >= self.config.ladder_min_gain:
                continue  # the growth paid: keep it
            memory.ladder_ceiling[report.seed_id] = report.internal_level - 1
            action = pinned_action(LifecycleOp.SHRINK_INTERNAL, slot=slot)
            if masks.allows(env_index, action):
                return Decision(
                    action, Rule.SHRINK_UNPAID,
                    f"{report.slot_id}: level {report.internal_level} raised the contribution by only {gain:.4g}",
                )
        return None

    def _shrink_rent(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision | None:
        """Ladder rule: a HOLDING ladder seed above level 1 whose measured contribution no longer pays the
        rent of its current level (its price at the parameters in use) gives back one level instead of
        being pruned, and is not grown back past the level below; at level 1 rule 3 prunes it as before.
        A growth on trial is left to the trial's verdict."""
        for slot, report in enumerate(observation.slots):
            if report.stage is not SeedStage.HOLDING or report.internal_kind is None or report.internal_level <= 1:
                continue
            contribution = report.metrics.counterfactual_contribution
            if contribution is None or report.seed_id in memory.ladder_trials or self.pays(report):
                continue
            if report.seed_id in memory.subtarget_trials:
                continue  # a subtarget change on trial is judged first
            action = pinned_action(LifecycleOp.SHRINK_INTERNAL, slot=slot)
            if not masks.allows(env_index, action):
                continue
            memory.ladder_ceiling[report.seed_id] = report.internal_level - 1
            return Decision(
                action, Rule.SHRINK_RENT,
                f"{report.slot_id}: contribution {contribution:.4g} does not pay the rent "
                f"{self.price(report.seed_params):.4g} of level {report.internal_level}; "
                f"level {report.internal_level} -> {report.internal_level - 1}",
            )
        return None

    # -- the subtarget rule ------------------------------------------------------------------------

    def subtarget_rent(self, report: SeedStateReport) -> float:
        """What a seed with an inventory must contribute to keep its groups: the price of its parameters in
        use, scaled by alpha while it is BLENDING (its contribution is measured at that alpha, and
        rent is charged on alpha x size while it blends in)."""
        scale = report.alpha if report.stage is SeedStage.BLENDING else 1.0
        return self.price(report.seed_params) * scale

    def _subtarget_candidates(
        self, observation: EnvObservation, memory: EnvMemory
    ) -> list[tuple[int, SeedStateReport, float]]:
        """(slot, report, measured contribution) of every BLENDING or HOLDING seed with an inventory that
        is not blending out and has no subtarget change or ladder growth on trial, in slot order; a change
        whose trial has run ``subtarget_patience`` epochs is closed here."""
        if not self.config.subtarget_ops:
            return []
        found = []
        for slot, report in enumerate(observation.slots):
            if report.stage not in BLENDED_STAGES or report.blend_out or report.subtarget_count == 0:
                continue
            seed_id = report.seed_id
            if seed_id is None or seed_id in memory.ladder_trials:
                continue
            changed = memory.subtarget_trials.get(seed_id)
            if changed is not None:
                if observation.epoch - changed < self.config.subtarget_patience:
                    continue
                del memory.subtarget_trials[seed_id]
            contribution = report.metrics.counterfactual_contribution
            if contribution is not None:
                found.append((slot, report, contribution))
        return found

    @staticmethod
    def _groups(report: SeedStateReport, enabled: bool) -> list[int]:
        mask = report.subtarget_active_mask[: report.subtarget_count]
        return [index for index, state in enumerate(mask) if bool(state) is enabled]

    def _disable_rent(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision | None:
        """Subtarget rule: a HOLDING seed with an inventory whose measured contribution does not pay the rent
        of its parameters in use, with more than one group enabled, disables its least important enabled
        group (lowest ``subtarget_importance``; the highest index on ties), and is not given that many
        groups again. A BLENDING seed is not judged yet: its groups entered at zero and are still being
        blended in, so a low contribution is no evidence against them."""
        for slot, report, contribution in self._subtarget_candidates(observation, memory):
            if report.stage is not SeedStage.HOLDING:
                continue
            enabled = self._groups(report, True)
            rent = self.subtarget_rent(report)
            if len(enabled) <= 1 or contribution > rent:
                continue
            group, score = least_important_group(report)
            action = pinned_action(LifecycleOp.DISABLE_SUBTARGET, slot=slot, subtarget=group)
            if not masks.allows(env_index, action):
                continue
            memory.subtarget_trials[report.seed_id] = observation.epoch
            memory.subtarget_ceiling[report.seed_id] = len(enabled) - 1
            return Decision(
                action, Rule.DISABLE_RENT,
                f"{report.slot_id}: contribution {contribution:.4g} does not pay the rent {rent:.4g} of "
                f"{len(enabled)} groups; disable group {group} (importance {score:.4g})",
            )
        return None

    def _enable_paying(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision | None:
        """Subtarget rule: a BLENDING or HOLDING seed with an inventory whose measured contribution exceeds
        ``subtarget_enable_margin`` times its rent, with a disabled group and below its ceiling, enables its
        lowest disabled group."""
        for slot, report, contribution in self._subtarget_candidates(observation, memory):
            disabled = self._groups(report, False)
            enabled = report.subtarget_count - len(disabled)
            rent = self.subtarget_rent(report)
            if not disabled or contribution <= self.config.subtarget_enable_margin * rent:
                continue
            ceiling = memory.subtarget_ceiling.get(report.seed_id, report.subtarget_count)
            if report.internal_kind is not None:  # a ladder seed's level is its enabled count
                ceiling = min(ceiling, memory.ladder_ceiling.get(report.seed_id, report.subtarget_count))
            if enabled >= ceiling:
                continue
            group = disabled[0]
            action = pinned_action(LifecycleOp.ENABLE_SUBTARGET, slot=slot, subtarget=group)
            if not masks.allows(env_index, action):
                continue
            memory.subtarget_trials[report.seed_id] = observation.epoch
            return Decision(
                action, Rule.ENABLE_PAYING,
                f"{report.slot_id}: contribution {contribution:.4g} > {self.config.subtarget_enable_margin} x rent "
                f"{rent:.4g}; enable group {group} ({enabled} -> {enabled + 1} groups)",
            )
        return None

    def _grow_rising(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision | None:
        """Ladder rule: a HOLDING ladder seed whose contribution is still rising gets one more level."""
        for slot, report in enumerate(observation.slots):
            metrics = report.metrics
            if report.stage is not SeedStage.HOLDING or report.seed_id in memory.ladder_trials:
                continue
            if report.seed_id in memory.subtarget_trials:
                continue
            if metrics.counterfactual_contribution is None or metrics.contribution_velocity is None:
                continue
            if metrics.contribution_velocity < self.config.ladder_min_gain:
                continue
            if not self.pays(report):
                continue  # a seed that does not pay for its current size is not bought more
            ceiling = min(
                memory.ladder_ceiling.get(report.seed_id, report.internal_max_level),
                memory.subtarget_ceiling.get(report.seed_id, report.internal_max_level),
            )
            if report.internal_level >= ceiling:
                continue
            action = pinned_action(LifecycleOp.GROW_INTERNAL, slot=slot)
            if not masks.allows(env_index, action):
                continue
            memory.ladder_trials[report.seed_id] = [float(observation.epoch), metrics.counterfactual_contribution]
            return Decision(
                action, Rule.GROW_RISING,
                f"{report.slot_id}: contribution rose by {metrics.contribution_velocity:.4g}; level "
                f"{report.internal_level} -> {report.internal_level + 1}",
            )
        return None

    def _fossilize(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision | None:
        """Rule 2: the HOLDING seed with the highest measured contribution that is at or above
        fossilize_threshold and pays its price."""
        best: tuple[float, int] | None = None
        for slot, report in enumerate(observation.slots):
            contribution = report.metrics.counterfactual_contribution
            if report.stage is not SeedStage.HOLDING or contribution is None:
                continue
            if not self.earns_fossilization(report) or report.seed_id in memory.ladder_trials:
                continue  # a growth on trial is judged before the seed is frozen
            if report.seed_id in memory.subtarget_trials or self.holds_back_fossilization(report, memory):
                continue  # so is a subtarget change
            if not masks.allows(env_index, pinned_action(LifecycleOp.FOSSILIZE, slot=slot)):
                continue
            if best is None or contribution > best[0]:
                best = (contribution, slot)
        if best is None:
            return None
        contribution, slot = best
        return Decision(
            pinned_action(LifecycleOp.FOSSILIZE, slot=slot),
            Rule.FOSSILIZE,
            f"{observation.slots[slot].slot_id}: contribution {contribution:.4g} >= {self.config.fossilize_threshold} "
            f"and > its price {self.price(observation.slots[slot].seed_params):.4g}",
        )

    def _prune_patience(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision | None:
        """Rule 3: the earliest HOLDING seed that used up holding_patience without earning fossilization."""
        for slot, report in enumerate(observation.slots):
            if report.stage is not SeedStage.HOLDING:
                continue
            waited = memory.holding_without_verdict[report.seed_id]
            if waited < self.config.holding_patience:
                continue
            action = self._prune_action(slot)
            if masks.allows(env_index, action):
                return Decision(
                    action,
                    Rule.PRUNE_PATIENCE,
                    f"{report.slot_id}: {waited} holding epochs below {self.config.fossilize_threshold} "
                    f"or not paying its price {self.price(report.seed_params):.4g}",
                )
        return None

    def _advance(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision | None:
        """Rule 4: the TRAINING seed that has incubated longest, once past min_training_epochs."""
        chosen: tuple[int, int] | None = None
        for slot, report in enumerate(observation.slots):
            if report.stage is not SeedStage.TRAINING:
                continue
            epochs = report.metrics.seed_age_epochs
            if epochs < self.min_training_epochs:
                continue
            if not masks.allows(env_index, pinned_action(LifecycleOp.ADVANCE, slot=slot)):
                continue
            if chosen is None or epochs > chosen[0]:
                chosen = (epochs, slot)
        if chosen is None:
            return None
        epochs, slot = chosen
        return Decision(
            pinned_action(LifecycleOp.ADVANCE, slot=slot),
            Rule.ADVANCE,
            f"{observation.slots[slot].slot_id}: incubated {epochs} epochs",
        )

    def plateaued(self, observation: EnvObservation) -> bool:
        """Whether the best metric of the last plateau_window epochs beats the best metric before
        them by less than plateau_delta (False while the history is too short to tell)."""
        window = self.config.plateau_window
        history = observation.metric_history
        if len(history) <= window:
            return False
        improvement = max(history[-window:]) - max(history[:-window])
        return improvement < self.config.plateau_delta

    def _germinate(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision | None:
        """Rule 5: on a plateau, germinate in the earliest free slot the seed family the slot's evidence
        points at (see ``_choose_seed_family``)."""
        if not bool(masks.op[env_index, int(LifecycleOp.GERMINATE)]):
            return None
        if observation.epoch + 1 < self.config.warmup_epochs:
            return None
        if observation.epochs_left < self.config.epochs_to_verdict(self.min_training_epochs):
            return None
        if not self.plateaued(observation):
            return None
        run_families = self.context.seed_families
        for slot in range(len(observation.slots)):
            choice = self._choose_seed_family(observation, masks, env_index, memory, slot)
            if choice is None:
                continue
            action = self._germinate_action(slot, choice)
            target = run_families[self._rungs[slot][self.target_rung(slot)]]
            aimed = "" if run_families[choice] == target else f" (evidence points at {target}, not available)"
            return Decision(
                action,
                Rule.GERMINATE,
                f"plateau: germinate {run_families[choice]} in {observation.slots[slot].slot_id}{aimed}",
            )
        return None

    def _germinate_action(self, slot: int, family: int) -> FactoredAction:
        return pinned_action(
            LifecycleOp.GERMINATE,
            slot=slot,
            blueprint=family,
            style=int(self.config.blend_style),
            tempo=int(self.config.blend_tempo),
            alpha_target=int(self.config.blend_alpha_target),
            alpha_curve=int(self.config.blend_curve),
        )

    def _choose_seed_family(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory, slot: int
    ) -> int | None:
        """The seed family to germinate in ``slot``: the target rung if the masks allow it and it is not
        cooling down; otherwise the largest such rung below it, otherwise the cheapest such rung above it;
        None when no candidate is available in the slot."""
        usable = [
            rung
            for rung, index in enumerate(self._rungs[slot])
            if masks.allows(env_index, self._germinate_action(slot, index))
            and not memory.cooling_down(
                self.context.seed_families[index], observation.epoch, self.config.seed_family_cooldown_epochs
            )
        ]
        if not usable:
            return None
        target = self.target_rung(slot)
        below = [rung for rung in usable if rung <= target]
        rung = max(below) if below else min(usable)
        return self._rungs[slot][rung]

    # -- internals ---------------------------------------------------------------------------------

    def _memory(self, env_id: int) -> EnvMemory:
        if env_id not in self._memories:
            raise KeyError(
                f"no memory for environment {env_id}: call begin_episode() with enough environments "
                f"(this episode has {len(self._memories)})"
            )
        return self._memories[env_id]

