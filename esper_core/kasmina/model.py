"""The morphogenetic model: a host cut at its injection points with a seed slot on each, routed explicitly."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from torch import nn

from esper_core.kasmina.blending import ActivationLayout, resolve_topology
from esper_core.kasmina.slot import (
    Clock,
    EventSink,
    LifecycleSettings,
    OpResult,
    SeedBuilder,
    SeedPluginLookup,
    SeedSlot,
    SlotLifecycleState,
)
from esper_core.leyline import (
    AlphaTarget,
    FactoredAction,
    LifecycleOp,
    OCCUPIED_STAGES,
    SeedStage,
    SeedStateReport,
    SlotConfig,
)


@attrs.frozen
class ModelLifecycleState:
    """A model's lifecycle without its weights: each slot's ``SlotLifecycleState`` by slot id, the
    germination count (it seeds the next seed) and the order seeds were fossilized in."""

    slots: dict[str, SlotLifecycleState]
    germination_count: int
    fossilization_order: tuple[str, ...]


attrs.resolve_types(ModelLifecycleState)  # string annotations resolved, for the checkpoint converter


class MorphogeneticModel(nn.Module):
    """Wraps any registered host: ``forward`` routes through every enabled slot in ``SlotConfig`` order.

    With every slot dormant the host's own ``forward`` runs (no routing work at all).

    ``topology`` is the host's registered ``TopologyKind`` (a bare name only for the core's own
    ``image`` / ``sequence``); slots use its layout for learned blend gates and the seed-contract probe.
    ``seed_plugin`` names the plugin that registered a seed family, for seed-contract errors.
    """

    def __init__(
        self,
        host: nn.Module,
        slot_config: SlotConfig,
        *,
        topology: ActivationLayout | str,
        seed_families: Sequence[str],
        build_seed: SeedBuilder,
        settings: LifecycleSettings,
        max_seeds: int,
        env_id: int = 0,
        emit: EventSink | None = None,
        clock: Clock | None = None,
        seed_plugin: SeedPluginLookup | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.slot_config = slot_config
        self.seed_families = tuple(seed_families)
        self.max_seeds = max_seeds
        self.env_id = env_id
        self._clock = clock or (lambda: (0, 0))
        topology = resolve_topology(topology)
        self.slots = nn.ModuleDict(
            {
                spec.slot_id: SeedSlot(
                    spec, topology=topology, settings=settings, build_seed=build_seed,
                    env_id=env_id, emit=emit, clock=self._clock, seed_plugin=seed_plugin,
                )
                for spec in slot_config.specs
            }
        )
        self.slot_ids = slot_config.slot_ids
        self.germination_count = 0
        self.fossilization_order: list[str] = []

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not any(slot.is_active for slot in self.slots.values()):
            return self.host(x)
        h = x
        previous: str | None = None
        for slot_id in self.slot_ids:
            h = self.host.forward_to(slot_id, h, from_slot=previous)
            h = self.slots[slot_id](h)
            previous = slot_id
        return self.host.forward_from(previous, h)

    def ablatable_slots(self) -> list[str]:
        """Slots whose seed is blended in (BLENDING, HOLDING) or fossilized, in slot order: each gets one ablation."""
        return [slot_id for slot_id in self.slot_ids if self.slots[slot_id].is_ablatable]

    def forward_with_ablations(self, x: torch.Tensor, ablate: Sequence[str]) -> torch.Tensor:
        """Outputs of the full model and of each single-seed ablation, stacked as (1 + len(ablate), B, ...).

        Variant 0 is the full model; variant k has the k-th slot of ``ablate`` (in slot order) forced
        to alpha 0 with every other seed active. The host prefix before the first ablated slot is
        computed once; after each ablated slot the variants travel as one concatenated batch.
        """
        if self.training:
            raise RuntimeError(
                "forward_with_ablations runs in eval mode only: variants share one batch, and train-mode "
                "normalisation would mix their statistics"
            )
        ablate_set = set(ablate)
        unknown = ablate_set - set(self.slot_ids)
        if unknown:
            raise KeyError(f"cannot ablate unknown slot(s) {sorted(unknown)}")
        batch = x.shape[0]
        h = x
        previous: str | None = None
        variants = 1
        for slot_id in self.slot_ids:
            h = self.host.forward_to(slot_id, h, from_slot=previous)
            slot_out = self.slots[slot_id](h)
            if slot_id in ablate_set:
                h = torch.cat([slot_out, h[:batch]], dim=0)
                variants += 1
            else:
                h = slot_out
            previous = slot_id
        out = self.host.forward_from(previous, h)
        return out.view(variants, batch, *out.shape[1:])

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def occupied_count(self) -> int:
        return sum(1 for slot in self.slots.values() if slot.stage in OCCUPIED_STAGES)

    def apply(self, action: FactoredAction, *, score_now: float | None) -> OpResult:
        """Execute one factored action. A failed op changes nothing (it is a WAIT) and says why."""
        op = action.op
        if op is LifecycleOp.WAIT:
            return OpResult(True)
        if not 0 <= action.slot < len(self.slot_ids):
            return OpResult(False, f"slot index {action.slot} out of range")
        slot = self.slots[self.slot_ids[action.slot]]
        if op is LifecycleOp.GERMINATE:
            if not 0 <= action.blueprint < len(self.seed_families):
                return OpResult(False, f"blueprint index {action.blueprint} out of range")
            if self.occupied_count >= self.max_seeds:
                return OpResult(False, f"max_seeds {self.max_seeds} reached")
            round_, _epoch = self._clock()
            seed_id = f"r{round_}e{self.env_id}-{slot.slot_id}-{self.germination_count}"
            result = slot.germinate(
                seed_id=seed_id,
                seed_family=self.seed_families[action.blueprint],
                style=action.style,
                blend_epochs=action.tempo.epochs,
                alpha_target=action.alpha_target.value_,
                alpha_curve=action.alpha_curve,
                score_now=score_now,
            )
            if result.success:
                self.germination_count += 1
            return result
        if op is LifecycleOp.ADVANCE:
            return slot.advance()
        if op is LifecycleOp.SET_ALPHA_TARGET:
            return slot.set_alpha_target(
                AlphaTarget(action.alpha_target).value_, epochs=action.alpha_speed.epochs, curve=action.alpha_curve
            )
        if op is LifecycleOp.PRUNE:
            return slot.prune(epochs=action.alpha_speed.epochs, curve=action.alpha_curve, reason="policy")
        if op is LifecycleOp.GROW_INTERNAL:
            return slot.grow_internal()
        if op is LifecycleOp.SHRINK_INTERNAL:
            return slot.shrink_internal()
        if op is LifecycleOp.ENABLE_SUBTARGET:
            return slot.enable_subtarget(action.subtarget)
        if op is LifecycleOp.DISABLE_SUBTARGET:
            return slot.disable_subtarget(action.subtarget)
        if op is LifecycleOp.FOSSILIZE:
            result = slot.fossilize()
            if result.success:
                self.fossilization_order.append(slot.slot_id)
            return result
        raise ValueError(f"unhandled lifecycle op {op!r}")

    def implant(self, slot_id: str, seed_family: str, level: int | None = None) -> None:
        """Static architecture: make a seed of ``seed_family`` part of the host from birth.

        The seed sits in ``slot_id`` fossilized at alpha 1 (ADD blend; a ladder at ``level``), so it
        trains with the host optimizer from the first step; no lifecycle, no events. This is how a grown
        network's final architecture is trained from scratch (``[morphogenesis] implants``). Seeds are
        identity at birth (their output layer starts at zero), so the implanted network starts as the
        host does and learns to use the extra capacity, as a zero-initialised residual branch would.
        """
        self.slots[slot_id].implant(seed_family, level)
        self.fossilization_order.append(slot_id)
        self.germination_count += 1

    def tick(self) -> None:
        """Advance every slot's lifecycle clock by one epoch."""
        for slot in self.slots.values():
            slot.tick()

    def reports(self) -> tuple[SeedStateReport, ...]:
        return tuple(self.slots[slot_id].report() for slot_id in self.slot_ids)

    def stage_counts(self) -> dict[str, int]:
        counts = {stage.name: 0 for stage in SeedStage}
        for slot in self.slots.values():
            counts[slot.stage.name] += 1
        return counts

    # -- parameters --------------------------------------------------------------------------------

    def live_seed_slots(self) -> list[SeedSlot]:
        """Slots whose seed trains with its own optimizer (live, not fossilized)."""
        return [
            self.slots[slot_id]
            for slot_id in self.slot_ids
            if self.slots[slot_id].seed is not None and self.slots[slot_id].stage is not SeedStage.FOSSILIZED
        ]

    def seed_params(self) -> int:
        return sum(slot.seed_params for slot in self.live_seed_slots())

    def fossilized_params(self) -> int:
        return sum(self.slots[slot_id].seed_params for slot_id in self.fossilization_order)

    def effective_seed_params(self) -> float:
        return sum(slot.effective_params for slot in self.slots.values())

    # -- checkpointing -----------------------------------------------------------------------------

    def lifecycle_record(self) -> ModelLifecycleState:
        """Every slot's lifecycle and the model's own counters (the weights live in the state dict)."""
        return ModelLifecycleState(
            slots={slot_id: self.slots[slot_id].lifecycle_record() for slot_id in self.slot_ids},
            germination_count=self.germination_count,
            fossilization_order=tuple(self.fossilization_order),
        )

    def load_lifecycle_record(self, state: ModelLifecycleState) -> None:
        if set(state.slots) != set(self.slot_ids):
            raise ValueError(
                f"checkpoint slots {sorted(state.slots)} do not match this model's {list(self.slot_ids)}"
            )
        for slot_id in self.slot_ids:
            self.slots[slot_id].load_lifecycle_record(state.slots[slot_id])
        self.germination_count = state.germination_count
        self.fossilization_order = list(state.fossilization_order)
