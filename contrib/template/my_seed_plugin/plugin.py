"""Entry-point module of my-seed-plugin: registers the ``my_family`` seed family (replace it with yours)."""

from __future__ import annotations

import torch
from torch import nn

from esper_core.hookspecs import SeedFamilyRegistrar, hookimpl
from esper_core.registry import NoOptions, SeedFamily

#: The activation layout this family accepts: ``(batch, time, channels)``. An image family uses
#: ``"image"``, activations ``(batch, channels, height, width)``.
TOPOLOGY = "sequence"


class BottleneckSeed(nn.Module):
    """``x + up(relu(down(x)))`` over the channel axis; ``up`` starts at zero, so the seed is the identity at birth."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // 4)
        self.down = nn.Linear(channels, hidden)
        self.up = nn.Linear(hidden, channels)
        nn.init.zeros_(self.up.weight)  # only the last layer starts at zero: the gradient still reaches it
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


def build_seed(channels: int, topology: str, config: NoOptions) -> BottleneckSeed:
    """``SeedFamily.build``: one seed for a slot with ``channels`` channels."""
    if topology != TOPOLOGY:
        raise ValueError(f"seed family 'my_family' supports topology '{TOPOLOGY}', not '{topology}'")
    if channels < 1:
        raise ValueError(f"seed family 'my_family' needs at least one channel, got {channels}")
    return BottleneckSeed(channels)


#: The family record: the tests use it directly, the hook below registers it.
SEED_FAMILY = SeedFamily(
    name="my_family",
    build=build_seed,
    topologies=(TOPOLOGY,),
    description="template example: residual bottleneck x + up(relu(down(x))), up zero at birth",
)


@hookimpl
def esper_register_seed_families(register: SeedFamilyRegistrar) -> None:
    register(SEED_FAMILY)
