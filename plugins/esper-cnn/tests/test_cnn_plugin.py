"""Tests that esper-cnn is discovered through its entry point and that its seeds train inside a host."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from esper_core.kasmina import LifecycleSettings, MorphogeneticModel
from esper_core.leyline import AlphaTarget, FactoredAction, LifecycleOp, SeedStage, SlotConfig, Tempo
from esper_core.plugins import PluginManager
from esper_core.testing import task_info

from esper_cnn.host import CNNHostConfig, build_cnn_host

FAMILY_NAMES = ("norm", "attention", "depthwise", "bottleneck", "conv_small", "conv_light", "conv_heavy", "conv_ladder",
                "channel_ladder")
TINY_DIGITS = task_info(name="digits", input_shape=(1, 8, 8), train_size=32, val_size=32)


def test_entry_point_registers_host_and_seed_families() -> None:
    manager = PluginManager()
    assert manager.failures == []
    registry = manager.registry
    assert "cnn" in registry.names("hosts")
    assert registry.owner("hosts", "cnn") == "cnn"
    for name in FAMILY_NAMES:
        assert name in registry.names("seed_families")
        assert registry.owner("seed_families", name) == "cnn"
    info = next(plugin for plugin in manager.plugins if plugin.name == "cnn")
    assert info.distribution == "esper-cnn"
    assert info.module == "esper_cnn.plugin"
    assert sorted(info.registered["seed_families"]) == sorted(FAMILY_NAMES)


def planted_model(family: str, manager: PluginManager) -> MorphogeneticModel:
    """A tiny cnn host with one seed of ``family`` germinated in its first slot (ADD style, fast blend)."""
    torch.manual_seed(0)
    host = build_cnn_host(CNNHostConfig(preset="tiny"), TINY_DIGITS)

    def build_seed(name: str, channels: int) -> torch.nn.Module:
        family = manager.lookup("seed_families", name)
        return family.build(channels, "image", family.config_class())

    model = MorphogeneticModel(
        host,
        SlotConfig.from_specs(host.injection_specs()),
        topology=manager.registry.topology("image"),
        seed_families=[family],
        build_seed=build_seed,
        settings=LifecycleSettings(embargo_epochs=0, min_training_epochs=1),
        max_seeds=1,
    )
    result = model.apply(
        FactoredAction(op=LifecycleOp.GERMINATE, slot=0, blueprint=0, tempo=Tempo.FAST, alpha_target=AlphaTarget.FULL),
        score_now=0.0,
    )
    assert result.success, result.reason
    return model


def sgd_losses(model: torch.nn.Module, parameters: list[torch.nn.Parameter], steps: int) -> list[float]:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(32, 1, 8, 8, generator=generator)
    y = torch.randint(0, 10, (32,), generator=generator)
    optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_newborn_seed_leaves_the_host_output_unchanged(family: str) -> None:
    model = planted_model(family, PluginManager()).eval()
    x = torch.randn(4, 1, 8, 8)
    assert model.slots["r0c0"].stage is SeedStage.GERMINATED
    with torch.no_grad():
        assert torch.allclose(model(x), model.host(x), atol=1e-6)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_planted_seed_trains_in_incubation_and_after_blending(family: str) -> None:
    manager = PluginManager()
    model = planted_model(family, manager).train()
    slot = model.slots["r0c0"]
    model.tick()
    assert slot.stage is SeedStage.TRAINING

    # Incubation: host and seed train together; the seed learns from the host's gradient.
    seed_before = [p.detach().clone() for p in slot.seed_parameters()]
    losses = sgd_losses(model, list(model.parameters()), steps=10)
    assert losses[-1] < losses[0]
    assert any(not torch.equal(before, after) for before, after in zip(seed_before, slot.seed_parameters()))

    # Blend to alpha 1, then train the seed alone: the loss falls through the seed's own capacity.
    model.tick()
    assert model.apply(FactoredAction(op=LifecycleOp.ADVANCE, slot=0), score_now=0.0).success
    for _ in range(100):  # a blend lasts a few epochs; fail rather than loop forever
        if not (slot.stage is SeedStage.BLENDING):
            break
        model.tick()
    else:
        raise AssertionError("the blend never ended")
    assert slot.stage is SeedStage.HOLDING and slot.alpha == 1.0
    for parameter in model.host.parameters():
        parameter.requires_grad_(False)
    losses = sgd_losses(model, slot.seed_parameters(), steps=10)
    assert losses[-1] < losses[0]
