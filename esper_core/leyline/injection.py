"""Injection points: where a host can carry a seed slot (InjectionSpec) and the run's ordered slots (SlotConfig)."""

from __future__ import annotations

import attrs

#: The surface every host exposes at its segment boundaries (roadmap A0). Other surfaces are
#: registered by plugins through ``esper_register_surfaces``.
SEGMENT_BOUNDARY = "segment_boundary"


#: The largest injection-surface code. Codes 0..7 leave room for the roadmap's surfaces (segment
#: boundary, post-attention, post-MLP, pre-pool, post-pool) and a few more; Obs V3's
#: slot_surface_norm is code / MAX_SURFACE_CODE, the same whatever plugins are installed.
MAX_SURFACE_CODE = 7


@attrs.frozen
class InjectionSpec:
    """One place a host can carry a slot.

    ``slot_id`` is an opaque stable id (``r{row}c{col}``); code reads meaning from the other fields,
    never from the id. ``order`` is authoritative for action and observation order; ``position`` in
    [0, 1] is for display only. ``resolution`` is the activation's spatial size at the slot (``(H, W)``
    for image hosts; added in 0.2.1), or None where the host does not state one (sequence hosts, whose
    length varies with the input): never a measured zero.
    """

    slot_id: str
    channels: int
    surface: str
    order: int
    host_block: int
    host_layer: int | None = None
    position: float = 0.0
    resolution: tuple[int, ...] | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))


@attrs.frozen
class SlotConfig:
    """The ordered slots a run uses, derived from the host's injection specs.

    ``host_order_span`` is the lowest and highest ``order`` among all the host's specs, enabled or
    not, so a slot's normalised order does not depend on which slots a run enables.
    """

    specs: tuple[InjectionSpec, ...]
    host_order_span: tuple[int, int]

    @classmethod
    def from_specs(
        cls, specs: list[InjectionSpec] | tuple[InjectionSpec, ...], enabled: list[str] | None = None
    ) -> SlotConfig:
        """Order ``specs`` by ``order`` and keep the ``enabled`` slot ids (all when None).

        Raises ``ValueError`` naming the unknown ids when ``enabled`` names a slot the host lacks.
        """
        ordered = sorted(specs, key=lambda spec: spec.order)
        orders = [spec.order for spec in ordered]
        if len(set(orders)) != len(orders):
            raise ValueError(f"injection specs have duplicate order values: {orders}")
        ids = [spec.slot_id for spec in ordered]
        if len(set(ids)) != len(ids):
            raise ValueError(f"injection specs have duplicate slot ids: {ids}")
        if enabled is not None:
            unknown = [slot_id for slot_id in enabled if slot_id not in ids]
            if unknown:
                raise ValueError(
                    f"unknown slot(s) {', '.join(unknown)}; this host has {', '.join(ids)}"
                )
            ordered = [spec for spec in ordered if spec.slot_id in set(enabled)]
        span = (orders[0], orders[-1]) if orders else (0, 0)
        return cls(specs=tuple(ordered), host_order_span=span)

    @property
    def slot_ids(self) -> tuple[str, ...]:
        return tuple(spec.slot_id for spec in self.specs)

    @property
    def num_slots(self) -> int:
        return len(self.specs)

    def index_of(self, slot_id: str) -> int:
        return self.slot_ids.index(slot_id)

    def spec(self, slot_id: str) -> InjectionSpec:
        return self.specs[self.index_of(slot_id)]

    @property
    def channels_map(self) -> dict[str, int]:
        return {spec.slot_id: spec.channels for spec in self.specs}

    def order_norm(self, slot_id: str) -> float:
        """The slot's ``order`` scaled to 0..1 over the host's whole order span (0 with one slot)."""
        low, high = self.host_order_span
        return (self.spec(slot_id).order - low) / (high - low) if high > low else 0.0

    @property
    def surface_map(self) -> dict[str, str]:
        return {spec.slot_id: spec.surface for spec in self.specs}
