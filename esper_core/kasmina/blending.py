"""Alpha schedules (linear, cosine, sigmoid), the blend operators and the learned blend gate."""

from __future__ import annotations

import functools
import math
from typing import Any, Protocol

import attrs
import torch
from torch import nn

from esper_core.leyline import AlphaCurve, BlendStyle

_SIGMOID_STEEPNESS = 10.0


def curve_value(curve: AlphaCurve, progress: float) -> float:
    """Map schedule progress in [0, 1] to blend progress in [0, 1]; every curve fixes 0 and 1."""
    progress = min(max(progress, 0.0), 1.0)
    if curve is AlphaCurve.LINEAR:
        return progress
    if curve is AlphaCurve.COSINE:
        return 0.5 - 0.5 * math.cos(math.pi * progress)
    if curve is AlphaCurve.SIGMOID:
        low = 1.0 / (1.0 + math.exp(_SIGMOID_STEEPNESS / 2))
        high = 1.0 / (1.0 + math.exp(-_SIGMOID_STEEPNESS / 2))
        raw = 1.0 / (1.0 + math.exp(-_SIGMOID_STEEPNESS * (progress - 0.5)))
        return (raw - low) / (high - low)
    raise ValueError(f"unknown alpha curve {curve!r}")


@attrs.define
class AlphaSchedule:
    """Moves alpha from ``start`` to ``target`` over ``total_epochs`` lifecycle ticks along ``curve``."""

    start: float
    target: float
    total_epochs: int
    curve: AlphaCurve = AlphaCurve.LINEAR
    elapsed: int = 0

    @property
    def done(self) -> bool:
        return self.elapsed >= self.total_epochs

    @property
    def epochs_left(self) -> int:
        return max(self.total_epochs - self.elapsed, 0)

    def value(self) -> float:
        if self.total_epochs <= 0:
            return self.target
        shaped = curve_value(self.curve, self.elapsed / self.total_epochs)
        return self.start + (self.target - self.start) * shaped

    def tick(self) -> float:
        self.elapsed = min(self.elapsed + 1, max(self.total_epochs, 0))
        return self.value()


attrs.resolve_types(AlphaSchedule)  # string annotations resolved, so converters structure the curve as an enum


class ActivationLayout(Protocol):
    """How a topology lays out its activations (``esper_core.registry.TopologyKind`` has these fields)."""

    name: str
    channel_dim: int
    gate_pool_dims: tuple[int, ...]

    def example_shape(self, batch: int, channels: int) -> tuple[int, ...]: ...


@functools.cache
def _builtin_topologies() -> dict[str, Any]:
    """The topologies the core's own plugin registers, by name."""
    from esper_core import builtin

    records: list[Any] = []
    builtin.esper_register_topologies(records.append)
    return {record.name: record for record in records}


def resolve_topology(topology: str | ActivationLayout) -> ActivationLayout:
    """A topology record as is; a bare name only for a topology the core registers itself
    (``image``, ``sequence``). Builders of slots should pass the registered ``TopologyKind``
    (``registry.topology(name)``), which is what makes a plugin's topology work."""
    if not isinstance(topology, str):
        return topology
    builtin = _builtin_topologies()
    if topology not in builtin:
        raise ValueError(
            f"topology '{topology}' is not one the core registers ({', '.join(sorted(builtin))}); "
            "pass its registered TopologyKind (registry.topology(name)) instead of its name"
        )
    return builtin[topology]


class BlendGate(nn.Module):
    """A learned gate g(h) in (0, 1), for any registered topology.

    The activation is averaged over the topology's ``gate_pool_dims``, a linear map of its channels
    (on ``channel_dim``) gives one logit per remaining position, and the gate broadcasts back over
    the pooled axes: per sample for images (B, C, H, W) pooled over (2, 3), per token for sequences
    (B, T, D) pooled over nothing. Zero-initialised, so g = 0.5 at birth.
    """

    def __init__(self, channels: int, topology: ActivationLayout) -> None:
        super().__init__()
        self.topology_name = topology.name
        self.channel_dim = topology.channel_dim
        self.pool_dims = tuple(topology.gate_pool_dims)
        self.proj = nn.Linear(channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        pooled = h.mean(dim=self.pool_dims, keepdim=True) if self.pool_dims else h
        logits = self.proj(pooled.movedim(self.channel_dim, -1)).movedim(-1, self.channel_dim)
        return torch.sigmoid(logits)

    def extra_repr(self) -> str:
        return f"topology={self.topology_name}, channel_dim={self.channel_dim}, pool_dims={self.pool_dims}"


def blend(
    style: BlendStyle,
    host: torch.Tensor,
    seed: torch.Tensor,
    alpha: torch.Tensor,
    gate: BlendGate | None,
) -> torch.Tensor:
    """Combine host activation and seed output with weight ``alpha`` (a 0-dim tensor)."""
    if style is BlendStyle.ADD:
        return host + alpha * (seed - host)
    if style is BlendStyle.MULTIPLY:
        return host * (1.0 + alpha * torch.tanh(seed - host))
    if style is BlendStyle.GATE:
        if gate is None:
            raise RuntimeError("GATE blending needs a gate module; the slot was built without one")
        return host + alpha * gate(host) * (seed - host)
    raise ValueError(f"unknown blend style {style!r}")
