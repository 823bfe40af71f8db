"""The conformance kit on deliberately broken seed families, and a plugin's own topology through the kit and the blend gate."""

from __future__ import annotations

import itertools
import random

import attrs
import numpy
import pytest
import torch
from torch import nn

from esper_core.hookspecs import hookimpl
from esper_core.kasmina import BlendGate, LifecycleSettings, MorphogeneticModel, SeedSlot
from esper_core.leyline import AlphaCurve, BlendStyle, InjectionSpec, SeedStage, SlotConfig
from esper_core.plugins import PluginManager
from esper_core.registry import LadderSpec, SeedFamily, TopologyKind
from esper_core.testing import ConformanceError, check_host_family, check_ladder_family, check_seed_family
from tests import toy_plugin


def family(build, *, topologies=("image",), ladder=None, name="broken") -> SeedFamily:
    return SeedFamily(name=name, build=build, topologies=topologies, ladder=ladder)


class Residual(nn.Module):
    """``x + out(relu(inner(x)))`` with a zero 1x1 ``out``: the identity at birth, as the contract wants."""

    def __init__(self, inner: nn.Conv2d, channels: int) -> None:
        super().__init__()
        self.inner = inner
        self.out = nn.Conv2d(inner.out_channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(torch.relu(self.inner(x)))


#: Stands in for ``time.time_ns()``: a clock that has moved on at every reading (exact, unlike a real clock).
CLOCK = itertools.count(1_700_000_000_000_000_000, 1_000)


def test_the_kit_passes_a_conforming_family():
    check_seed_family(family(lambda c, t, cfg: Residual(nn.Conv2d(c, c, 3, padding=1), c), name="good"), channels=6)


# -- determinism -------------------------------------------------------------------------------------


def test_a_family_built_from_a_clock_seeded_generator_is_not_deterministic():
    def build(channels, topology, config):
        inner = nn.Conv2d(channels, channels, 3, padding=1)
        generator = torch.Generator().manual_seed(next(CLOCK) % 2**63)
        with torch.no_grad():
            inner.weight.copy_(torch.randn(inner.weight.shape, generator=generator))
        return Residual(inner, channels)

    with pytest.raises(ConformanceError, match=r"not deterministic: .* give 'inner.weight' different values"):
        check_seed_family(family(build), channels=6)


def test_a_family_with_a_random_kernel_size_is_not_deterministic():
    def build(channels, topology, config):
        kernel = random.choice([1, 3, 5])  # Python's stream, not torch's
        return Residual(nn.Conv2d(channels, channels, kernel, padding=kernel // 2), channels)

    with pytest.raises(ConformanceError, match=r"give 'inner.weight' the shapes \(6, 6, \d, \d\) and \(6, 6, \d, \d\)"):
        check_seed_family(family(build), channels=6)


def test_a_family_with_a_numpy_drawn_width_is_not_deterministic():
    def build(channels, topology, config):
        hidden = int(numpy.random.randint(2, 5))  # NumPy's stream, not torch's
        return Residual(nn.Conv2d(channels, hidden, 1), channels)

    with pytest.raises(ConformanceError, match=r"give 'inner.weight' the shapes \(\d, 6, 1, 1\) and \(\d, 6, 1, 1\)"):
        check_seed_family(family(build), channels=6)


def test_kit_leaves_the_callers_random_streams_alone():
    random.seed(3)
    numpy.random.seed(3)
    torch.manual_seed(3)
    expected = (random.random(), float(numpy.random.rand()), torch.rand(()).item())
    random.seed(3)
    numpy.random.seed(3)
    torch.manual_seed(3)
    check_seed_family(family(lambda c, t, cfg: Residual(nn.Conv2d(c, c, 1), c), name="good"), channels=4)
    assert (random.random(), float(numpy.random.rand()), torch.rand(()).item()) == expected


def test_a_forward_pass_with_its_own_clock_seeded_noise_is_caught_after_the_perturbation():
    """Equal parameters, but the forward pass adds noise from a clock-seeded generator through a weight
    that is zero at birth: only the outputs after perturbing the parameters show it."""

    class Noisy(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            generator = torch.Generator().manual_seed(next(CLOCK) % 2**63)
            return x + self.scale * torch.randn(x.shape, generator=generator)

    with pytest.raises(ConformanceError, match="equally perturbed, give different outputs"):
        check_seed_family(family(lambda c, t, cfg: Noisy(c)), channels=4)


# -- the real cause ----------------------------------------------------------------------------------


def test_a_build_returning_none_is_named():
    with pytest.raises(ConformanceError, match="seed family 'broken' built NoneType, not an nn.Module"):
        check_seed_family(family(lambda c, t, cfg: None), channels=4)


def test_a_build_that_raises_is_named_with_its_error():
    def build(channels, topology, config):
        raise ValueError("no such width")

    with pytest.raises(ConformanceError, match=r"'broken' \(image\) failed to build .*ValueError: no such width"):
        check_seed_family(family(build), channels=4)


def test_a_forward_that_raises_is_named_with_its_error():
    class Crashes(Residual):
        def forward(self, x):
            raise RuntimeError("bad reshape")

    with pytest.raises(ConformanceError, match=r"\(image, train\) raised RuntimeError .*bad reshape"):
        check_seed_family(family(lambda c, t, cfg: Crashes(nn.Conv2d(c, c, 1), c)), channels=4)


def test_a_shape_changing_seed_is_not_shape_preserving():
    class Narrow(Residual):
        def forward(self, x):
            return super().forward(x)[:, :1]

    with pytest.raises(ConformanceError, match=r"\(image, train\) is not shape-preserving: \(4, 4, 6, 6\) -> \(4, 1, 6, 6\)"):
        check_seed_family(family(lambda c, t, cfg: Narrow(nn.Conv2d(c, c, 1), c)), channels=4)


def test_a_ladder_whose_seed_changes_shape_fails_as_not_shape_preserving():
    class NarrowLadder(toy_plugin.ToyLadder):
        def forward(self, x):
            return super().forward(x)[:, :1]

    ladder = family(lambda c, t, cfg: NarrowLadder(c), ladder=toy_plugin.TOY_LADDER)
    with pytest.raises(ConformanceError, match="is not shape-preserving"):
        check_seed_family(ladder, channels=6)


def test_a_ladder_that_changes_shape_at_one_level_is_named_with_that_level():
    class NarrowAtTwo(toy_plugin.ToyLadder):
        def forward(self, x):
            out = super().forward(x)
            return out[:, :1] if self.internal_level == 2 else out

    ladder = family(lambda c, t, cfg: NarrowAtTwo(c), ladder=toy_plugin.TOY_LADDER)
    with pytest.raises(ConformanceError, match=r"\(image, level 2\) is not shape-preserving: \(4, 6, 6, 6\) -> \(4, 1, 6, 6\)"):
        check_ladder_family(ladder, channels=6)


def test_a_ladder_with_an_unregistered_kind_is_named_when_a_registry_is_given(toy_manager):
    ladder = family(toy_plugin.build_toy_ladder, ladder=LadderSpec(kind="conv_stages", max_level=3, initial_level=1))
    check_ladder_family(ladder, channels=6, registry=toy_manager.registry)

    class OtherKind(toy_plugin.ToyLadder):
        internal_kind = "dendrites"

    odd = family(lambda c, t, cfg: OtherKind(c), ladder=LadderSpec(kind="dendrites", max_level=3, initial_level=1))
    with pytest.raises(ConformanceError, match="ladder kind 'dendrites' is not registered"):
        check_ladder_family(odd, channels=6, registry=toy_manager.registry)


# -- a plugin's own topology ---------------------------------------------------------------------------


def audio_shape(batch: int, channels: int) -> tuple[int, ...]:
    return (batch, channels, 10)


AUDIO = TopologyKind(name="audio", code=9, channel_dim=1, gate_pool_dims=(2,), example_shape=audio_shape,
                     description="(batch, channels, time) waveform features")


class AudioSeed(nn.Module):
    """A residual 1-D conv, zero at birth."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.inner = nn.Conv1d(channels, channels, 3, padding=1)
        self.out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(torch.relu(self.inner(x)))


AUDIO_FAMILY = SeedFamily(name="audio_conv", build=lambda c, t, cfg: AudioSeed(c), topologies=("audio",))


class AudioPlugin:
    """A third-party plugin that brings its own topology and a seed family for it."""

    @staticmethod
    @hookimpl
    def esper_register_topologies(register) -> None:
        register(AUDIO)

    @staticmethod
    @hookimpl
    def esper_register_seed_families(register) -> None:
        register(AUDIO_FAMILY)


@pytest.fixture
def audio_manager() -> PluginManager:
    manager = PluginManager(autoload=False, extra=[AudioPlugin])
    assert not manager.failures, [failure.describe() for failure in manager.failures]
    return manager


def test_a_plugin_topology_runs_the_conformance_kit(audio_manager):
    check_seed_family(audio_manager.registry.get("seed_families", "audio_conv"), channels=5,
                      registry=audio_manager.registry)
    with pytest.raises(ConformanceError, match="topology 'audio' is not registered.*pass registry="):
        check_seed_family(AUDIO_FAMILY, channels=5)


def test_the_blend_gate_follows_a_plugin_topology_layout():
    gate = BlendGate(4, AUDIO)
    h = torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(0))
    assert gate(h).shape == (3, 1, 1) and torch.equal(gate(h), torch.full((3, 1, 1), 0.5))
    with torch.no_grad():
        gate.proj.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
        gate.proj.bias.fill_(0.1)
    expected = torch.sigmoid(h.mean(dim=2) @ gate.proj.weight.T + gate.proj.bias).view(3, 1, 1)
    assert torch.allclose(gate(h), expected)
    assert len(set(gate(h).flatten().tolist())) == 3  # one gate per sample


def test_the_blend_gate_keeps_the_builtin_layouts(toy_manager):
    image, sequence = toy_manager.registry.topology("image"), toy_manager.registry.topology("sequence")
    image_gate, sequence_gate = BlendGate(4, image), BlendGate(4, sequence)
    for gate in (image_gate, sequence_gate):
        with torch.no_grad():
            gate.proj.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(image_gate(x), torch.sigmoid(image_gate.proj(x.mean(dim=(2, 3)))).view(2, 1, 1, 1))
    tokens = torch.randn(2, 7, 4)
    assert torch.allclose(sequence_gate(tokens), torch.sigmoid(sequence_gate.proj(tokens)))  # per token


def test_a_slot_blends_a_gated_seed_on_a_plugin_topology():
    spec = InjectionSpec(slot_id="r0c0", channels=4, surface="segment_boundary", order=0, host_block=0)
    slot = SeedSlot(spec, topology=AUDIO, settings=LifecycleSettings(min_training_epochs=1),
                    build_seed=lambda family, channels: AudioSeed(channels))
    assert slot.germinate(seed_id="s", seed_family="audio_conv", style=BlendStyle.GATE, blend_epochs=2,
                          alpha_target=1.0, alpha_curve=AlphaCurve.LINEAR, score_now=None).success
    slot.tick()
    slot.tick()
    assert slot.advance().success
    slot.tick()
    assert slot.stage is SeedStage.BLENDING and slot.alpha == pytest.approx(0.5)
    with torch.no_grad():
        for p in slot.seed_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
        h = torch.randn(3, 4, 10)
        expected = h + 0.5 * slot.gate(h) * (slot.seed(h) - h)
        assert torch.allclose(slot(h), expected) and not torch.allclose(slot(h), h)


def test_a_model_for_a_plugin_topology_needs_the_registered_record():
    slots = SlotConfig.from_specs([InjectionSpec(slot_id="r0c0", channels=4, surface="segment_boundary", order=0,
                                                 host_block=0)])
    with pytest.raises(ValueError, match="topology 'audio' is not one the core registers.*registered TopologyKind"):
        MorphogeneticModel(nn.Identity(), slots, topology="audio", seed_families=("audio_conv",),
                           build_seed=lambda family, channels: AudioSeed(channels),
                           settings=LifecycleSettings(), max_seeds=1)


class AudioHost(nn.Module):
    """Two 1-D conv blocks on (batch, channels, time) with a slot after each, then a classifier."""

    def __init__(self, config, task_info) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Conv1d(task_info.input_shape[0], 5, 3, padding=1), nn.Conv1d(5, 7, 3, padding=1)])
        self.head = nn.Linear(7, task_info.num_classes)
        self.slot_ids = ("r0c0", "r0c1")

    def injection_specs(self):
        return [InjectionSpec(slot_id=slot_id, channels=block.out_channels, surface="segment_boundary", order=index,
                              host_block=index) for index, (slot_id, block) in enumerate(zip(self.slot_ids, self.blocks))]

    def forward_to(self, slot_id, x, from_slot=None):
        if slot_id not in self.slot_ids:
            raise KeyError(f"no slot {slot_id!r}; this host has {self.slot_ids}")
        start = 0 if from_slot is None else self.slot_ids.index(from_slot) + 1
        stop = self.slot_ids.index(slot_id) + 1
        if start >= stop:
            raise ValueError(f"{from_slot} is not before {slot_id}")
        for block in self.blocks[start:stop]:
            x = torch.relu(block(x))
        return x

    def forward_from(self, slot_id, h):
        for block in self.blocks[self.slot_ids.index(slot_id) + 1:]:
            h = torch.relu(block(h))
        return self.head(h.mean(dim=2))

    def forward(self, x):
        return self.forward_from(self.slot_ids[-1], self.forward_to(self.slot_ids[-1], x))


def test_a_host_of_a_plugin_topology_runs_the_host_kit(audio_manager):
    from esper_core.registry import HostFamily
    from esper_core.tasks import TaskInfo

    info = TaskInfo(name="clips", topology="audio", input_shape=(3, 12), num_classes=4, metric_name="accuracy",
                    train_size=8, val_size=8)
    host = HostFamily(name="audio_host", build=AudioHost, topology="audio")
    check_host_family(host, info, registry=audio_manager.registry)

    class Flattening(AudioHost):  # a slot activation without the time axis
        def forward_to(self, slot_id, x, from_slot=None):
            return super().forward_to(slot_id, x, from_slot).mean(dim=2)

        def forward(self, x):
            return AudioHost.forward_from(self, "r0c1", AudioHost.forward_to(self, "r0c1", x))

    with pytest.raises(ConformanceError, match=r"activation at r0c0 has shape \(4, 5\), but its topology 'audio' has 3 axes"):
        check_host_family(HostFamily(name="flat", build=Flattening, topology="audio"), info, registry=audio_manager.registry)


def test_the_host_kit_checks_a_stated_resolution(audio_manager):
    from esper_core.registry import HostFamily
    from esper_core.tasks import TaskInfo

    info = TaskInfo(name="clips", topology="audio", input_shape=(3, 12), num_classes=4, metric_name="accuracy",
                    train_size=8, val_size=8)

    class Stating(AudioHost):  # states each slot's time length (12: the convs keep it)
        def __init__(self, config, task_info, length=12):
            super().__init__(config, task_info)
            self.length = length

        def injection_specs(self):
            return [attrs.evolve(spec, resolution=(self.length,)) for spec in super().injection_specs()]

    check_host_family(HostFamily(name="stating", build=Stating, topology="audio"), info, registry=audio_manager.registry)

    class Misstating(Stating):
        def __init__(self, config, task_info):
            super().__init__(config, task_info, length=6)

    with pytest.raises(ConformanceError, match=r"activation at r0c0 has spatial size \(12,\), spec says resolution \(6,\)"):
        check_host_family(HostFamily(name="misstating", build=Misstating, topology="audio"), info, registry=audio_manager.registry)
