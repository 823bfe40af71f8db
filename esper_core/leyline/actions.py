"""Lifecycle ops, the factored action record, its head vocabularies and the causal-relevance table."""

from __future__ import annotations

import enum

import attrs


class LifecycleOp(enum.IntEnum):
    """What the policy asks a slot to do this epoch. Values are stable (they index the op head)."""

    WAIT = 0
    GERMINATE = 1
    ADVANCE = 2
    SET_ALPHA_TARGET = 3
    PRUNE = 4
    FOSSILIZE = 5
    GROW_INTERNAL = 6
    SHRINK_INTERNAL = 7
    ENABLE_SUBTARGET = 8
    DISABLE_SUBTARGET = 9


#: The most subtargets one seed may expose (roadmap Phase 3: K small, grouped); the ``subtarget`` head
#: of a run has at most this many entries.
MAX_SUBTARGETS = 16


class BlendStyle(enum.IntEnum):
    """How a blended seed's output ``s`` is combined with the host activation ``h`` (the style head).

    - ADD: ``y = h + alpha * (s - h)``
    - MULTIPLY: ``y = h * (1 + alpha * tanh(s - h))``
    - GATE: ``y = h + alpha * g(h) * (s - h)`` with a learned per-sample gate ``g`` in (0, 1)
    """

    ADD = 0
    MULTIPLY = 1
    GATE = 2


class Tempo(enum.IntEnum):
    """How many epochs the blend-in after ADVANCE takes (the tempo head)."""

    FAST = 0
    STANDARD = 1
    SLOW = 2

    @property
    def epochs(self) -> int:
        return {Tempo.FAST: 3, Tempo.STANDARD: 5, Tempo.SLOW: 8}[self]


class AlphaTarget(enum.IntEnum):
    """The alpha a blend moves towards (the alpha_target head)."""

    HALF = 0
    THREE_QUARTERS = 1
    FULL = 2

    @property
    def value_(self) -> float:
        return {AlphaTarget.HALF: 0.5, AlphaTarget.THREE_QUARTERS: 0.75, AlphaTarget.FULL: 1.0}[self]


class AlphaSpeed(enum.IntEnum):
    """How many epochs a SET_ALPHA_TARGET or a scheduled PRUNE takes (the alpha_speed head)."""

    INSTANT = 0
    FAST = 1
    MEDIUM = 2
    SLOW = 3

    @property
    def epochs(self) -> int:
        return {AlphaSpeed.INSTANT: 0, AlphaSpeed.FAST: 2, AlphaSpeed.MEDIUM: 4, AlphaSpeed.SLOW: 8}[self]


class AlphaCurve(enum.IntEnum):
    """The shape of an alpha schedule between its start and its target (the alpha_curve head)."""

    LINEAR = 0
    COSINE = 1
    SIGMOID = 2


#: The factored action heads, in the order policies emit them.
HEADS: tuple[str, ...] = (
    "op",
    "slot",
    "blueprint",
    "style",
    "tempo",
    "alpha_target",
    "alpha_speed",
    "alpha_curve",
    "subtarget",
)

#: Size of each enum-valued head (``slot``, ``blueprint`` and ``subtarget`` depend on the run: its slots,
#: its seed families, and the largest ``SubtargetSpec.max_count`` among them, at least 1).
ENUM_HEAD_SIZES: dict[str, int] = {
    "op": len(LifecycleOp),
    "style": len(BlendStyle),
    "tempo": len(Tempo),
    "alpha_target": len(AlphaTarget),
    "alpha_speed": len(AlphaSpeed),
    "alpha_curve": len(AlphaCurve),
}

#: Which heads causally matter for each op. Heads not listed are pinned to 0 by the sampler and
#: contribute no log-probability, entropy or KL in the policy loss.
CAUSAL_RELEVANCE: dict[LifecycleOp, frozenset[str]] = {
    LifecycleOp.WAIT: frozenset({"op"}),
    LifecycleOp.GERMINATE: frozenset(
        {"op", "slot", "blueprint", "style", "tempo", "alpha_target", "alpha_curve"}
    ),
    LifecycleOp.ADVANCE: frozenset({"op", "slot"}),
    LifecycleOp.SET_ALPHA_TARGET: frozenset(
        {"op", "slot", "alpha_target", "alpha_speed", "alpha_curve"}
    ),
    LifecycleOp.PRUNE: frozenset({"op", "slot", "alpha_speed", "alpha_curve"}),
    LifecycleOp.FOSSILIZE: frozenset({"op", "slot"}),
    LifecycleOp.GROW_INTERNAL: frozenset({"op", "slot"}),
    LifecycleOp.SHRINK_INTERNAL: frozenset({"op", "slot"}),
    LifecycleOp.ENABLE_SUBTARGET: frozenset({"op", "slot", "subtarget"}),
    LifecycleOp.DISABLE_SUBTARGET: frozenset({"op", "slot", "subtarget"}),
}


def is_relevant(op: LifecycleOp, head: str) -> bool:
    """Whether ``head`` causally matters when ``op`` is chosen."""
    if head not in HEADS:
        raise KeyError(f"unknown action head {head!r} (heads: {', '.join(HEADS)})")
    return head in CAUSAL_RELEVANCE[op]


@attrs.frozen
class FactoredAction:
    """One decision for one environment. ``slot`` and ``blueprint`` index the run's SlotConfig order
    and seed family list (the ``blueprint`` head picks a seed family); ``subtarget`` is the index of a
    group in the slot's seed's inventory (ENABLE_SUBTARGET / DISABLE_SUBTARGET). Every head defaults to
    index 0, the pinned value: heads irrelevant to ``op`` hold 0 and are ignored, so set every relevant
    head explicitly."""

    op: LifecycleOp = attrs.field(converter=LifecycleOp)
    slot: int = 0
    blueprint: int = 0
    style: BlendStyle = attrs.field(default=BlendStyle(0), converter=BlendStyle)
    tempo: Tempo = attrs.field(default=Tempo(0), converter=Tempo)
    alpha_target: AlphaTarget = attrs.field(default=AlphaTarget(0), converter=AlphaTarget)
    alpha_speed: AlphaSpeed = attrs.field(default=AlphaSpeed(0), converter=AlphaSpeed)
    alpha_curve: AlphaCurve = attrs.field(default=AlphaCurve(0), converter=AlphaCurve)
    subtarget: int = 0

    @classmethod
    def wait(cls) -> FactoredAction:
        return cls(op=LifecycleOp.WAIT)

    def head_values(self) -> dict[str, int]:
        """Every head's integer value, in ``HEADS`` order."""
        return {head: int(getattr(self, head)) for head in HEADS}

    def describe(self, slot_ids: tuple[str, ...], seed_families: tuple[str, ...]) -> dict[str, object]:
        """A JSON-ready view with names instead of indices, relevant heads only."""
        view: dict[str, object] = {"op": self.op.name}
        relevant = CAUSAL_RELEVANCE[self.op]
        if "slot" in relevant:
            view["slot"] = slot_ids[self.slot]
        if "blueprint" in relevant:
            view["blueprint"] = seed_families[self.blueprint]
        for head in ("style", "tempo", "alpha_target", "alpha_speed", "alpha_curve"):
            if head in relevant:
                view[head] = getattr(self, head).name
        if "subtarget" in relevant:
            view["subtarget"] = self.subtarget
        return view
