"""Alpha schedules (linear, cosine, sigmoid), the blend operators and the learned blend gate."""

from __future__ import annotations

import math

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


class BlendGate(nn.Module):
    """A learned gate g(h) in (0, 1): per sample for images (B, C, H, W), per token for sequences."""

    def __init__(self, channels: int, topology: str) -> None:
        super().__init__()
        if topology not in ("image", "sequence"):
            raise ValueError(f"BlendGate supports 'image' and 'sequence' topologies, not {topology!r}")
        self.topology = topology
        self.proj = nn.Linear(channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.topology == "image":
            pooled = h.mean(dim=(2, 3))
            return torch.sigmoid(self.proj(pooled)).view(-1, 1, 1, 1)
        return torch.sigmoid(self.proj(h))


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
