"""The ``adalora_schedule`` policy: the heuristic's lifecycle with a fixed, AdaLoRA-style budget schedule that disables each seed's least important subtarget group."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from esper_core.leyline import BLENDED_STAGES, LifecycleOp, SeedStage, SeedStateReport
from esper_core.tamiyo import ActionMasks, EnvObservation
from esper_core.validators import InvalidValue, non_negative_int, positive_int

from esper_heuristic.actions import pinned_action
from esper_heuristic.heuristic import (
    Decision,
    EnvMemory,
    HeuristicConfig,
    HeuristicPolicy,
    Rule,
    least_important_group,
)


def _budget_fraction(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not 0.0 < value <= 1.0:
        raise InvalidValue(attribute.name, f"must be a finite number in (0, 1], got {value!r}", value)


def _heuristic_subtarget_rule_off(_instance: Any, attribute: attrs.Attribute[Any], value: bool) -> None:
    if value is not False:
        raise InvalidValue(
            attribute.name,
            f"must be false: the adalora_schedule policy replaces the heuristic's subtarget rule with its "
            f"schedule, got {value!r}",
            value,
        )


@attrs.frozen(kw_only=True)
class AdaLoRAScheduleConfig(HeuristicConfig):
    """Options of the ``adalora_schedule`` policy: every ``heuristic`` option (its lifecycle rules) and the
    schedule's three. The heuristic's own subtarget rule is off (``subtarget_ops`` must stay false)."""

    #: epochs after a seed with an inventory is blended in (first seen HOLDING) before its first disable
    start_epoch: int = attrs.field(default=2, validator=non_negative_int())
    #: epochs between two scheduled disables of the same seed
    interval: int = attrs.field(default=2, validator=positive_int())
    #: the schedule stops once the seed's parameters in use are at most this fraction of what they were
    #: when its schedule started (never below one enabled group)
    budget_fraction: float = attrs.field(default=0.5, validator=_budget_fraction)
    subtarget_ops: bool = attrs.field(default=False, validator=_heuristic_subtarget_rule_off)


class AdaLoRASchedulePolicy(HeuristicPolicy):
    """The heuristic's lifecycle rules plus a fixed budget schedule (no learning): ``start_epoch`` epochs
    after a seed with an inventory is blended in, and every ``interval`` epochs after that, its least
    important enabled group (lowest ``subtarget_importance``, the report's moving average of each group's
    contribution) is disabled, until its parameters in use are at most ``budget_fraction`` of those when
    the schedule started, or one group is left. A seed under schedule is not fossilized before the
    schedule ends, nor grown by the ladder rules. This is the field's standard way to cut effective
    parameters (AdaLoRA's importance-driven rank budget, on a fixed schedule), as a baseline."""

    config: AdaLoRAScheduleConfig

    def rules(self) -> tuple[Callable[[EnvObservation, ActionMasks, int, EnvMemory], Decision | None], ...]:
        first, *rest = super().rules()
        return (first, self._schedule_disable, *rest)

    def schedule_done(self, report: SeedStateReport, schedule: list[int]) -> bool:
        """Whether the seed's schedule has reached its budget (or its last group)."""
        _started, start_params, _due = schedule
        return (
            report.seed_params <= self.config.budget_fraction * start_params or report.subtarget_active_count <= 1
        )

    def holds_back_fossilization(self, report: SeedStateReport, memory: EnvMemory) -> bool:
        schedule = memory.subtarget_schedule.get(report.seed_id) if report.seed_id is not None else None
        return schedule is not None and not self.schedule_done(report, schedule)

    def _schedule_disable(
        self, observation: EnvObservation, masks: ActionMasks, env_index: int, memory: EnvMemory
    ) -> Decision | None:
        """The schedule: start a seed's schedule when it is first seen HOLDING with an inventory; disable the
        least important enabled group of the first seed (slot order) whose next disable is due and whose
        budget is not reached. Fossils are never touched."""
        for report in observation.slots:
            if report.stage is SeedStage.HOLDING and report.subtarget_count and report.seed_id is not None:
                if report.seed_id not in memory.subtarget_schedule:
                    memory.subtarget_schedule[report.seed_id] = [
                        observation.epoch, int(report.seed_params), observation.epoch + self.config.start_epoch
                    ]
        for slot, report in enumerate(observation.slots):
            schedule = memory.subtarget_schedule.get(report.seed_id) if report.seed_id is not None else None
            if schedule is None or report.stage not in BLENDED_STAGES or report.blend_out:
                continue
            if report.internal_kind is not None:  # the ladder rules never grow a seed under schedule
                level = memory.ladder_ceiling.get(report.seed_id, report.internal_level)
                memory.ladder_ceiling[report.seed_id] = min(level, report.internal_level)
            started, start_params, due = schedule
            if observation.epoch < due or self.schedule_done(report, schedule):
                continue
            group, score = least_important_group(report)
            action = pinned_action(LifecycleOp.DISABLE_SUBTARGET, slot=slot, subtarget=group)
            if not masks.allows(env_index, action):
                continue
            schedule[2] = observation.epoch + self.config.interval
            if report.internal_kind is not None:
                memory.ladder_ceiling[report.seed_id] = report.subtarget_active_count - 1
            return Decision(
                action, Rule.SCHEDULE_DISABLE,
                f"{report.slot_id}: schedule (blended in at epoch {started}): {report.seed_params} parameters in use > "
                f"{self.config.budget_fraction} x {start_params}; disable group {group} (importance {score:.4g})",
            )
        return None
