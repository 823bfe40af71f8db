"""The host contract: ordered injection specs and explicit segment routing, no forward hooks."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from esper_core.errors import PluginError
from esper_core.leyline import InjectionSpec


@runtime_checkable
class HostModule(Protocol):
    """What a host family's ``build`` must return (an ``nn.Module`` with these methods).

    The host is cut at its injection points. ``forward_to(slot_id, x, from_slot)`` runs from the
    input (``from_slot=None``) or from the activation at ``from_slot`` up to the activation at
    ``slot_id``; ``forward_from(slot_id, h)`` runs from the activation at ``slot_id`` to the output.
    Chaining them through every slot in order (or any ordered subset) must equal ``forward(x)``.
    An unknown slot id raises ``KeyError`` naming the host's slots; a ``from_slot`` at or after
    ``slot_id`` raises ``ValueError``. Hosts may assume the task's topology was checked by the core.
    """

    def injection_specs(self) -> list[InjectionSpec]: ...

    def forward_to(self, slot_id: str, x: torch.Tensor, from_slot: str | None = None) -> torch.Tensor: ...

    def forward_from(self, slot_id: str, h: torch.Tensor) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


def check_host(host: object, family: str) -> list[InjectionSpec]:
    """Raise ``PluginError`` naming the family unless ``host`` meets the contract; return its specs."""
    if not isinstance(host, torch.nn.Module):
        raise PluginError(f"host '{family}' built a {type(host).__name__}, not a torch.nn.Module")
    missing = [name for name in ("injection_specs", "forward_to", "forward_from") if not callable(getattr(host, name, None))]
    if missing:
        raise PluginError(f"host '{family}' lacks {', '.join(missing)} (see esper_core.kasmina.HostModule)")
    specs = list(host.injection_specs())
    if not specs:
        raise PluginError(f"host '{family}' exposes no injection specs")
    for spec in specs:
        if not isinstance(spec, InjectionSpec):
            raise PluginError(f"host '{family}' returned {spec!r} from injection_specs(), not an InjectionSpec")
    orders = [spec.order for spec in specs]
    if orders != sorted(orders) or len(set(orders)) != len(orders):
        raise PluginError(f"host '{family}' injection specs are not in strictly increasing order: {orders}")
    return specs
