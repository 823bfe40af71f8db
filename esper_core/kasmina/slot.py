"""A seed slot: one tap on the host's activation stream and the full lifecycle of the seed it carries.

Gradient isolation rule (explicit, tested): while a seed incubates (GERMINATED, TRAINING) it reads a
*detached* host activation and contributes a straight-through term, so the forward value and every
host gradient are exactly those of the host without the seed, while the seed learns from the host's
gradient (``y = h + (s - s.detach())`` with ``s = seed(h.detach())``). From BLENDING on, and after
FOSSILIZED, nothing is detached: the host upstream of the slot learns through the seed path too,
and a fossilized seed is part of the host and trains with the host optimizer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import nn

from esper_core.errors import EsperError, LifecycleError, SeedContractError
from esper_core.kasmina.blending import ActivationLayout, AlphaSchedule, BlendGate, blend, resolve_topology
from esper_core.kasmina.inventory import SubtargetInventory
from esper_core.kasmina.ladder import LadderModule
from esper_core.leyline import (
    BLENDED_STAGES,
    INCUBATOR_STAGES,
    LIVE_STAGES,
    AlphaCurve,
    BlendStyle,
    InjectionSpec,
    SeedMetrics,
    SeedStage,
    SeedStateReport,
    TelemetryEvent,
    TelemetryEventType,
    check_transition,
)
from esper_core.leyline.telemetry import (
    SeedFossilizedPayload,
    SeedGerminatedPayload,
    SeedInternalLevelChangedPayload,
    SeedPrunedPayload,
    SeedStageChangedPayload,
    SeedSubtargetChangedPayload,
)

#: Stages in which a seed's subtarget groups may be switched (a fossil's mask is frozen; a GERMINATED
#: seed turns TRAINING at its first tick).
SUBTARGET_STAGES = frozenset({SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING})

#: Builds a seed module: (seed family name, channels) -> module.
SeedBuilder = Callable[[str, int], nn.Module]
#: Receives the typed events a slot emits.
EventSink = Callable[[TelemetryEvent], None]
#: Returns the current (round, epoch) for event payloads.
Clock = Callable[[], tuple[int, int]]
#: Names the plugin that registered a seed family (for error messages); None when unknown.
SeedPluginLookup = Callable[[str], "str | None"]


@attrs.frozen
class LifecycleSettings:
    """Lifecycle rules shared by every slot of a run. ``auto_advance``: a TRAINING seed moves to
    BLENDING by itself at the first tick at which ADVANCE would pass gate G1 (the policy then decides
    only GERMINATE, the blend's settings and FOSSILIZE/PRUNE; ADVANCE stays available)."""

    embargo_epochs: int = 3
    min_training_epochs: int = 2
    auto_advance: bool = False


@attrs.frozen
class OpResult:
    """The outcome of one lifecycle operation; ``reason`` says why it failed."""

    success: bool
    reason: str = ""


OK = OpResult(True)


@attrs.frozen
class SlotLifecycleState:
    """Everything about a slot but its weights: the one list of a slot's lifecycle fields.

    ``SeedSlot`` keeps each field (but ``internal_level``) as an attribute of the same name, and
    resetting, checkpointing and restoring a slot all iterate this record's fields, so a field added
    here is reset, saved and restored everywhere at once (a test checks that a slot has no lifecycle
    attribute outside it). The defaults are a DORMANT slot's. ``internal_level`` is read from and
    applied to the seed's ladder (None without one); ``subtarget_mask`` likewise from and to the seed's
    subtarget inventory (its K entries, True = enabled; None without one), applied after the level. Checkpoints hold it unstructured by the project's
    cattrs converter (``esper_core.tolaria.state``): plain values, enums by name.
    """

    stage: SeedStage = SeedStage.DORMANT
    seed_id: str | None = None
    blueprint_id: str | None = None
    style: BlendStyle | None = None
    blend_epochs: int = 0
    planned_alpha_target: float = 1.0
    planned_curve: AlphaCurve = AlphaCurve.LINEAR
    alpha: float = 0.0
    schedule: AlphaSchedule | None = None
    blend_out: bool = False
    prune_reason: str = ""
    embargo_left: int = 0
    epochs_in_stage: int = 0
    seed_age: int = 0
    contribution: float | None = None
    contribution_velocity: float | None = None
    epochs_since_measured: int | None = None
    score_at_germination: float | None = None
    last_score: float | None = None
    seed_grad_norm: float | None = None
    host_grad_norm: float | None = None
    grad_finite: bool = True
    internal_last_direction: int = 0
    epochs_since_internal_change: int | None = None
    epochs_since_subtarget_change: int | None = None
    internal_level: int | None = None
    subtarget_mask: tuple[bool, ...] | None = None


# string annotations (``from __future__ import annotations``) resolved, so converters structure enums as enums
attrs.resolve_types(SlotLifecycleState)

#: The record's fields a slot keeps as attributes of the same name (``internal_level`` lives in the ladder,
#: ``subtarget_mask`` in the inventory).
_SLOT_ATTRIBUTES: tuple[attrs.Attribute, ...] = tuple(
    field for field in attrs.fields(SlotLifecycleState) if field.name not in ("internal_level", "subtarget_mask")
)


def count_parameters(module: nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(parameter.numel() for parameter in module.parameters())


class SeedSlot(nn.Module):
    """One slot on the host's activation stream, identity while dormant.

    ``topology`` is the host's registered ``TopologyKind`` (a bare name only for the core's own
    ``image`` / ``sequence``): a learned blend gate uses its layout, and a germinated seed is probed
    once on its ``example_shape`` (the seed contract). ``seed_plugin`` names the plugin that
    registered a seed family, for the errors that contract raises.
    """

    def __init__(
        self,
        spec: InjectionSpec,
        *,
        topology: ActivationLayout | str,
        settings: LifecycleSettings,
        build_seed: SeedBuilder,
        env_id: int = 0,
        emit: EventSink | None = None,
        clock: Clock | None = None,
        seed_plugin: SeedPluginLookup | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.slot_id = spec.slot_id
        self.topology = resolve_topology(topology)
        self.settings = settings
        self._build_seed = build_seed
        self.env_id = env_id
        self._emit = emit
        self._clock = clock or (lambda: (0, 0))
        self._seed_plugin = seed_plugin
        self.seed: nn.Module | None = None
        self.gate: BlendGate | None = None
        self.register_buffer("alpha_tensor", torch.zeros(()), persistent=False)
        self._reset_state()

    # The lifecycle attributes (one per SlotLifecycleState field but internal_level), set by _reset_state.
    stage: SeedStage
    seed_id: str | None
    blueprint_id: str | None
    style: BlendStyle | None
    blend_epochs: int
    planned_alpha_target: float
    planned_curve: AlphaCurve
    alpha: float
    schedule: AlphaSchedule | None
    blend_out: bool
    prune_reason: str
    embargo_left: int
    epochs_in_stage: int
    seed_age: int
    contribution: float | None
    contribution_velocity: float | None
    epochs_since_measured: int | None
    score_at_germination: float | None
    last_score: float | None
    seed_grad_norm: float | None
    host_grad_norm: float | None
    grad_finite: bool
    internal_last_direction: int
    epochs_since_internal_change: int | None
    epochs_since_subtarget_change: int | None

    def _reset_state(self) -> None:
        """Back to a DORMANT slot: no seed, every lifecycle field at its SlotLifecycleState default."""
        self.seed = None
        self.gate = None
        self._apply_fields(SlotLifecycleState())

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        stage = self.stage
        if stage in INCUBATOR_STAGES:
            seed_out = self.seed(h.detach())
            return h + (seed_out - seed_out.detach())
        if stage in BLENDED_STAGES or stage is SeedStage.FOSSILIZED:
            return blend(self.style, h, self.seed(h), self.alpha_tensor, self.gate)
        return h

    @property
    def is_active(self) -> bool:
        """Whether the slot does any work in the forward pass."""
        return self.stage in LIVE_STAGES or self.stage is SeedStage.FOSSILIZED

    @property
    def is_ablatable(self) -> bool:
        """Whether the counterfactual (alpha forced to 0) differs from the forward pass: a blended seed
        (BLENDING, HOLDING) or a fossil, whose contribution is thereby measured every epoch too."""
        return self.stage in BLENDED_STAGES or self.stage is SeedStage.FOSSILIZED

    # -- lifecycle operations ----------------------------------------------------------------------

    def germinate(
        self,
        *,
        seed_id: str,
        seed_family: str,
        style: BlendStyle,
        blend_epochs: int,
        alpha_target: float,
        alpha_curve: AlphaCurve,
        score_now: float | None,
    ) -> OpResult:
        if self.stage is not SeedStage.DORMANT:
            return OpResult(False, f"slot {self.slot_id} is {self.stage.name}, not DORMANT")
        if not 0.0 < alpha_target <= 1.0:
            raise LifecycleError(f"slot {self.slot_id}: alpha target {alpha_target} not in (0, 1]")
        self.seed = self._new_seed(seed_family)  # raises SeedContractError before anything changes
        self.gate = self._build_gate() if style is BlendStyle.GATE else None
        self.seed_id = seed_id
        self.blueprint_id = seed_family
        self.style = style
        self.blend_epochs = blend_epochs
        self.planned_alpha_target = alpha_target
        self.planned_curve = alpha_curve
        self.score_at_germination = score_now
        self.last_score = score_now
        self.seed_age = 0
        self._transition(SeedStage.GERMINATED)
        round_, epoch = self._clock()
        self._send(
            TelemetryEventType.SEED_GERMINATED,
            SeedGerminatedPayload(
                env_id=self.env_id, round=round_, epoch=epoch, slot_id=self.slot_id,
                seed_id=seed_id, blueprint_id=seed_family, style=style.name,
                alpha_target=alpha_target, seed_params=self.seed_params, built_params=self.built_params,
                internal_level=self.ladder.internal_level if self.ladder is not None else 0,
                internal_effective_params=self.internal_effective_params,
                internal_group_size=self.internal_group_size, internal_active_groups=self.internal_active_groups,
            ),
        )
        return OK

    def advance(self) -> OpResult:
        """ADVANCE: TRAINING -> BLENDING through gate G1: at least ``min_training_epochs`` epochs since
        germination (the GERMINATED epoch counts: the seed incubates in it) and finite seed gradients."""
        if self.stage is not SeedStage.TRAINING:
            return OpResult(False, f"slot {self.slot_id} is {self.stage.name}; ADVANCE needs TRAINING")
        if self.seed_age < self.settings.min_training_epochs:
            return OpResult(
                False,
                f"gate G1: {self.seed_age} of {self.settings.min_training_epochs} incubation epochs",
            )
        if not self.grad_finite:
            return OpResult(False, "gate G1: seed gradients are not finite")
        self.schedule = AlphaSchedule(
            start=0.0, target=self.planned_alpha_target, total_epochs=self.blend_epochs,
            curve=self.planned_curve,
        )
        self._set_alpha(self.schedule.value())
        self._transition(SeedStage.BLENDING)
        return OK

    def set_alpha_target(self, target: float, *, epochs: int, curve: AlphaCurve) -> OpResult:
        if self.stage not in BLENDED_STAGES or self.blend_out:
            return OpResult(
                False, f"slot {self.slot_id} is {self.stage.name}; SET_ALPHA_TARGET needs BLENDING or HOLDING"
            )
        if not 0.0 < target <= 1.0:
            raise LifecycleError(f"slot {self.slot_id}: alpha target {target} not in (0, 1]")
        current_target = self.schedule.target if self.schedule is not None else self.alpha
        if math.isclose(target, current_target):
            return OpResult(False, f"alpha target is already {target}")
        self.schedule = AlphaSchedule(start=self.alpha, target=target, total_epochs=epochs, curve=curve)
        self._set_alpha(self.schedule.value())
        if self.stage is SeedStage.HOLDING:
            self._transition(SeedStage.BLENDING)
        return OK

    def prune(self, *, epochs: int, curve: AlphaCurve, reason: str) -> OpResult:
        """Instant prune (``epochs == 0`` or an incubating seed) or a scheduled blend-out to alpha 0."""
        if self.stage not in LIVE_STAGES:
            return OpResult(False, f"slot {self.slot_id} is {self.stage.name}; PRUNE needs a live seed")
        if self.blend_out:
            return OpResult(False, f"slot {self.slot_id} is already blending out")
        if epochs <= 0 or self.stage in INCUBATOR_STAGES:
            self.prune_now(reason)
            return OK
        self.schedule = AlphaSchedule(start=self.alpha, target=0.0, total_epochs=epochs, curve=curve)
        self.blend_out = True
        self.prune_reason = reason
        self._set_alpha(self.schedule.value())
        if self.stage is SeedStage.HOLDING:
            self._transition(SeedStage.BLENDING)
        return OK

    @property
    def ladder(self) -> LadderModule | None:
        """The seed, when it has an internal capacity ladder."""
        return self.seed if isinstance(self.seed, LadderModule) else None

    def grow_internal(self) -> OpResult:
        return self._change_level(+1)

    def shrink_internal(self) -> OpResult:
        return self._change_level(-1)

    def _change_level(self, step: int) -> OpResult:
        name = "GROW_INTERNAL" if step > 0 else "SHRINK_INTERNAL"
        if self.stage not in LIVE_STAGES:
            return OpResult(False, f"slot {self.slot_id} is {self.stage.name}; {name} needs a live seed")
        if self.blend_out:
            return OpResult(False, f"slot {self.slot_id} is blending out")
        ladder = self.ladder
        if ladder is None:
            return OpResult(False, f"seed {self.seed_id} ({self.blueprint_id}) has no internal ladder")
        source = ladder.internal_level
        target = source + step
        if not 0 <= target <= ladder.internal_max_level:
            return OpResult(False, f"level {target} is outside the ladder 0..{ladder.internal_max_level}")
        ladder.set_internal_level(target)
        self.internal_last_direction = step
        self.epochs_since_internal_change = 0
        if self.inventory is not None:  # a ladder that is also an inventory: the level moved the mask
            self.epochs_since_subtarget_change = 0
        round_, epoch = self._clock()
        self._send(
            TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED,
            SeedInternalLevelChangedPayload(
                slot_id=self.slot_id, env_id=self.env_id, seed_id=self.seed_id, blueprint_id=self.blueprint_id,
                from_level=source, to_level=target,
                internal_effective_params=self.internal_effective_params,  # the same count reports and rent use
                internal_group_size=self.internal_group_size, internal_active_groups=self.internal_active_groups,
                round=round_, epoch=epoch,
            ),
        )
        return OK

    @property
    def inventory(self) -> SubtargetInventory | None:
        """The seed, when it has a subtarget inventory (addressable groups)."""
        return self.seed if self.seed is not None and isinstance(self.seed, SubtargetInventory) else None

    def subtarget_mask(self) -> tuple[bool, ...]:
        """The inventory's mask as host values (one read of a K-entry tensor); () without an inventory."""
        inventory = self.inventory
        if inventory is None:
            return ()
        return tuple(bool(value) for value in inventory.subtarget_mask.tolist())

    def enable_subtarget(self, index: int) -> OpResult:
        return self._switch_subtarget(index, True)

    def disable_subtarget(self, index: int) -> OpResult:
        return self._switch_subtarget(index, False)

    def _switch_subtarget(self, index: int, enabled: bool) -> OpResult:
        name = "ENABLE_SUBTARGET" if enabled else "DISABLE_SUBTARGET"
        if self.stage is SeedStage.FOSSILIZED:
            return OpResult(False, f"slot {self.slot_id} is FOSSILIZED; a fossil's subtarget mask is frozen")
        if self.stage not in SUBTARGET_STAGES:
            return OpResult(
                False, f"slot {self.slot_id} is {self.stage.name}; {name} needs a TRAINING, BLENDING or HOLDING seed"
            )
        if self.blend_out:
            return OpResult(False, f"slot {self.slot_id} is blending out")
        inventory = self.inventory
        if inventory is None:
            return OpResult(False, f"seed {self.seed_id} ({self.blueprint_id}) has no subtarget inventory")
        count = int(inventory.subtarget_count)
        if not 0 <= index < count:
            return OpResult(False, f"subtarget {index} is outside the inventory 0..{count - 1}")
        mask = self.subtarget_mask()
        if mask[index] is enabled:
            return OpResult(False, f"subtarget {index} is already {'enabled' if enabled else 'disabled'}")
        if not enabled and sum(mask) <= 1:
            return OpResult(
                False, f"subtarget {index} is the last enabled group of seed {self.seed_id}; PRUNE removes a seed"
            )
        inventory.set_subtarget(index, enabled)
        self.epochs_since_subtarget_change = 0
        active = sum(mask) + (1 if enabled else -1)
        round_, epoch = self._clock()
        self._send(
            TelemetryEventType.SEED_SUBTARGET_CHANGED,
            SeedSubtargetChangedPayload(
                slot_id=self.slot_id, env_id=self.env_id, seed_id=self.seed_id, blueprint_id=self.blueprint_id,
                subtarget_idx=index, enabled=enabled, subtarget_active_count=active,
                internal_effective_params=self.internal_effective_params,  # the same count reports and rent use
                round=round_, epoch=epoch,
            ),
        )
        return OK

    def fossilize(self) -> OpResult:
        if self.stage is not SeedStage.HOLDING:
            return OpResult(False, f"slot {self.slot_id} is {self.stage.name}; FOSSILIZE needs HOLDING")
        self._transition(SeedStage.FOSSILIZED)
        round_, epoch = self._clock()
        self._send(
            TelemetryEventType.SEED_FOSSILIZED,
            SeedFossilizedPayload(
                env_id=self.env_id, round=round_, epoch=epoch, slot_id=self.slot_id,
                seed_id=self.seed_id, blueprint_id=self.blueprint_id, seed_params=self.seed_params,
                alpha=self.alpha, contribution=self.contribution, seed_age_epochs=self.seed_age,
                internal_level=self.ladder.internal_level if self.ladder is not None else 0,
                internal_effective_params=self.internal_effective_params,
                internal_group_size=self.internal_group_size, internal_active_groups=self.internal_active_groups,
            ),
        )
        return OK

    def tick(self) -> None:
        """The lifecycle clock: called exactly once per epoch, after the epoch's decision."""
        stage = self.stage
        if stage is SeedStage.RESETTING:
            self._transition(SeedStage.DORMANT)
            self._reset_state()
            return
        if stage is SeedStage.EMBARGOED:
            self.embargo_left -= 1
            self.epochs_in_stage += 1
            if self.embargo_left <= 0:
                self._transition(SeedStage.RESETTING)
            return
        if stage in LIVE_STAGES:
            self.seed_age += 1
            self.epochs_in_stage += 1
            if self.epochs_since_internal_change is not None:
                self.epochs_since_internal_change += 1
            if self.epochs_since_subtarget_change is not None:
                self.epochs_since_subtarget_change += 1
        if stage is SeedStage.GERMINATED:
            if self._seed_is_finite():
                self._transition(SeedStage.TRAINING)
            else:
                self.prune_now("gate G0: seed parameters are not finite")
        elif stage is SeedStage.TRAINING and self.settings.auto_advance:
            self.advance()  # fails (and changes nothing) until gate G1 passes
        elif stage is SeedStage.BLENDING:
            self._set_alpha(self.schedule.tick())
            if self.schedule.done:
                if self.blend_out:
                    self.prune_now(self.prune_reason)
                else:
                    self._transition(SeedStage.HOLDING)
        if self.stage is SeedStage.PRUNED:
            if self.settings.embargo_epochs > 0:
                self.embargo_left = self.settings.embargo_epochs
                self._transition(SeedStage.EMBARGOED)
            else:
                self._transition(SeedStage.RESETTING)

    # -- measurements (written by Tolaria) ---------------------------------------------------------

    def record_validation(self, score: float, contribution: float | None) -> None:
        self.last_score = score
        if self.stage not in LIVE_STAGES and self.stage is not SeedStage.FOSSILIZED:
            return
        if contribution is not None:
            if self.contribution is not None:
                self.contribution_velocity = contribution - self.contribution
            self.contribution = contribution
            self.epochs_since_measured = 0
        elif self.epochs_since_measured is not None:
            self.epochs_since_measured += 1

    def record_gradients(self, seed_norm: float, host_norm: float) -> None:
        self.seed_grad_norm = seed_norm
        self.host_grad_norm = host_norm
        self.grad_finite = math.isfinite(seed_norm)

    # -- views -------------------------------------------------------------------------------------

    def seed_parameters(self) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        if self.seed is not None:
            params.extend(self.seed.parameters())
        if self.gate is not None:
            params.extend(self.gate.parameters())
        return params

    @property
    def built_params(self) -> int:
        """Every parameter the seed allocates (a ladder builds all its levels up front): memory, not size."""
        return count_parameters(self.seed) + count_parameters(self.gate)

    @property
    def seed_params(self) -> int:
        """The seed's size: its parameters in use (the size rule, see ``SeedStateReport``)."""
        return self.internal_effective_params

    @property
    def internal_effective_params(self) -> int:
        """Parameters in use (plus any gate): an inventory's count under its mask, a ladder's count at its
        level, else all of the seed's."""
        inventory = self.inventory
        if inventory is not None:
            return int(inventory.subtarget_effective_params(self.subtarget_mask())) + count_parameters(self.gate)
        ladder = self.ladder
        if ladder is None:
            return self.built_params
        return ladder.internal_effective_params(ladder.internal_level) + count_parameters(self.gate)

    @property
    def internal_group_size(self) -> int | None:
        """Units per group of a grouped ladder (its optional ``internal_group_size``); None for a seed
        whose ladder does not count groups, a seed without a ladder, or no seed."""
        ladder = self.ladder
        return getattr(ladder, "internal_group_size", None) if ladder is not None else None

    @property
    def internal_active_groups(self) -> int | None:
        """Groups in use (the level) of a grouped ladder; None where ``internal_group_size`` is None."""
        return self.ladder.internal_level if self.internal_group_size is not None else None

    @property
    def effective_params(self) -> float:
        """Rent base: alpha x the capacity in use while live, the capacity in use once fossilized."""
        if self.stage is SeedStage.FOSSILIZED:
            return float(self.internal_effective_params)
        if self.stage in LIVE_STAGES:
            return self.alpha * self.internal_effective_params
        return 0.0

    def report(self) -> SeedStateReport:
        has_seed = self.seed is not None
        delta = None
        if has_seed and self.score_at_germination is not None and self.last_score is not None:
            delta = self.last_score - self.score_at_germination
        if self.schedule is not None:
            alpha_target, alpha_curve = self.schedule.target, self.schedule.curve
        elif has_seed:
            alpha_target, alpha_curve = self.planned_alpha_target, self.planned_curve
        else:
            alpha_target, alpha_curve = 0.0, None
        inventory = self.inventory
        subtargets: dict[str, Any] = {}
        if inventory is not None:
            mask = self.subtarget_mask()
            subtargets = {
                "subtarget_kind": inventory.subtarget_kind,
                "subtarget_count": len(mask),
                "subtarget_active_count": sum(mask),
                "subtarget_active_mask": mask,
                "subtarget_importance": tuple(float(value) for value in inventory.subtarget_importance().tolist()),
                "epochs_since_subtarget_change": self.epochs_since_subtarget_change,
            }
        return SeedStateReport(
            env_id=self.env_id,
            slot_id=self.slot_id,
            stage=self.stage,
            seed_id=self.seed_id,
            blueprint_id=self.blueprint_id,
            style=self.style,
            alpha=self.alpha,
            alpha_target=alpha_target,
            alpha_curve=alpha_curve,
            blend_epochs=self.blend_epochs if has_seed else 0,
            alpha_schedule_epochs_left=self.schedule.epochs_left if self.schedule is not None else 0,
            alpha_schedule_total_epochs=self.schedule.total_epochs if self.schedule is not None else 0,
            blend_out=self.blend_out,
            seed_params=self.seed_params if has_seed else 0,
            built_params=self.built_params if has_seed else 0,
            effective_params=self.effective_params,
            embargo_epochs_left=self.embargo_left,
            internal_kind=self.ladder.internal_kind if self.ladder is not None else None,
            internal_level=self.ladder.internal_level if self.ladder is not None else 0,
            internal_max_level=self.ladder.internal_max_level if self.ladder is not None else 0,
            internal_effective_params=self.internal_effective_params if has_seed else 0,
            internal_group_size=self.internal_group_size,
            internal_active_groups=self.internal_active_groups,
            internal_last_direction=self.internal_last_direction,
            epochs_since_internal_change=self.epochs_since_internal_change,
            **subtargets,
            metrics=SeedMetrics(
                counterfactual_contribution=self.contribution,
                contribution_velocity=self.contribution_velocity,
                epochs_since_measured=self.epochs_since_measured,
                score_at_germination=self.score_at_germination if has_seed else None,
                score_delta_since_germination=delta,
                seed_grad_norm=self.seed_grad_norm,
                host_grad_norm=self.host_grad_norm,
                grad_finite=self.grad_finite,
                epochs_in_stage=self.epochs_in_stage,
                seed_age_epochs=self.seed_age,
            ),
        )

    # -- checkpointing -----------------------------------------------------------------------------

    def lifecycle_record(self) -> SlotLifecycleState:
        """Everything but the weights (the weights live in the module state dict)."""
        values = {field.name: getattr(self, field.name) for field in _SLOT_ATTRIBUTES}
        values["schedule"] = copy.copy(self.schedule)  # the record must not follow later ticks
        ladder = self.ladder
        return SlotLifecycleState(
            **values,
            internal_level=ladder.internal_level if ladder is not None else None,
            subtarget_mask=self.subtarget_mask() if self.inventory is not None else None,
        )

    def load_lifecycle_record(self, state: SlotLifecycleState) -> None:
        """Rebuild the seed module (if any) and restore the lifecycle; load weights afterwards."""
        self._reset_state()
        if state.stage in LIVE_STAGES or state.stage is SeedStage.FOSSILIZED:  # pruned seeds keep only their ids
            self.seed = self._build_seed(state.blueprint_id, self.spec.channels).to(**self._placement())
            if state.style is BlendStyle.GATE:
                self.gate = self._build_gate()
        self._apply_fields(state)
        if state.internal_level is not None:
            self.ladder.set_internal_level(state.internal_level)
        if state.subtarget_mask is not None:
            self._restore_subtarget_mask(state.subtarget_mask)

    def implant(self, seed_family: str, level: int | None = None) -> None:
        """Make a seed of ``seed_family`` part of the host from birth: FOSSILIZED at alpha 1 with an ADD
        blend (a ladder at ``level``), no lifecycle, no events (see ``MorphogeneticModel.implant``)."""
        if self.stage is not SeedStage.DORMANT:
            raise ValueError(f"cannot implant {seed_family} in {self.slot_id}: the slot is {self.stage.name}")
        seed = self._new_seed(seed_family)
        ladder = seed if isinstance(seed, LadderModule) else None
        if level is not None:
            if ladder is None:
                raise ValueError(f"cannot implant {seed_family} at level {level}: it has no ladder")
            if not 0 <= level <= ladder.internal_max_level:
                raise ValueError(f"level {level} of {seed_family} is outside its ladder 0..{ladder.internal_max_level}")
            ladder.set_internal_level(level)
        self.seed = seed
        self.gate = None
        self.seed_id = f"implant-{self.slot_id}"
        self.blueprint_id = seed_family
        self.style = BlendStyle.ADD
        self.stage = SeedStage.FOSSILIZED
        self._set_alpha(1.0)

    # -- internals ---------------------------------------------------------------------------------

    def _restore_subtarget_mask(self, mask: tuple[bool, ...]) -> None:
        """Switch the rebuilt seed's groups to ``mask`` (the weights, mask buffer included, load afterwards)."""
        inventory = self.inventory
        if inventory is None or len(mask) != int(inventory.subtarget_count):
            raise ValueError(
                f"slot {self.slot_id}: a checkpoint's subtarget mask of {len(mask)} entries does not fit seed "
                f"{self.seed_id} ({self.blueprint_id})"
            )
        for index, (now, wanted) in enumerate(zip(self.subtarget_mask(), mask)):
            if now is not bool(wanted):
                inventory.set_subtarget(index, bool(wanted))

    def _apply_fields(self, state: SlotLifecycleState) -> None:
        for field in _SLOT_ATTRIBUTES:
            setattr(self, field.name, getattr(state, field.name))
        self.schedule = copy.copy(state.schedule)  # the slot ticks its own copy
        self._set_alpha(state.alpha)

    def _placement(self) -> dict[str, Any]:
        """Where the slot's tensors live (its device and floating dtype), for new seed modules."""
        return {"device": self.alpha_tensor.device, "dtype": self.alpha_tensor.dtype}

    def _new_seed(self, family: str) -> nn.Module:
        """Build a seed of seed family ``family`` on the slot's device and check the seed contract once.

        One forward on a probe batch (the topology's example shape at this slot's channels, in eval
        mode, without gradient, the global RNG untouched) checks that ``build`` returned an
        ``nn.Module`` whose output has the input's shape, dtype and device. Any failure raises
        ``SeedContractError`` naming the family and its plugin; the slot has not changed then.
        """
        plugin = self._seed_plugin(family) if self._seed_plugin is not None else None
        who = f"seed family '{family}'" + (f" (plugin '{plugin}')" if plugin else "")
        where = f"in slot {self.slot_id}"

        def broken(problem: str) -> SeedContractError:
            return SeedContractError(f"{who} {problem} {where}", family=family, plugin=plugin)

        try:
            seed = self._build_seed(family, self.spec.channels)
        except EsperError:
            raise
        except Exception as exc:
            raise broken(f"failed to build a seed ({type(exc).__name__}: {exc})") from exc
        if not isinstance(seed, nn.Module):
            raise broken(f"built a {type(seed).__name__}, not a torch.nn.Module,")
        placement = self._placement()
        seed = seed.to(**placement)
        shape = tuple(self.topology.example_shape(2, self.spec.channels))
        probe = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(**placement)
        was_training = seed.training
        seed.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                out = seed(probe)
        except Exception as exc:
            raise broken(f"failed on a probe batch of shape {shape} ({type(exc).__name__}: {exc})") from exc
        finally:
            seed.train(was_training)
        if not isinstance(out, torch.Tensor):
            raise broken(f"returned a {type(out).__name__}, not a tensor, for a probe batch of shape {shape}")
        if tuple(out.shape) != shape:
            raise broken(f"is not shape-preserving: {shape} -> {tuple(out.shape)}")
        if out.dtype != probe.dtype:
            raise broken(f"changes the dtype: {probe.dtype} -> {out.dtype}")
        if out.device != probe.device:
            raise broken(f"moves the activation from {probe.device} to {out.device}")
        return seed

    def _build_gate(self) -> BlendGate:
        with torch.random.fork_rng(devices=[]):  # leave the global RNG stream untouched
            return BlendGate(self.spec.channels, self.topology).to(**self._placement())

    def _set_alpha(self, value: float) -> None:
        self.alpha = float(value)
        self.alpha_tensor.fill_(self.alpha)

    def _seed_is_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.seed_parameters())

    def _transition(self, target: SeedStage) -> None:
        source = self.stage
        check_transition(source, target, slot_id=self.slot_id)
        self.stage = target
        self.epochs_in_stage = 0
        if self.seed_id is not None:
            round_, epoch = self._clock()
            self._send(
                TelemetryEventType.SEED_STAGE_CHANGED,
                SeedStageChangedPayload(
                    env_id=self.env_id, round=round_, epoch=epoch, slot_id=self.slot_id,
                    seed_id=self.seed_id, blueprint_id=self.blueprint_id,
                    from_stage=source, to_stage=target,
                ),
            )

    def prune_now(self, reason: str) -> None:
        """Remove the seed at once (no blend-out), emitting SEED_PRUNED with ``reason``; the embargo follows."""
        round_, epoch = self._clock()
        payload = SeedPrunedPayload(
            env_id=self.env_id, round=round_, epoch=epoch, slot_id=self.slot_id,
            seed_id=self.seed_id, blueprint_id=self.blueprint_id, reason=reason,
            contribution=self.contribution, seed_age_epochs=self.seed_age,
        )
        self._transition(SeedStage.PRUNED)
        self._send(TelemetryEventType.SEED_PRUNED, payload)
        self.seed = None
        self.gate = None
        self.schedule = None
        self.blend_out = False
        self._set_alpha(0.0)

    def _send(self, event_type: TelemetryEventType, payload: Any) -> None:
        if self._emit is not None:
            self._emit(TelemetryEvent(event_type=event_type, payload=payload))
