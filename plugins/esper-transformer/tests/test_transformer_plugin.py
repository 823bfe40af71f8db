"""Tests that esper-transformer is discovered through its entry point and that its seeds train in lattice slots."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from esper_core.kasmina import LifecycleSettings, MorphogeneticModel
from esper_core.leyline import AlphaTarget, FactoredAction, LifecycleOp, SeedStage, SlotConfig, Tempo
from esper_core.plugins import PluginManager
from esper_core.testing import task_info

from esper_transformer.host import TransformerHost, TransformerHostConfig, build_transformer_host

FAMILY_NAMES = ("layer_norm", "lora", "lora_large", "causal_attention", "head_group_attention", "mlp_small", "mlp")
VOCAB = 17
TOKENS = task_info(
    name="tokens", topology="sequence", input_shape=(12,), num_classes=VOCAB, train_size=32, val_size=32,
    score_basis="loss",
)


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager()


def test_entry_point_registers_host_surfaces_and_seed_families(manager: PluginManager) -> None:
    assert manager.failures == [], [failure.describe() for failure in manager.failures]
    registry = manager.registry
    assert registry.owner("hosts", "transformer") == "transformer"
    assert registry.get("hosts", "transformer").topology == "sequence"
    for name, code in (("post_attn", 1), ("post_mlp", 2)):
        surface = registry.get("surfaces", name)
        assert (surface.code, surface.host_families) == (code, ("transformer",))
        assert registry.owner("surfaces", name) == "transformer"
    for name in FAMILY_NAMES:
        assert registry.owner("seed_families", name) == "transformer"
    info = next(plugin for plugin in manager.plugins if plugin.name == "transformer")
    assert info.distribution == "esper-transformer"
    assert info.module == "esper_transformer.plugin"
    assert info.registered == {
        "hosts": ("transformer",),
        "surfaces": ("post_attn", "post_mlp"),
        "seed_families": FAMILY_NAMES,
    }


def test_every_slot_surface_is_registered_for_this_host(manager: PluginManager) -> None:
    for layout in ("segments", "layers", "lattice"):
        host = build_transformer_host(TransformerHostConfig(slot_layout=layout), TOKENS)
        for spec in host.injection_specs():
            surface = manager.registry.get("surfaces", spec.surface)
            assert not surface.host_families or "transformer" in surface.host_families


def tiny_lattice_host() -> TransformerHost:
    torch.manual_seed(0)
    return build_transformer_host(
        TransformerHostConfig(n_layer=2, d_model=32, n_head=4, slot_layout="lattice"), TOKENS
    )


def model_with_seeds(family: str, slots: list[int], manager: PluginManager) -> MorphogeneticModel:
    """A tiny lattice host (4 slots) with a ``family`` seed germinated in each of ``slots`` (ADD, fast blend)."""
    host = tiny_lattice_host()

    def build_seed(name: str, channels: int) -> torch.nn.Module:
        family = manager.lookup("seed_families", name)
        return family.build(channels, "sequence", family.config_class())

    model = MorphogeneticModel(
        host,
        SlotConfig.from_specs(host.injection_specs()),
        topology=manager.registry.topology("sequence"),
        seed_families=[family],
        build_seed=build_seed,
        settings=LifecycleSettings(embargo_epochs=0, min_training_epochs=1),
        max_seeds=len(slots),
    )
    for slot in slots:
        result = model.apply(
            FactoredAction(op=LifecycleOp.GERMINATE, slot=slot, blueprint=0, tempo=Tempo.FAST, alpha_target=AlphaTarget.FULL),
            score_now=0.0,
        )
        assert result.success, result.reason
    return model


def random_tokens(batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    x = torch.randint(0, VOCAB, (batch, 12), generator=generator)
    return x, torch.randint(0, VOCAB, (batch, 12), generator=generator)


def adam_losses(model: torch.nn.Module, parameters: list[torch.nn.Parameter], steps: int) -> list[float]:
    x, y = random_tokens()
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_lattice_slot_ids_in_the_model(manager: PluginManager) -> None:
    model = model_with_seeds("lora", [], manager)
    assert model.slot_ids == ("r0c1", "r0c2", "r1c1", "r1c2")
    assert model.slot_config.surface_map == {"r0c1": "post_attn", "r0c2": "post_mlp", "r1c1": "post_attn", "r1c2": "post_mlp"}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_newborn_seeds_in_every_lattice_slot_leave_the_output_unchanged(family: str, manager: PluginManager) -> None:
    model = model_with_seeds(family, [0, 1, 2, 3], manager).eval()
    x, _ = random_tokens(4)
    assert all(model.slots[slot_id].stage is SeedStage.GERMINATED for slot_id in model.slot_ids)
    with torch.no_grad():
        assert torch.allclose(model(x), model.host(x), atol=1e-6)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_seed_in_a_lattice_slot_trains_in_incubation_and_after_blending(family: str, manager: PluginManager) -> None:
    model = model_with_seeds(family, [2], manager).train()  # r1c1: post-attention of layer 1
    slot = model.slots["r1c1"]
    model.tick()
    assert slot.stage is SeedStage.TRAINING

    # Incubation: host and seed train together; the seed learns from the host's gradient.
    seed_before = [p.detach().clone() for p in slot.seed_parameters()]
    losses = adam_losses(model, list(model.parameters()), steps=8)
    assert losses[-1] < losses[0]
    assert any(not torch.equal(before, after) for before, after in zip(seed_before, slot.seed_parameters()))

    # Blend to alpha 1, then train the seed alone: the loss falls through the seed's own capacity.
    model.tick()
    assert model.apply(FactoredAction(op=LifecycleOp.ADVANCE, slot=2), score_now=0.0).success
    for _ in range(100):  # a blend lasts a few epochs; fail rather than loop forever
        if not (slot.stage is SeedStage.BLENDING):
            break
        model.tick()
    else:
        raise AssertionError("the blend never ended")
    assert slot.stage is SeedStage.HOLDING and slot.alpha == 1.0
    for parameter in model.host.parameters():
        parameter.requires_grad_(False)
    losses = adam_losses(model, slot.seed_parameters(), steps=8)
    assert losses[-1] < losses[0]


def test_counterfactual_ablation_through_lattice_slots(manager: PluginManager) -> None:
    model = model_with_seeds("mlp_small", [1, 2], manager)
    generator = torch.Generator().manual_seed(2)
    model.tick()
    with torch.no_grad():  # move the seeds away from the identity so that ablating one matters
        for slot_id in ("r0c2", "r1c1"):
            for parameter in model.slots[slot_id].seed_parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    model.tick()
    for index in (1, 2):
        assert model.apply(FactoredAction(op=LifecycleOp.ADVANCE, slot=index), score_now=0.0).success
    for _ in range(100):  # a blend lasts a few epochs; fail rather than loop forever
        if not (any(model.slots[s].stage is SeedStage.BLENDING for s in ("r0c2", "r1c1"))):
            break
        model.tick()
    else:
        raise AssertionError("the blend never ended")
    model.eval()
    x, _ = random_tokens(3)
    with torch.no_grad():
        variants = model.forward_with_ablations(x, ["r0c2", "r1c1"])
        assert variants.shape == (3, 3, 12, VOCAB)
        assert torch.allclose(variants[0], model(x), atol=1e-6)
        host, seed = model.host, model.slots["r1c1"]
        without_r0c2 = host.forward_to("r1c1", host.forward_to("r0c2", x), from_slot="r0c2")
        assert torch.allclose(variants[1], host.forward_from("r1c1", seed(without_r0c2)), atol=1e-5)
        assert not torch.allclose(variants[1], variants[0], atol=1e-4)
