"""Tests that a channels_last `cnn` host keeps that memory format at every slot and through every image seed family."""

from __future__ import annotations

import pytest
import torch

from esper_core.kasmina import LifecycleSettings, MorphogeneticModel
from esper_core.leyline import AlphaTarget, BlendStyle, FactoredAction, LifecycleOp, SeedStage, SlotConfig, Tempo
from esper_core.plugins import PluginManager
from esper_core.testing import registered_records, task_info

from esper_cnn import plugin
from esper_cnn.host import SLOT_LAYOUTS, CNNHost, CNNHostConfig, build_cnn_host

CHANNELS_LAST = torch.channels_last

#: Every image seed family the cnn plugin registers (new families join automatically).
IMAGE_FAMILIES = sorted(
    name for name, family in registered_records(plugin, "seed_families").items() if "image" in family.topologies
)

#: A small host whose lattice has both surfaces and an unpooled block: r0c3, r0c4, r1c3 (segments: r0c0, r0c1).
SMALL = {"channels": (8, 16), "pool": (True, False)}
SMALL_INPUT = (3, 8, 8)


def host_for(memory_format: str, seed: int = 0, input_shape: tuple[int, ...] = (3, 32, 32), **options: object) -> CNNHost:
    torch.manual_seed(seed)
    return build_cnn_host(CNNHostConfig(memory_format=memory_format, **options), task_info(input_shape=input_shape))


def is_channels_last(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous(memory_format=CHANNELS_LAST)


def test_every_image_seed_family_is_covered() -> None:
    assert {"norm", "attention", "depthwise", "conv_light", "conv_ladder"} <= set(IMAGE_FAMILIES)


# -- the bare host -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", SLOT_LAYOUTS)
@pytest.mark.parametrize("preset", ["cifar_baseline", "cifar_scale"])
def test_bare_host_computes_the_contiguous_hosts_function(preset: str, layout: str) -> None:
    fast = host_for("channels_last", seed=3, preset=preset, slot_layout=layout).eval()
    plain = host_for("contiguous", seed=3, preset=preset, slot_layout=layout).eval()
    reference = plain.state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in fast.state_dict().items())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), atol=1e-5)
        previous, h = None, x
        for spec in fast.injection_specs():
            h = fast.forward_to(spec.slot_id, h, from_slot=previous)
            assert is_channels_last(h), spec.slot_id
            assert not is_channels_last(plain.forward_to(spec.slot_id, x)), spec.slot_id
            previous = spec.slot_id
        assert torch.allclose(fast.forward_from(previous, h), plain(x), atol=1e-5)


def test_conv_weights_are_converted_once_at_build() -> None:
    host = host_for("channels_last", preset="cifar_scale", convs_per_block=2)
    convs = [module for module in host.modules() if isinstance(module, torch.nn.Conv2d)]
    assert len(convs) == 10 and all(is_channels_last(conv.weight) for conv in convs)
    plain = host_for("contiguous", preset="cifar_scale")
    assert not any(is_channels_last(m.weight) for m in plain.modules() if isinstance(m, torch.nn.Conv2d))


def test_input_is_converted_at_entry_only() -> None:
    host = host_for("channels_last", input_shape=SMALL_INPUT, slot_layout="lattice", **SMALL).eval()
    x = torch.randn(2, *SMALL_INPUT)
    converted = x.contiguous(memory_format=CHANNELS_LAST)
    assert host.enter(converted) is converted  # already in format: no copy
    assert is_channels_last(host.enter(x)) and not is_channels_last(x)
    with torch.no_grad():
        assert is_channels_last(host.forward_to("r0c3", x))
        # From a slot, the activation is taken as given: nothing is converted on the way between slots.
        given = host.forward_to("r0c3", x).contiguous()
        assert not is_channels_last(host.forward_to("r0c4", given, from_slot="r0c3"))


# -- through a MorphogeneticModel, every seed family, every slot ---------------------------------------


def planted_everywhere(family: str, layout: str, manager: PluginManager) -> MorphogeneticModel:
    """A small channels_last host with a ``family`` seed germinated (GATE blend) in every slot."""
    torch.manual_seed(0)
    host = build_cnn_host(
        CNNHostConfig(slot_layout=layout, memory_format="channels_last", **SMALL), task_info(input_shape=SMALL_INPUT)
    )

    def build_seed(name: str, channels: int) -> torch.nn.Module:
        record = manager.lookup("seed_families", name)
        return record.build(channels, "image", record.config_class())

    slot_config = SlotConfig.from_specs(host.injection_specs())
    model = MorphogeneticModel(
        host, slot_config, topology=manager.registry.topology("image"), seed_families=[family],
        build_seed=build_seed, settings=LifecycleSettings(embargo_epochs=0, min_training_epochs=1),
        max_seeds=slot_config.num_slots,
    )
    for index in range(slot_config.num_slots):
        action = FactoredAction(
            op=LifecycleOp.GERMINATE, slot=index, blueprint=0, tempo=Tempo.FAST,
            alpha_target=AlphaTarget.FULL, style=BlendStyle.GATE,
        )
        result = model.apply(action, score_now=0.0)
        assert result.success, result.reason
    return model


@pytest.mark.parametrize("layout", SLOT_LAYOUTS)
@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_every_slot_and_seed_keeps_channels_last(family: str, layout: str) -> None:
    model = planted_everywhere(family, layout, PluginManager())
    broken: list[str] = []
    calls: dict[str, int] = {}

    def watch(where: str):
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            calls[where] = calls.get(where, 0) + 1
            if not is_channels_last(inputs[0]):
                broken.append(f"{where} input")
            if not is_channels_last(output):
                broken.append(f"{where} output")
        return hook

    for slot_id, slot in model.slots.items():
        slot.register_forward_hook(watch(f"slot {slot_id}"))  # the activation entering and leaving the slot
        slot.seed.register_forward_hook(watch(f"seed {slot_id}"))  # what the seed sees and returns
    x = torch.randn(4, *SMALL_INPUT)

    model.train()
    model(x).sum().backward()  # incubation (GERMINATED): the seed runs on a detached activation
    model.tick()
    for index in range(len(model.slot_ids)):
        assert model.apply(FactoredAction(op=LifecycleOp.ADVANCE, slot=index), score_now=0.0).success
    model.tick()
    assert {slot.stage for slot in model.slots.values()} == {SeedStage.BLENDING}
    model(x).sum().backward()  # blended through the learned gate
    model.eval()
    with torch.no_grad():
        variants = model.forward_with_ablations(x, model.ablatable_slots())
    assert variants.shape[0] == 1 + len(model.slot_ids)

    assert broken == []
    assert set(calls) == {f"{kind} {slot_id}" for slot_id in model.slot_ids for kind in ("slot", "seed")}
    assert min(calls.values()) == 3
