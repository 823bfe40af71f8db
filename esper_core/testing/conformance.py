"""Checks that a plugin's components meet the core contracts; each raises ConformanceError saying what broke."""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from esper_core.errors import PluginError
from esper_core.kasmina.host import check_host
from esper_core.leyline import (
    EVENT_PAYLOADS,
    SeedStage,
    TelemetryEvent,
    TelemetryEventType,
)
from esper_core.leyline import telemetry as payloads
from esper_core.registry import HostFamily, Registry, SeedFamily, SinkKind, TaskKind, TopologyKind
from esper_core.tasks import Task, TaskContext, TaskInfo
from esper_core.telemetry import SinkContext


try:  # NumPy is optional; a family drawing from it is caught only when it is installed
    import numpy
except ImportError:  # pragma: no cover - numpy ships with the test environment
    numpy = None


class ConformanceError(AssertionError):
    """A component breaks a core contract."""


@functools.cache
def _builtin_registry() -> Registry:
    """A registry holding the topologies, ladder kinds and subtarget kinds the core's own plugin registers."""
    from esper_core import builtin
    from esper_core.plugins import BUILTIN_PLUGIN

    registry = Registry()
    builtin.esper_register_topologies(lambda record: registry.add("topologies", record, BUILTIN_PLUGIN))
    builtin.esper_register_ladder_kinds(lambda record: registry.add("ladder_kinds", record, BUILTIN_PLUGIN))
    builtin.esper_register_subtarget_kinds(lambda record: registry.add("subtarget_kinds", record, BUILTIN_PLUGIN))
    return registry


def _topology(name: str, registry: Registry | None, what: str) -> TopologyKind:
    """The registered topology ``name``: from ``registry`` when given, else among the core's own."""
    source = registry if registry is not None else _builtin_registry()
    try:
        return source.topology(name)
    except (KeyError, PluginError) as exc:
        hint = "" if registry is not None else (
            "; for a topology a plugin registers, pass registry= (e.g. the esper_registry fixture)"
        )
        raise ConformanceError(f"{what}: topology '{name}' is not registered ({exc.args[0]}){hint}") from None


def _sample_input(topology: TopologyKind, channels: int, batch: int = 4) -> torch.Tensor:
    """A random activation of the topology's example shape (a fixed generator, the global RNG untouched)."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(topology.example_shape(batch, channels), generator=generator)


@contextlib.contextmanager
def _isolated_rng() -> Iterator[None]:
    """Run a block with its own torch, Python ``random`` and NumPy streams; restore the caller's after."""
    python_state = random.getstate()
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_state)
        if numpy is not None:
            numpy.random.set_state(numpy_state)


def _build_seed(family: SeedFamily, channels: int, topology: str, config: Any, *, other_streams: int = 0) -> torch.nn.Module:
    """``family.build`` under torch seed 0, with Python's and NumPy's streams seeded by ``other_streams``
    (a conforming family draws only from torch, so that seed must not matter)."""
    with _isolated_rng():
        torch.manual_seed(0)
        random.seed(other_streams)
        if numpy is not None:
            numpy.random.seed(other_streams)
        try:
            seed = family.build(channels, topology, config)
        except Exception as exc:
            raise ConformanceError(
                f"seed family '{family.name}' ({topology}) failed to build a seed for {channels} channels: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(seed, torch.nn.Module):
        raise ConformanceError(f"seed family '{family.name}' built {type(seed).__name__}, not an nn.Module")
    return seed


def _run(family: SeedFamily, seed: torch.nn.Module, x: torch.Tensor, where: str) -> torch.Tensor:
    """``seed(x)``, checked to be a tensor of ``x``'s shape and dtype; a failure names where it happened."""
    try:
        out = seed(x)
    except Exception as exc:
        raise ConformanceError(
            f"seed family '{family.name}' ({where}) raised {type(exc).__name__} on an input of shape "
            f"{tuple(x.shape)}: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise ConformanceError(f"seed family '{family.name}' ({where}) returned {type(out).__name__}, not a tensor")
    if out.shape != x.shape:
        raise ConformanceError(
            f"seed family '{family.name}' ({where}) is not shape-preserving: {tuple(x.shape)} -> {tuple(out.shape)}"
        )
    if out.dtype != x.dtype:
        raise ConformanceError(f"seed family '{family.name}' ({where}) changes the dtype: {x.dtype} -> {out.dtype}")
    return out


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _check_same_build(family: SeedFamily, topology: str, first: torch.nn.Module, second: torch.nn.Module) -> None:
    """Two builds under one torch seed have the same parameters and buffers: names, shapes and values."""
    prefix = (
        f"seed family '{family.name}' ({topology}) is not deterministic: two builds under the same torch seed "
        "(Python's and NumPy's streams seeded differently)"
    )
    hint = "; build must draw its randomness from torch's global generator only (no clock-seeded generator, Python random or NumPy)"
    tensors_a, tensors_b = _tensors(first), _tensors(second)
    if list(tensors_a) != list(tensors_b):
        only_a = sorted(set(tensors_a) - set(tensors_b))
        only_b = sorted(set(tensors_b) - set(tensors_a))
        raise ConformanceError(f"{prefix} have different tensors (only in one: {only_a}, only in the other: {only_b}){hint}")
    for name, tensor_a in tensors_a.items():
        tensor_b = tensors_b[name]
        if tensor_a.shape != tensor_b.shape:
            raise ConformanceError(
                f"{prefix} give '{name}' the shapes {tuple(tensor_a.shape)} and {tuple(tensor_b.shape)}{hint}"
            )
        if not torch.equal(tensor_a, tensor_b):
            raise ConformanceError(f"{prefix} give '{name}' different values{hint}")


def _check_determinism(family: SeedFamily, channels: int, topology: str, config: Any, x: torch.Tensor) -> None:
    """Builds under one torch seed are equal, and stay equal in output once their parameters move.

    At birth every conforming seed outputs ``x``, which would hide any difference, so the outputs are
    compared after the same perturbation of both builds' parameters.
    """
    # Streams 0, 1 and 5 draw pairwise different values from Python's and NumPy's choice / randint over
    # small ranges (e.g. a kernel size from (1, 3, 5)), so a family using them differs between builds.
    reference = _build_seed(family, channels, topology, config, other_streams=0)
    twins = [_build_seed(family, channels, topology, config, other_streams=stream) for stream in (1, 5)]
    for twin in twins:
        _check_same_build(family, topology, reference, twin)
    twin = twins[0]
    _perturbed(reference)
    _perturbed(twin)
    for mode in ("train", "eval"):
        outputs = []
        for module in (reference, twin):
            module.train(mode == "train")
            with _isolated_rng(), torch.no_grad():
                torch.manual_seed(1)
                outputs.append(_run(family, module, x, f"{topology}, {mode}, perturbed"))
        if not torch.equal(outputs[0], outputs[1]):
            gap = (outputs[0] - outputs[1]).abs().max().item()
            raise ConformanceError(
                f"seed family '{family.name}' ({topology}, {mode}) is not deterministic: two equal builds, equally "
                f"perturbed, give different outputs under the same torch seed (max difference {gap:.3g})"
            )


def check_seed_family(
    family: SeedFamily,
    *,
    channels: int = 16,
    config: Any = None,
    atol: float = 1e-6,
    registry: Registry | None = None,
) -> None:
    """A seed family is shape-preserving, the identity at birth, deterministic, and trainable.

    Runs for every topology the family declares, on an input of the topology's ``example_shape``;
    topologies are looked up in ``registry`` (e.g. the ``esper_registry`` fixture), or among the
    core's own (``image``, ``sequence``) when it is None. Deterministic means: two builds under the
    same torch seed have the same parameters and buffers (names, shapes, values) whatever Python's
    and NumPy's streams hold, and give the same outputs after the same perturbation of their
    parameters. A family with a ladder then also runs ``check_ladder_family``, and a family with a
    subtarget inventory ``check_subtarget_family``.
    """
    config = family.config_class() if config is None else config
    for topology_name in family.topologies:
        topology = _topology(topology_name, registry, f"seed family '{family.name}'")
        x = _sample_input(topology, channels)
        seed = _build_seed(family, channels, topology_name, config)
        for mode in ("train", "eval"):
            seed.train(mode == "train")
            out = _run(family, seed, x, f"{topology_name}, {mode}")
            if not torch.allclose(out, x, atol=atol):
                gap = (out - x).abs().max().item()
                raise ConformanceError(
                    f"seed family '{family.name}' ({topology_name}, {mode}) is not the identity at birth "
                    f"(max |seed(x) - x| = {gap:.3g})"
                )
        seed.eval()
        single = x[:1]
        if not torch.allclose(_run(family, seed, single, f"{topology_name}, eval, batch of one"), single, atol=atol):
            raise ConformanceError(
                f"seed family '{family.name}' ({topology_name}, eval) is not the identity at birth for a batch of one"
            )
        params = [p for p in seed.parameters() if p.requires_grad]
        if not params:
            raise ConformanceError(f"seed family '{family.name}' has no trainable parameters")
        seed.train()
        seed.zero_grad()
        target = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        ((_run(family, seed, x, f"{topology_name}, train") - target) ** 2).mean().backward()
        if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params):
            raise ConformanceError(f"seed family '{family.name}' ({topology_name}) receives no gradient at birth")
        _check_determinism(family, channels, topology_name, config, x)
    if family.ladder is not None:
        check_ladder_family(family, channels=channels, config=config, atol=atol, registry=registry)
    if family.subtargets is not None:
        check_subtarget_family(family, channels=channels, config=config, atol=atol, registry=registry)


def _perturbed(module: torch.nn.Module, seed: int = 99, scale: float = 0.3) -> torch.nn.Module:
    """Add noise to every parameter (so zero-initialised layers start to matter)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator) * scale
            parameter.add_(noise.to(device=parameter.device, dtype=parameter.dtype))
    return module


def check_ladder_family(
    family: SeedFamily,
    *,
    channels: int = 16,
    config: Any = None,
    atol: float = 1e-6,
    registry: Registry | None = None,
) -> None:
    """A ladder seed family keeps the LadderModule contract (see esper_core.kasmina.LadderModule):
    the declared kind and levels; every level is shape-preserving; level 0 is the identity; parameters
    in use are 0 at level 0 and non-decreasing in level; level changes allocate nothing and are
    deterministic; capacity above the current level never influences the output; growing a level does
    not change the output. Topologies are looked up as in ``check_seed_family``."""
    from esper_core.kasmina import LadderModule

    spec = family.ladder
    if spec is None:
        raise ConformanceError(f"seed family '{family.name}' declares no ladder")
    config = family.config_class() if config is None else config
    for topology_name in family.topologies:
        topology = _topology(topology_name, registry, f"seed family '{family.name}'")
        x = _sample_input(topology, channels)

        def run(module: torch.nn.Module, level: int) -> torch.Tensor:
            return _run(family, module, x, f"{topology_name}, level {level}")

        seed = _build_seed(family, channels, topology_name, config)
        if not isinstance(seed, LadderModule):
            raise ConformanceError(f"seed family '{family.name}' declares a ladder but builds no LadderModule")
        if (seed.internal_kind, seed.internal_max_level, seed.internal_level) != (spec.kind, spec.max_level, spec.initial_level):
            raise ConformanceError(
                f"seed family '{family.name}': module ladder {seed.internal_kind!r}, max {seed.internal_max_level}, "
                f"level {seed.internal_level} differs from the declared {spec}"
            )
        if registry is not None and spec.kind not in registry.entries["ladder_kinds"]:
            raise ConformanceError(f"seed family '{family.name}': ladder kind '{spec.kind}' is not registered")
        counts = [seed.internal_effective_params(level) for level in range(spec.max_level + 1)]
        if counts[0] != 0 or any(b < a for a, b in zip(counts, counts[1:])):
            raise ConformanceError(f"seed family '{family.name}': effective params per level {counts} must start at 0 and never fall")
        if counts[-1] <= 0:
            raise ConformanceError(f"seed family '{family.name}': the top level uses no parameters")
        parameter_ids = [id(p) for p in seed.parameters()]
        _perturbed(seed).eval()
        with torch.no_grad():
            seed.set_internal_level(0)
            if not torch.allclose(run(seed, 0), x, atol=atol):
                raise ConformanceError(f"seed family '{family.name}' ({topology_name}) is not the identity at level 0")
            for level in range(spec.max_level):
                seed.set_internal_level(level)
                before = run(seed, level)
                seed.set_internal_level(level + 1)
                if seed.internal_level != level + 1:
                    raise ConformanceError(f"seed family '{family.name}': set_internal_level({level + 1}) did not take")
                after = run(seed, level + 1)
                if not torch.allclose(before, after, atol=atol):
                    gap = (before - after).abs().max().item()
                    raise ConformanceError(
                        f"seed family '{family.name}' ({topology_name}): growing to level {level + 1} changes the output "
                        f"(max {gap:.3g}); new capacity must enter at zero"
                    )
                _perturbed(seed, seed=level)  # the new capacity learns something before the next step
        if [id(p) for p in seed.parameters()] != parameter_ids:
            raise ConformanceError(f"seed family '{family.name}': level changes allocated or freed parameters")
        for level in range(spec.max_level):
            seed.set_internal_level(level)
            seed.zero_grad()
            out = run(seed, level)
            if out.requires_grad:  # at level 0 nothing runs: every parameter is inactive
                (out * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
            inactive = [p for p in seed.parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
            with torch.no_grad():
                reference = run(seed, level)
                saved = [p.detach().clone() for p in inactive]
                for parameter in inactive:
                    parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(7)) * 5.0)
                changed = run(seed, level)
                for parameter, value in zip(inactive, saved):
                    parameter.copy_(value)
            if not torch.allclose(reference, changed, atol=atol):
                raise ConformanceError(
                    f"seed family '{family.name}' ({topology_name}): at level {level} the output depends on parameters "
                    "that receive no gradient there (inactive capacity must be inert)"
                )
        twin_a = _perturbed(_build_seed(family, channels, topology_name, config, other_streams=0)).eval()
        twin_b = _perturbed(_build_seed(family, channels, topology_name, config, other_streams=1)).eval()
        with torch.no_grad():
            for level in [spec.max_level, 0, 1, spec.max_level]:
                twin_a.set_internal_level(level)
                twin_b.set_internal_level(level)
                if not torch.equal(run(twin_a, level), run(twin_b, level)):
                    raise ConformanceError(f"seed family '{family.name}': level changes are not deterministic")


def check_subtarget_family(
    family: SeedFamily,
    *,
    channels: int = 16,
    config: Any = None,
    atol: float = 1e-6,
    registry: Registry | None = None,
) -> None:
    """A seed family with a subtarget inventory keeps the ``SubtargetInventory`` contract (see
    ``esper_core.kasmina.SubtargetInventory``).

    Checked on a build whose parameters are perturbed (so no contribution is zero), in eval mode:
    the declared, registered kind (``registry``, or the core's own kinds when None); K fixed in
    1..``MAX_SUBTARGETS`` and at most ``max_count``; the mask a (K,) bool buffer in the state dict;
    ``set_subtarget`` raises ``IndexError`` outside 0..K-1, and setting a group to its own state
    changes nothing; with no group enabled the seed is the identity; disabling a group removes exactly
    its contribution (``out(all) - out(all but g) == out(g alone) - out(none)``) and the contributions
    sum to the whole (``sum_g [out(all) - out(all but g)] == out(all) - out(none)``), within ``atol``
    plus float rounding relative to the output's size; enabling a group does not change the output at
    that moment; a disabled group is inert: its own parameters (elements that get gradient when it
    runs alone and never when another group runs alone) get no gradient while it is disabled, and
    perturbing them changes nothing, and with no group enabled no parameter gets gradient; switches allocate nothing (same parameters, the same mask
    tensor) and are deterministic across two builds; ``subtarget_effective_params`` is 0 for no group
    and strictly grows with every group added; ``subtarget_importance()`` is a finite (K,) float tensor
    before and after a training forward. A seed that is also a ``LadderModule`` keeps level == enabled
    count, grows by enabling the lowest disabled group, shrinks by disabling the highest enabled one,
    and ``internal_effective_params(level)`` equals the count of the mask of the first ``level`` groups.
    """
    from esper_core.kasmina import LadderModule, SubtargetInventory
    from esper_core.leyline import MAX_SUBTARGETS

    spec = family.subtargets
    name = f"seed family '{family.name}'"
    if spec is None:
        raise ConformanceError(f"{name} declares no subtargets")
    kinds = (registry if registry is not None else _builtin_registry()).entries["subtarget_kinds"]
    if spec.kind not in kinds:
        raise ConformanceError(f"{name}: subtarget kind '{spec.kind}' is not registered")
    config = family.config_class() if config is None else config
    for topology_name in family.topologies:
        topology = _topology(topology_name, registry, name)
        x = _sample_input(topology, channels)
        where = f"{name} ({topology_name})"
        seed = _build_seed(family, channels, topology_name, config)
        if not isinstance(seed, SubtargetInventory):
            raise ConformanceError(f"{where} declares subtargets but builds no SubtargetInventory")
        if seed.subtarget_kind != spec.kind:
            raise ConformanceError(
                f"{where}: the module's subtarget kind '{seed.subtarget_kind}' differs from the declared '{spec.kind}'"
            )
        count = seed.subtarget_count
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= min(spec.max_count, MAX_SUBTARGETS):
            raise ConformanceError(
                f"{where}: subtarget_count {count!r} is not in 1..{min(spec.max_count, MAX_SUBTARGETS)} "
                f"(the declared max_count {spec.max_count}, at most MAX_SUBTARGETS {MAX_SUBTARGETS})"
            )
        mask = seed.subtarget_mask
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (count,):
            found = f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ConformanceError(f"{where}: subtarget_mask must be a bool tensor of shape ({count},), got {found}")
        buffer_names = [buffer_name for buffer_name, buffer in seed.named_buffers() if buffer is mask]
        if not buffer_names or buffer_names[0] not in seed.state_dict():
            raise ConformanceError(
                f"{where}: subtarget_mask must be a registered (persistent) buffer of the seed, so it follows its "
                "device and state dict"
            )
        for bad in (count, -1):
            try:
                seed.set_subtarget(bad, True)
            except IndexError:
                continue
            raise ConformanceError(f"{where}: set_subtarget({bad}, True) did not raise IndexError (groups are 0..{count - 1})")
        _check_subtarget_sizes(seed, count, where)
        _check_importance(seed, count, where, "at birth")
        _check_subtarget_outputs(family, seed, count, x, atol, where)
        _check_subtarget_inertness(family, seed, count, x, atol, where)
        twin_a = _perturbed(_build_seed(family, channels, topology_name, config, other_streams=0)).eval()
        twin_b = _perturbed(_build_seed(family, channels, topology_name, config, other_streams=1)).eval()
        if not torch.equal(twin_a.subtarget_mask, twin_b.subtarget_mask):
            raise ConformanceError(f"{where}: two builds under the same torch seed have different masks")
        with torch.no_grad():
            for index, enabled in [(count - 1, True), (0, False), (count // 2, True), (0, True), (count - 1, False)]:
                twin_a.set_subtarget(index, enabled)
                twin_b.set_subtarget(index, enabled)
                if not torch.equal(twin_a.subtarget_mask, twin_b.subtarget_mask) or not torch.equal(
                    _run(family, twin_a, x, f"{topology_name}, switched"), _run(family, twin_b, x, f"{topology_name}, switched")
                ):
                    raise ConformanceError(f"{where}: subtarget switches are not deterministic")
        seed.train()
        with torch.no_grad():
            _run(family, seed, x, f"{topology_name}, train")
        _check_importance(seed, count, where, "after a training forward")
        if isinstance(seed, LadderModule):
            _check_ladder_agreement(family, channels, topology_name, config, count, where)


def _mask_of(seed: Any) -> tuple[bool, ...]:
    return tuple(bool(value) for value in seed.subtarget_mask.tolist())


def _set_mask(seed: Any, mask: tuple[bool, ...]) -> None:
    for index, enabled in enumerate(mask):
        seed.set_subtarget(index, enabled)


def _set_mask_keeping_weights(seed: Any, mask: tuple[bool, ...]) -> None:
    """Switch to ``mask``, then put every parameter back as it was: enabling a group re-zeroes its output
    path, and the output checks compare one set of weights under several masks."""
    with torch.no_grad():
        saved = [p.detach().clone() for p in seed.parameters()]
        _set_mask(seed, mask)
        for parameter, value in zip(seed.parameters(), saved):
            parameter.copy_(value)


def _only(count: int, *groups: int) -> tuple[bool, ...]:
    return tuple(index in groups for index in range(count))


def _all_but(count: int, group: int) -> tuple[bool, ...]:
    return tuple(index != group for index in range(count))


def _check_subtarget_sizes(seed: Any, count: int, where: str) -> None:
    """Parameters in use: 0 for no group, strictly more with every group added (in any order tried)."""
    none = seed.subtarget_effective_params(_only(count))
    if none != 0:
        raise ConformanceError(f"{where}: subtarget_effective_params of an all-False mask is {none}, not 0")
    for order in (range(count), range(count - 1, -1, -1)):
        enabled: list[int] = []
        previous = 0
        for group in order:
            enabled.append(group)
            size = seed.subtarget_effective_params(_only(count, *enabled))
            if size <= previous:
                raise ConformanceError(
                    f"{where}: subtarget_effective_params does not grow when group {group} is added to "
                    f"{sorted(enabled[:-1])} ({previous} -> {size}); parameters in use must follow the mask"
                )
            previous = size


def _check_importance(seed: Any, count: int, where: str, when: str) -> None:
    importance = seed.subtarget_importance()
    if (
        not isinstance(importance, torch.Tensor)
        or not importance.dtype.is_floating_point
        or tuple(importance.shape) != (count,)
    ):
        found = f"{importance.dtype} of shape {tuple(importance.shape)}" if isinstance(importance, torch.Tensor) else type(importance).__name__
        raise ConformanceError(f"{where}: subtarget_importance() {when} must be a float tensor of shape ({count},), got {found}")
    if importance.device != seed.subtarget_mask.device:
        raise ConformanceError(f"{where}: subtarget_importance() is on {importance.device}, the mask on {seed.subtarget_mask.device}")
    if not bool(torch.isfinite(importance).all()):
        raise ConformanceError(f"{where}: subtarget_importance() {when} is not finite: {importance.tolist()}")


def _check_subtarget_outputs(family: SeedFamily, seed: Any, count: int, x: torch.Tensor, atol: float, where: str) -> None:
    """Identity with no group, exact per-group contributions that sum to the whole, idempotent switches,
    enabling enters at zero, and no allocation."""
    _perturbed(seed).eval()
    parameter_ids = [id(p) for p in seed.parameters()]
    mask_tensor = seed.subtarget_mask
    mask_storage = mask_tensor.data_ptr()

    def out(mask: tuple[bool, ...]) -> torch.Tensor:
        _set_mask_keeping_weights(seed, mask)
        if _mask_of(seed) != mask:
            raise ConformanceError(f"{where}: after set_subtarget the mask is {_mask_of(seed)}, not {mask}")
        return _run(family, seed, x, f"mask {''.join('1' if m else '0' for m in mask)}")

    with torch.no_grad():
        everything = tuple(True for _ in range(count))
        out_all = out(everything)
        scale = max(float(out_all.abs().max()), float(x.abs().max()), 1.0)
        tolerance = atol + 1e-5 * scale

        def differs(a: torch.Tensor, b: torch.Tensor) -> float | None:
            gap = float((a - b).abs().max())
            return gap if gap > tolerance else None

        out_none = out(_only(count))
        gap = differs(out_none, x)
        if gap is not None:
            raise ConformanceError(f"{where}: with every group disabled the seed is not the identity (max {gap:.3g})")
        removed_sum = torch.zeros_like(x)
        for group in range(count):
            out_without = out(_all_but(count, group))
            out_alone = out(_only(count, group))
            removed = out_all - out_without
            gap = differs(removed, out_alone - out_none)
            if gap is not None:
                raise ConformanceError(
                    f"{where}: disabling group {group} does not remove exactly its contribution (max {gap:.3g}): "
                    "out(all) - out(all but g) must equal out(g alone) - out(none)"
                )
            removed_sum += removed
        gap = differs(removed_sum, out_all - out_none)
        if gap is not None:
            raise ConformanceError(
                f"{where}: the groups' contributions do not sum to the whole seed's (max {gap:.3g}); the output "
                "must be the identity plus one additive contribution per enabled group"
            )
        for group in range(count):
            out(everything)
            state = {key: value.clone() for key, value in seed.state_dict().items()}
            before = _run(family, seed, x, "all enabled")
            seed.set_subtarget(group, True)
            if differs(_run(family, seed, x, "all enabled, enabled again"), before) is not None or any(
                not torch.equal(value, state[key]) for key, value in seed.state_dict().items()
            ):
                raise ConformanceError(f"{where}: enabling the enabled group {group} changed the seed; a switch to the "
                                       "current state must change nothing")
            seed.set_subtarget(group, False)
            _perturbed(seed, seed=100 + group)  # the disabled group's parameters are not zero when it comes back
            before = _run(family, seed, x, f"all but {group}")
            seed.set_subtarget(group, False)
            if differs(_run(family, seed, x, f"all but {group}, disabled again"), before) is not None:
                raise ConformanceError(f"{where}: disabling the disabled group {group} changed the output")
            seed.set_subtarget(group, True)
            gap = differs(_run(family, seed, x, f"group {group} enabled"), before)
            if gap is not None:
                raise ConformanceError(
                    f"{where}: enabling group {group} changes the output (max {gap:.3g}); a group must enter at zero"
                )
    if [id(p) for p in seed.parameters()] != parameter_ids:
        raise ConformanceError(f"{where}: subtarget switches allocated or freed parameters")
    if seed.subtarget_mask is not mask_tensor or seed.subtarget_mask.data_ptr() != mask_storage:
        raise ConformanceError(f"{where}: a subtarget switch replaced the mask tensor; a switch must be a write into it")


def _gradients(family: SeedFamily, seed: Any, x: torch.Tensor, mask: tuple[bool, ...]) -> list[torch.Tensor]:
    """Per parameter, which elements get a nonzero gradient under ``mask`` (a random linear loss)."""
    _set_mask_keeping_weights(seed, mask)
    seed.zero_grad()
    out = _run(family, seed, x, f"mask {''.join('1' if m else '0' for m in mask)}, backward")
    if out.requires_grad:
        (out * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
    return [
        torch.zeros_like(p, dtype=torch.bool) if p.grad is None else p.grad != 0 for p in seed.parameters()
    ]


def _check_subtarget_inertness(family: SeedFamily, seed: Any, count: int, x: torch.Tensor, atol: float, where: str) -> None:
    """A disabled group's own parameters get no gradient and do not influence the output."""
    _perturbed(seed, seed=200).eval()
    params = list(seed.parameters())
    if any(bool(elements.any()) for elements in _gradients(family, seed, x, _only(count))):
        raise ConformanceError(
            f"{where}: with every group disabled some parameters get gradient; a disabled group must get none"
        )
    alone = [_gradients(family, seed, x, _only(count, group)) for group in range(count)]
    for group in range(count):
        own = []
        for index in range(len(params)):
            others = torch.zeros_like(alone[group][index])
            for other in range(count):
                if other != group:
                    others |= alone[other][index]
            own.append(alone[group][index] & ~others)
        if not any(bool(elements.any()) for elements in own):
            raise ConformanceError(
                f"{where}: group {group} has no parameters of its own (elements that get gradient when it runs alone "
                "and never when another group runs alone); a disabled group must get no gradient"
            )
        without = _gradients(family, seed, x, _all_but(count, group))
        if any(bool((elements & leaked).any()) for elements, leaked in zip(own, without)):
            raise ConformanceError(f"{where}: group {group}'s parameters get gradient while it is disabled")
        with torch.no_grad():
            reference = _run(family, seed, x, f"all but {group}")
            saved = [p.detach().clone() for p in params]
            generator = torch.Generator().manual_seed(7)
            for parameter, elements in zip(params, own):
                noise = torch.randn(parameter.shape, generator=generator) * 5.0
                parameter.add_(noise.to(parameter.device, parameter.dtype) * elements)
            changed = _run(family, seed, x, f"all but {group}, its parameters perturbed")
            for parameter, value in zip(params, saved):
                parameter.copy_(value)
        scale = max(float(reference.abs().max()), 1.0)
        if float((reference - changed).abs().max()) > atol + 1e-5 * scale:
            raise ConformanceError(
                f"{where}: perturbing disabled group {group}'s parameters changes the output; a disabled group must be inert"
            )
    seed.zero_grad()


def _check_ladder_agreement(family: SeedFamily, channels: int, topology: str, config: Any, count: int, where: str) -> None:
    """Level == enabled count; GROW enables the lowest disabled group, SHRINK disables the highest enabled
    one; ``internal_effective_params(level)`` equals the count of the first ``level`` groups."""
    seed = _build_seed(family, channels, topology, config)
    if seed.internal_level != sum(_mask_of(seed)):
        raise ConformanceError(
            f"{where}: internal_level {seed.internal_level} differs from the {sum(_mask_of(seed))} enabled groups"
        )
    if seed.internal_max_level != count:
        raise ConformanceError(f"{where}: internal_max_level {seed.internal_max_level} differs from the {count} groups")
    for level in range(count + 1):
        expected = seed.subtarget_effective_params(_only(count, *range(level)))
        if seed.internal_effective_params(level) != expected:
            raise ConformanceError(
                f"{where}: internal_effective_params({level}) is {seed.internal_effective_params(level)}, but the mask "
                f"of the first {level} groups uses {expected}"
            )
    with torch.no_grad():
        _set_mask(seed, _only(count, count - 1))  # a mask that is not a prefix
        for level in range(2, count + 1):
            before = _mask_of(seed)
            seed.set_internal_level(level)
            lowest = before.index(False)
            if _mask_of(seed) != tuple(m or index == lowest for index, m in enumerate(before)):
                raise ConformanceError(
                    f"{where}: growing from {before} gave {_mask_of(seed)}; GROW must enable the lowest disabled group"
                )
        for level in range(count - 1, -1, -1):
            before = _mask_of(seed)
            seed.set_internal_level(level)
            highest = count - 1 - before[::-1].index(True)
            if _mask_of(seed) != tuple(m and index != highest for index, m in enumerate(before)):
                raise ConformanceError(
                    f"{where}: shrinking from {before} gave {_mask_of(seed)}; SHRINK must disable the highest enabled group"
                )
            if seed.internal_level != level:
                raise ConformanceError(f"{where}: after set_internal_level({level}) the level is {seed.internal_level}")


def check_host_family(
    family: HostFamily,
    task_info: TaskInfo,
    *,
    config: Any = None,
    batch: int = 4,
    atol: float = 1e-5,
    registry: Registry | None = None,
    inputs: torch.Tensor | None = None,
) -> None:
    """A host's specs are ordered and routable: chaining ``forward_to``/``forward_from`` through
    every slot (and through subsets) equals ``forward``; activations have the host topology's number
    of axes, each spec's channels on its ``channel_dim`` and, where a spec states a ``resolution``,
    that spatial size (every axis but the batch and channel axes); an unknown slot or a backwards
    ``from_slot`` raises ``KeyError`` / ``ValueError``. The topology is looked up as in
    ``check_seed_family``. ``inputs`` is a batch the host accepts; by default a standard-normal batch
    of the task's ``input_shape``, or token ids in [0, num_classes) for a ``sequence`` task."""
    topology = _topology(family.topology, registry, f"host '{family.name}'")
    config = family.config_class() if config is None else config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        host = family.build(config, task_info)
    specs = check_host(host, family.name)
    host.eval()
    generator = torch.Generator().manual_seed(7)
    if inputs is not None:
        x = inputs
    elif task_info.topology == "sequence":  # token ids
        x = torch.randint(0, task_info.num_classes, (batch, *task_info.input_shape), generator=generator)
    else:
        x = torch.randn(batch, *task_info.input_shape, generator=generator)
    channel_dim = topology.channel_dim
    axes = len(topology.example_shape(batch, 1))
    with torch.no_grad():
        reference = host(x)
        for subset in (specs, specs[::2], specs[-1:]):
            h = x
            previous = None
            for spec in subset:
                h = host.forward_to(spec.slot_id, h, from_slot=previous)
                if h.dim() != axes:
                    raise ConformanceError(
                        f"host '{family.name}': activation at {spec.slot_id} has shape {tuple(h.shape)}, but its "
                        f"topology '{topology.name}' has {axes} axes"
                    )
                if h.shape[channel_dim] != spec.channels:
                    raise ConformanceError(
                        f"host '{family.name}': activation at {spec.slot_id} has {h.shape[channel_dim]} "
                        f"channels, spec says {spec.channels}"
                    )
                if spec.resolution is not None:
                    spatial = tuple(h.shape[axis] for axis in range(1, h.dim()) if axis != channel_dim % h.dim())
                    if spatial != tuple(spec.resolution):
                        raise ConformanceError(
                            f"host '{family.name}': activation at {spec.slot_id} has spatial size {spatial}, "
                            f"spec says resolution {tuple(spec.resolution)}"
                        )
                previous = spec.slot_id
            routed = host.forward_from(previous, h)
            if routed.shape != reference.shape or not torch.allclose(routed, reference, atol=atol):
                raise ConformanceError(
                    f"host '{family.name}': routing through {[s.slot_id for s in subset]} differs from forward()"
                )
        bad_calls = [("an unknown slot id", lambda: host.forward_to("no-such-slot", x))]
        if len(specs) > 1:
            bad_calls.append(
                ("a backwards from_slot", lambda: host.forward_to(specs[0].slot_id, x, from_slot=specs[-1].slot_id))
            )
        for label, call in bad_calls:
            try:
                call()
            except (KeyError, ValueError):
                continue
            raise ConformanceError(f"host '{family.name}': routing with {label} did not raise")


def check_task_kind(kind: TaskKind, *, config: Any = None, batch_size: int = 8) -> Task:
    """A task builds, reports consistent info, yields batches of the declared shape, and scores them."""
    config = kind.config_class() if config is None else config
    task = kind.build(config, TaskContext(device=torch.device("cpu"), seed=0))
    info = task.info
    generator = torch.Generator().manual_seed(0)
    order = task.epoch_order(generator)
    if sorted(order.tolist()) != list(range(info.train_size)):
        raise ConformanceError(f"task '{kind.name}': epoch_order is not a permutation of {info.train_size} indices")
    x, y = task.train_batch(order[:batch_size], generator)
    if tuple(x.shape[1:]) != info.input_shape:
        raise ConformanceError(f"task '{kind.name}': batch shape {tuple(x.shape)} vs input_shape {info.input_shape}")
    val = task.validation_batches(batch_size)
    if sum(int(vx.shape[0]) for vx, _ in val) != info.val_size:
        raise ConformanceError(f"task '{kind.name}': validation batches do not cover val_size {info.val_size}")
    again = task.validation_batches(batch_size)
    if not all(torch.equal(a[0], b[0]) for a, b in zip(val, again)):
        raise ConformanceError(f"task '{kind.name}': validation set changes between calls")
    logits = torch.zeros(2, *y.shape, info.num_classes)  # (variants, batch[, time], classes)
    loss_sums, metric_sums = task.metric_sums(logits, y)
    if loss_sums.shape != (2,) or metric_sums.shape != (2,):
        raise ConformanceError(f"task '{kind.name}': score() must return per-variant sums of shape (V,)")
    if not bool(torch.isfinite(loss_sums).all()) or not all(0 <= float(m) <= x.shape[0] for m in metric_sums):
        raise ConformanceError(f"task '{kind.name}': score() gave losses {loss_sums} metrics {metric_sums}")
    return task


def sample_events() -> list[TelemetryEvent]:
    """One event of every type with plausible payloads (for sink tests)."""
    common = {"env_id": 0, "round": 0, "epoch": 1}
    seed = {"slot_id": "r0c0", "seed_id": "r0e0-r0c0-0", "blueprint_id": "norm"}
    samples: dict[TelemetryEventType, Any] = {
        TelemetryEventType.RUN_STARTED: payloads.RunStartedPayload(
            run_name="sample", run_dir="/tmp/sample", task="shapes", host="cnn", policy="heuristic",
            reward="basic", seed=0, rounds=1, envs=1, episode_length=3, slots=("r0c0",),
            blueprints=("norm",), host_params=1000, device="cpu", slot_surfaces=("segment_boundary",),
            score_basis="metric", torch_threads=1,
        ),
        TelemetryEventType.RUN_RESUMED: payloads.RunResumedPayload(round=0, epoch=1, discarded_events=2),
        TelemetryEventType.RUN_FINISHED: payloads.RunFinishedPayload(
            status="completed", rounds_completed=1, wall_seconds=1.5
        ),
        TelemetryEventType.ROUND_COMPLETED: payloads.RoundCompletedPayload(
            round=0, final_metrics=(0.5,), final_params=(1000,), mean_return=None
        ),
        TelemetryEventType.EPOCH_COMPLETED: payloads.EpochCompletedPayload(
            train_loss=1.0, val_loss=1.1, val_metric=0.5, host_params=1000, seed_params=10,
            fossilized_params=0, stage_counts={"DORMANT": 1}, train_seconds=0.1, validate_seconds=0.05,
            effective_seed_params=0.0, alpha_delta_sq_sum=0.0, **common,
        ),
        TelemetryEventType.ACTION_TAKEN: payloads.ActionTakenPayload(
            action={"op": "WAIT"}, success=True, **common
        ),
        TelemetryEventType.REWARD_COMPUTED: payloads.RewardComputedPayload(
            reward=0.1, components={"metric_gain": 0.1}, **common
        ),
        TelemetryEventType.SEED_GERMINATED: payloads.SeedGerminatedPayload(
            style="ADD", alpha_target=1.0, seed_params=10, built_params=10, **common, **seed
        ),
        TelemetryEventType.SEED_STAGE_CHANGED: payloads.SeedStageChangedPayload(
            from_stage=SeedStage.GERMINATED, to_stage=SeedStage.TRAINING, **common, **seed
        ),
        TelemetryEventType.SEED_FOSSILIZED: payloads.SeedFossilizedPayload(
            seed_params=10, alpha=1.0, contribution=0.02, seed_age_epochs=6, **common, **seed
        ),
        TelemetryEventType.SEED_PRUNED: payloads.SeedPrunedPayload(
            reason="policy", contribution=-0.01, seed_age_epochs=4, **common, **seed
        ),
        TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED: payloads.SeedInternalLevelChangedPayload(
            from_level=1, to_level=2, internal_effective_params=2000, **common, **seed
        ),
        TelemetryEventType.SEED_SUBTARGET_CHANGED: payloads.SeedSubtargetChangedPayload(
            subtarget_idx=1, enabled=False, subtarget_active_count=3, internal_effective_params=1500,
            **common, **seed
        ),
        TelemetryEventType.GOVERNOR_ROLLBACK: payloads.GovernorRollbackPayload(
            reason="non-finite loss", loss=float("nan"), restored_epoch=0, pruned_slots=("r0c0",), **common
        ),
        TelemetryEventType.POLICY_UPDATED: payloads.PolicyUpdatedPayload(round=0, metrics={"policy_loss": 0.1}),
        TelemetryEventType.GRADIENT_ANOMALY: payloads.GradientAnomalyPayload(
            where="seed", name="r0c0", kind="exploding", value=1e4, threshold=1e3, seed_id="r0e0-r0c0-0", **common
        ),
        TelemetryEventType.POLICY_ANOMALY: payloads.PolicyAnomalyPayload(
            round=0, kind="entropy_collapse", value=0.01, threshold=0.05, head="op"
        ),
    }
    missing = set(EVENT_PAYLOADS) - set(samples)
    if missing:
        raise ConformanceError(f"sample_events lacks {sorted(t.value for t in missing)}")
    return [TelemetryEvent(event_type=kind, payload=payload) for kind, payload in samples.items()]


def check_sink_kind(kind: SinkKind, run_dir: Path, *, config: Any = None) -> Any:
    """A sink accepts every event type, flushes and closes; returns the sink for further checks."""
    config = kind.config_class() if config is None else config
    run_dir.mkdir(parents=True, exist_ok=True)
    sink = kind.build(config, SinkContext(run_dir=run_dir, run_name="sample", rounds=1, envs=1, episode_length=3))
    for event in sample_events():
        try:
            sink.handle(event)
        except Exception as exc:
            raise ConformanceError(
                f"sink '{kind.name}' failed on {event.event_type.value}: {type(exc).__name__}: {exc}"
            ) from exc
    sink.flush()
    sink.close()
    return sink

