"""A seed slot: one tap on the host's activation stream and the full lifecycle of the seed it carries.

Gradient isolation rule (explicit, tested): while a seed incubates (GERMINATED, TRAINING) it reads a
*detached* host activation and contributes a straight-through term, so the forward value and every
host gradient are exactly those of the host without the seed, while the seed learns from the host's
gradient (``y = h + (s - s.detach())`` with ``s = seed(h.detach())``). From BLENDING on, and after
FOSSILIZED, nothing is detached: the host upstream of the slot learns through the seed path too,
and a fossilized seed is part of the host and trains with the host optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import nn

from esper_core.errors import LifecycleError
from esper_core.kasmina.blending import AlphaSchedule, BlendGate, blend
from esper_core.kasmina.ladder import LadderModule
from esper_core.leyline import (
    BLENDED_STAGES,
    INCUBATOR_STAGES,
    LIVE_STAGES,
    AlphaCurve,
    BlendStyle,
    InjectionSpec,
    InternalKind,
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
)

#: Builds a seed module: (blueprint name, channels) -> module.
SeedBuilder = Callable[[str, int], nn.Module]
#: Receives the typed events a slot emits.
EventSink = Callable[[TelemetryEvent], None]
#: Returns the current (round, epoch) for event payloads.
Clock = Callable[[], tuple[int, int]]


@attrs.frozen
class LifecycleSettings:
    """Lifecycle rules shared by every slot of a run. ``auto_advance``: a TRAINING seed moves to
    BLENDING by itself at the first tick at which ADVANCE would pass gate G1 (the controller then decides
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


def count_parameters(module: nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(parameter.numel() for parameter in module.parameters())


class SeedSlot(nn.Module):
    """One slot on the host's activation stream, identity while dormant."""

    def __init__(
        self,
        spec: InjectionSpec,
        *,
        topology: str,
        settings: LifecycleSettings,
        build_seed: SeedBuilder,
        env_id: int = 0,
        emit: EventSink | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.slot_id = spec.slot_id
        self.topology = topology
        self.settings = settings
        self._build_seed = build_seed
        self.env_id = env_id
        self._emit = emit
        self._clock = clock or (lambda: (0, 0))
        self.seed: nn.Module | None = None
        self.gate: BlendGate | None = None
        self.register_buffer("alpha_tensor", torch.zeros(()), persistent=False)
        self._reset_state()

    def _reset_state(self) -> None:
        self.stage = SeedStage.DORMANT
        self.seed = None
        self.gate = None
        self.seed_id: str | None = None
        self.blueprint_id: str | None = None
        self.style: BlendStyle | None = None
        self.blend_epochs = 0
        self.planned_alpha_target = 1.0
        self.planned_curve = AlphaCurve.LINEAR
        self.alpha = 0.0
        self.schedule: AlphaSchedule | None = None
        self.blend_out = False
        self._prune_reason = ""
        self.embargo_left = 0
        self.epochs_in_stage = 0
        self.seed_age = 0
        self.contribution: float | None = None
        self.contribution_velocity: float | None = None
        self.epochs_since_measured: int | None = None
        self.metric_at_germination: float | None = None
        self.last_metric: float | None = None
        self.seed_grad_norm: float | None = None
        self.host_grad_norm: float | None = None
        self.grad_finite = True
        self.internal_last_direction = 0
        self.epochs_since_internal_change: int | None = None
        self._set_alpha(0.0)

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
        blueprint: str,
        style: BlendStyle,
        blend_epochs: int,
        alpha_target: float,
        alpha_curve: AlphaCurve,
        metric_now: float | None,
    ) -> OpResult:
        if self.stage is not SeedStage.DORMANT:
            return OpResult(False, f"slot {self.slot_id} is {self.stage.name}, not DORMANT")
        if not 0.0 < alpha_target <= 1.0:
            raise LifecycleError(f"slot {self.slot_id}: alpha target {alpha_target} not in (0, 1]")
        seed = self._build_seed(blueprint, self.spec.channels)
        device = self.alpha_tensor.device
        self.seed = seed.to(device)
        self.gate = self._build_gate().to(device) if style is BlendStyle.GATE else None
        self.seed_id = seed_id
        self.blueprint_id = blueprint
        self.style = style
        self.blend_epochs = blend_epochs
        self.planned_alpha_target = alpha_target
        self.planned_curve = alpha_curve
        self.metric_at_germination = metric_now
        self.last_metric = metric_now
        self.seed_age = 0
        self._transition(SeedStage.GERMINATED)
        round_, epoch = self._clock()
        self._send(
            TelemetryEventType.SEED_GERMINATED,
            SeedGerminatedPayload(
                env_id=self.env_id, round=round_, epoch=epoch, slot_id=self.slot_id,
                seed_id=seed_id, blueprint_id=blueprint, style=style.name,
                alpha_target=alpha_target, seed_params=self.seed_params, built_params=self.built_params,
                internal_level=self.ladder.internal_level if self.ladder is not None else 0,
                internal_effective_params=self.internal_effective_params,
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
            self._prune_now(reason)
            return OK
        self.schedule = AlphaSchedule(start=self.alpha, target=0.0, total_epochs=epochs, curve=curve)
        self.blend_out = True
        self._prune_reason = reason
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
        round_, epoch = self._clock()
        self._send(
            TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED,
            SeedInternalLevelChangedPayload(
                slot_id=self.slot_id, env_id=self.env_id, seed_id=self.seed_id, blueprint_id=self.blueprint_id,
                from_level=source, to_level=target,
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
        if stage is SeedStage.GERMINATED:
            if self._seed_is_finite():
                self._transition(SeedStage.TRAINING)
            else:
                self._prune_now("gate G0: seed parameters are not finite")
        elif stage is SeedStage.TRAINING and self.settings.auto_advance:
            self.advance()  # fails (and changes nothing) until gate G1 passes
        elif stage is SeedStage.BLENDING:
            self._set_alpha(self.schedule.tick())
            if self.schedule.done:
                if self.blend_out:
                    self._prune_now(self._prune_reason)
                else:
                    self._transition(SeedStage.HOLDING)
        if self.stage is SeedStage.PRUNED:
            if self.settings.embargo_epochs > 0:
                self.embargo_left = self.settings.embargo_epochs
                self._transition(SeedStage.EMBARGOED)
            else:
                self._transition(SeedStage.RESETTING)

    # -- measurements (written by Tolaria) ---------------------------------------------------------

    def record_validation(self, metric: float, contribution: float | None) -> None:
        self.last_metric = metric
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
        """Parameters in use: the ladder's count at its level (plus any gate), else all of the seed's."""
        ladder = self.ladder
        if ladder is None:
            return self.built_params
        return ladder.internal_effective_params(ladder.internal_level) + count_parameters(self.gate)

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
        if has_seed and self.metric_at_germination is not None and self.last_metric is not None:
            delta = self.last_metric - self.metric_at_germination
        if self.schedule is not None:
            alpha_target, alpha_curve = self.schedule.target, self.schedule.curve
        elif has_seed:
            alpha_target, alpha_curve = self.planned_alpha_target, self.planned_curve
        else:
            alpha_target, alpha_curve = 0.0, None
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
            internal_kind=self.ladder.internal_kind if self.ladder is not None else InternalKind.NONE,
            internal_level=self.ladder.internal_level if self.ladder is not None else 0,
            internal_max_level=self.ladder.internal_max_level if self.ladder is not None else 0,
            internal_effective_params=self.internal_effective_params if has_seed else 0,
            internal_last_direction=self.internal_last_direction,
            epochs_since_internal_change=self.epochs_since_internal_change,
            metrics=SeedMetrics(
                counterfactual_contribution=self.contribution,
                contribution_velocity=self.contribution_velocity,
                epochs_since_measured=self.epochs_since_measured,
                metric_at_germination=self.metric_at_germination if has_seed else None,
                metric_delta_since_germination=delta,
                seed_grad_norm=self.seed_grad_norm,
                host_grad_norm=self.host_grad_norm,
                grad_finite=self.grad_finite,
                epochs_in_stage=self.epochs_in_stage,
                seed_age_epochs=self.seed_age,
            ),
        )

    # -- checkpointing -----------------------------------------------------------------------------

    def lifecycle_state(self) -> dict[str, Any]:
        """Everything but the weights, as plain values (the weights live in the module state dict)."""
        schedule = attrs.asdict(self.schedule) if self.schedule is not None else None
        if schedule is not None:
            schedule["curve"] = int(schedule["curve"])
        return {
            "stage": int(self.stage),
            "seed_id": self.seed_id,
            "blueprint_id": self.blueprint_id,
            "style": None if self.style is None else int(self.style),
            "blend_epochs": self.blend_epochs,
            "planned_alpha_target": self.planned_alpha_target,
            "planned_curve": int(self.planned_curve),
            "alpha": self.alpha,
            "schedule": schedule,
            "blend_out": self.blend_out,
            "prune_reason": self._prune_reason,
            "embargo_left": self.embargo_left,
            "epochs_in_stage": self.epochs_in_stage,
            "seed_age": self.seed_age,
            "contribution": self.contribution,
            "contribution_velocity": self.contribution_velocity,
            "epochs_since_measured": self.epochs_since_measured,
            "metric_at_germination": self.metric_at_germination,
            "last_metric": self.last_metric,
            "seed_grad_norm": self.seed_grad_norm,
            "host_grad_norm": self.host_grad_norm,
            "grad_finite": self.grad_finite,
            "internal_level": self.ladder.internal_level if self.ladder is not None else None,
            "internal_last_direction": self.internal_last_direction,
            "epochs_since_internal_change": self.epochs_since_internal_change,
        }

    def load_lifecycle_state(self, state: dict[str, Any]) -> None:
        """Rebuild the seed module (if any) and restore the lifecycle; load weights afterwards."""
        self._reset_state()
        self.stage = SeedStage(state["stage"])
        if self.stage in LIVE_STAGES or self.stage is SeedStage.FOSSILIZED:  # pruned seeds keep only their ids
            device = self.alpha_tensor.device
            self.seed = self._build_seed(state["blueprint_id"], self.spec.channels).to(device)
            style = BlendStyle(state["style"])
            if style is BlendStyle.GATE:
                self.gate = self._build_gate().to(device)
        self.seed_id = state["seed_id"]
        self.blueprint_id = state["blueprint_id"]
        self.style = None if state["style"] is None else BlendStyle(state["style"])
        self.blend_epochs = state["blend_epochs"]
        self.planned_alpha_target = state["planned_alpha_target"]
        self.planned_curve = AlphaCurve(state["planned_curve"])
        if state["schedule"] is not None:
            schedule = dict(state["schedule"])
            schedule["curve"] = AlphaCurve(schedule["curve"])
            self.schedule = AlphaSchedule(**schedule)
        self.blend_out = state["blend_out"]
        self._prune_reason = state["prune_reason"]
        self.embargo_left = state["embargo_left"]
        self.epochs_in_stage = state["epochs_in_stage"]
        self.seed_age = state["seed_age"]
        self.contribution = state["contribution"]
        self.contribution_velocity = state["contribution_velocity"]
        self.epochs_since_measured = state["epochs_since_measured"]
        self.metric_at_germination = state["metric_at_germination"]
        self.last_metric = state["last_metric"]
        self.seed_grad_norm = state["seed_grad_norm"]
        self.host_grad_norm = state["host_grad_norm"]
        self.grad_finite = state["grad_finite"]
        if state["internal_level"] is not None:
            self.ladder.set_internal_level(state["internal_level"])
        self.internal_last_direction = state["internal_last_direction"]
        self.epochs_since_internal_change = state["epochs_since_internal_change"]
        self._set_alpha(state["alpha"])

    # -- internals ---------------------------------------------------------------------------------

    def _build_gate(self) -> BlendGate:
        with torch.random.fork_rng(devices=[]):  # leave the global RNG stream untouched
            return BlendGate(self.spec.channels, self.topology)

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

    def _prune_now(self, reason: str) -> None:
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
