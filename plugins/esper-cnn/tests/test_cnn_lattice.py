"""Tests for the `cnn` host's slot layouts: the pre/post-pool lattice (roadmap A2) beside the segment layout."""

from __future__ import annotations

import itertools

import pytest
import torch

from esper_core.config import structure_section
from esper_core.kasmina import LifecycleSettings, MorphogeneticModel
from esper_core.leyline import AlphaTarget, FactoredAction, LifecycleOp, SeedStage, SlotConfig, Tempo
from esper_core.plugins import PluginManager
from esper_core.testing import check_host_family, registered_records, task_info

from esper_cnn import plugin
from esper_cnn.host import POST_POOL, PRE_POOL, PRESETS, SLOT_LAYOUTS, SURFACE_CODES, CNNHost, CNNHostConfig, build_cnn_host

CNN = registered_records(plugin, "hosts")["cnn"]
CIFAR = task_info(input_shape=(3, 32, 32))


def host_for(seed: int = 0, input_shape: tuple[int, ...] = (3, 32, 32), **options: object) -> CNNHost:
    torch.manual_seed(seed)
    return build_cnn_host(CNNHostConfig(**options), task_info(input_shape=input_shape))


def routed(host: CNNHost, x: torch.Tensor, slot_ids: list[str]) -> torch.Tensor:
    h, previous = x, None
    for slot_id in slot_ids:
        h = host.forward_to(slot_id, h, from_slot=previous)
        assert tuple(h.shape[-2:]) == host.slot_resolution(slot_id), slot_id
        previous = slot_id
    return host.forward_from(previous, h)


# -- conformance and routing ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_lattice_conforms_for_every_preset(preset: str) -> None:
    info = task_info(input_shape=(1, 8, 8)) if preset == "tiny" else CIFAR
    check_host_family(CNN, info, config=CNNHostConfig(preset=preset, slot_layout="lattice"))


def test_lattice_conforms_with_overrides_and_a_single_unpooled_block() -> None:
    config = CNNHostConfig(channels=(8, 12, 16), pool=(False, True, False), convs_per_block=2, slot_layout="lattice")
    check_host_family(CNN, task_info(input_shape=(3, 8, 8)), config=config)
    single = CNNHostConfig(channels=(8,), pool=(False,), slot_layout="lattice")
    check_host_family(CNN, task_info(input_shape=(3, 4, 4)), config=single)
    specs = host_for(input_shape=(3, 4, 4), channels=(8,), pool=(False,), slot_layout="lattice").injection_specs()
    assert [(spec.slot_id, spec.surface, spec.position) for spec in specs] == [("r0c3", PRE_POOL, 0.0)]


@pytest.mark.parametrize(("preset", "layout"), list(itertools.product(["cifar_baseline", "cifar_scale"], SLOT_LAYOUTS)))
def test_routing_through_every_subset_shape_equals_forward(preset: str, layout: str) -> None:
    host = host_for(preset=preset, slot_layout=layout).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = [spec.slot_id for spec in host.injection_specs()]
    subsets = [ids, ids[::2], ids[1::2], ids[::-1][::3][::-1]] + [[slot_id] for slot_id in ids]
    subsets += [sorted(pair, key=ids.index) for pair in itertools.combinations(ids, 2)][:20]
    generator = torch.Generator().manual_seed(3)
    for _ in range(8):
        mask = torch.rand(len(ids), generator=generator) < 0.5
        chosen = [slot_id for slot_id, keep in zip(ids, mask.tolist()) if keep]
        if chosen:
            subsets.append(chosen)
    with torch.no_grad():
        reference = host(x)
        for subset in subsets:
            assert torch.equal(routed(host, x, subset), reference), subset


# -- specs ---------------------------------------------------------------------------------------------


def test_cifar_baseline_lattice_specs() -> None:
    host = host_for(preset="cifar_baseline", slot_layout="lattice")
    specs = host.injection_specs()
    assert [spec.slot_id for spec in specs] == ["r0c3", "r0c4", "r1c3", "r1c4", "r2c3", "r2c4"]
    assert [spec.surface for spec in specs] == [PRE_POOL, POST_POOL] * 3
    assert [spec.order for spec in specs] == list(range(6))
    assert [spec.host_block for spec in specs] == [0, 0, 1, 1, 2, 2]
    assert [spec.channels for spec in specs] == [32, 32, 64, 64, 128, 128]
    assert [spec.position for spec in specs] == [order / 5 for order in range(6)]
    assert [host.slot_resolution(spec.slot_id) for spec in specs] == [
        (32, 32), (16, 16), (16, 16), (8, 8), (8, 8), (4, 4)
    ]
    assert [host.slot_downsampling(spec.slot_id) for spec in specs] == [1, 2, 2, 4, 4, 8]
    assert [spec.resolution for spec in specs] == [(32, 32), (16, 16), (16, 16), (8, 8), (8, 8), (4, 4)]


def test_cifar_scale_lattice_has_post_pool_slots_only_where_a_block_pools() -> None:
    host = host_for(preset="cifar_scale", slot_layout="lattice")
    specs = host.injection_specs()
    assert [spec.slot_id for spec in specs] == ["r0c3", "r0c4", "r1c3", "r2c3", "r2c4", "r3c3", "r4c3", "r4c4"]
    assert [spec.host_block for spec in specs] == [0, 0, 1, 2, 2, 3, 4, 4]
    assert [spec.channels for spec in specs] == [32, 32, 48, 64, 64, 96, 128, 128]
    assert [host.slot_resolution(spec.slot_id)[0] for spec in specs] == [32, 16, 16, 16, 8, 8, 8, 4]
    assert [spec.order for spec in specs] == list(range(8))


def test_slot_ids_name_block_and_registered_surface_code() -> None:
    manager = PluginManager()
    for spec in host_for(preset="cifar_scale", slot_layout="lattice").injection_specs():
        code = manager.registry.get("surfaces", spec.surface).code
        assert code == SURFACE_CODES[spec.surface]
        assert spec.slot_id == f"r{spec.host_block}c{code}"


def test_slot_config_orders_lattice_specs_by_order() -> None:
    specs = host_for(preset="cifar_baseline", slot_layout="lattice").injection_specs()
    config = SlotConfig.from_specs(list(reversed(specs)), enabled=["r2c4", "r0c3", "r1c4"])
    assert config.slot_ids == ("r0c3", "r1c4", "r2c4")
    assert config.host_order_span == (0, 5)


def test_segment_layout_keeps_its_ids_and_states_resolutions() -> None:
    host = host_for(preset="cifar_scale")
    assert host.slot_layout == "segments"
    assert [spec.slot_id for spec in host.injection_specs()] == [f"r0c{index}" for index in range(5)]
    assert [host.slot_resolution(f"r0c{index}") for index in range(5)] == [(16, 16), (16, 16), (8, 8), (8, 8), (4, 4)]


def test_odd_sizes_floor_at_each_pool() -> None:
    host = host_for(input_shape=(3, 9, 7), channels=(4, 4), pool=(True, True), slot_layout="lattice").eval()
    x = torch.randn(1, 3, 9, 7)
    with torch.no_grad():
        for spec in host.injection_specs():
            assert tuple(host.forward_to(spec.slot_id, x).shape[-2:]) == host.slot_resolution(spec.slot_id)
            assert spec.resolution == host.slot_resolution(spec.slot_id)
    assert host.slot_resolution("r1c4") == (2, 1)


def test_resolution_needs_the_input_size() -> None:
    host = CNNHost(in_channels=3, channels=(8,), pool=(True,), convs_per_block=1, num_classes=10, slot_layout="lattice")
    assert host.slot_downsampling("r0c4") == 2
    assert [spec.resolution for spec in host.injection_specs()] == [None, None]  # not stated, never a zero
    with pytest.raises(ValueError, match="needs the input size"):
        host.slot_resolution("r0c4")


# -- where the cuts are ------------------------------------------------------------------------------


def test_pre_pool_is_the_body_output_and_post_pool_the_pooled_one() -> None:
    host = host_for(preset="cifar_baseline", slot_layout="lattice").eval()
    segments = host_for(preset="cifar_baseline").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        body = host.blocks[0].body(x)
        assert torch.equal(host.forward_to("r0c3", x), body)
        assert torch.equal(host.forward_to("r0c4", x), host.blocks[0].pool(body))
        assert torch.equal(host.forward_to("r0c4", body, from_slot="r0c3"), host.blocks[0].pool(body))
        assert torch.equal(host.forward_to("r1c4", x), segments.forward_to("r0c1", x))
        assert torch.equal(host.forward_from("r2c3", host.forward_to("r2c3", x)), segments(x))


def test_same_weights_and_function_under_every_layout() -> None:
    hosts = [host_for(seed=5, preset="cifar_scale", slot_layout=layout).eval() for layout in SLOT_LAYOUTS]
    reference = hosts[0].state_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = hosts[0](x)
        for host in hosts[1:]:
            state = host.state_dict()
            assert list(state) == list(reference)
            assert all(torch.equal(state[name], reference[name]) for name in reference)
            assert torch.equal(host(x), out)


def test_routing_rejects_unknown_and_backward_slots() -> None:
    host = host_for(preset="cifar_baseline", slot_layout="lattice")
    x = torch.randn(1, 3, 32, 32)
    known = "r0c3, r0c4, r1c3, r1c4, r2c3, r2c4"
    with pytest.raises(KeyError, match=f"lattice layout\\) has no slot 'r0c0'; its slots are {known}"):
        host.forward_to("r0c0", x)  # a segment id is not a lattice id
    with pytest.raises(KeyError, match="no slot 'r9c9'"):
        host.forward_from("r9c9", x)
    with pytest.raises(KeyError, match="no slot 'r9c9'"):
        host.forward_to("r2c4", x, from_slot="r9c9")
    with pytest.raises(KeyError, match="no slot 'r9c9'"):
        host.slot_resolution("r9c9")
    h = host.forward_to("r0c4", x)
    with pytest.raises(ValueError, match="from_slot must come before slot_id"):
        host.forward_to("r0c3", h, from_slot="r0c4")
    with pytest.raises(ValueError, match="from_slot must come before slot_id"):
        host.forward_to("r0c4", h, from_slot="r0c4")


def test_lattice_routing_carries_gradient_to_every_block() -> None:
    host = host_for(input_shape=(1, 8, 8), preset="tiny", slot_layout="lattice")
    x = torch.randn(4, 1, 8, 8)
    h, previous = x, None
    for slot_id in ("r0c3", "r1c3"):
        h = host.forward_to(slot_id, h, from_slot=previous)
        previous = slot_id
    host.forward_from(previous, h).sum().backward()
    for name, parameter in host.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# -- seeds in lattice slots ----------------------------------------------------------------------------


def test_seeds_in_every_lattice_slot_see_their_slot_resolution() -> None:
    manager = PluginManager()
    torch.manual_seed(0)
    host = build_cnn_host(CNNHostConfig(preset="tiny", slot_layout="lattice"), task_info(input_shape=(1, 8, 8)))

    def build_seed(name: str, channels: int) -> torch.nn.Module:
        family = manager.lookup("seed_families", name)
        return family.build(channels, "image", family.config_class())

    slot_config = SlotConfig.from_specs(host.injection_specs())
    model = MorphogeneticModel(
        host, slot_config, topology=manager.registry.topology("image"), seed_families=["conv_light"],
        build_seed=build_seed, settings=LifecycleSettings(embargo_epochs=0, min_training_epochs=1),
        max_seeds=slot_config.num_slots,
    ).eval()
    for index in range(slot_config.num_slots):
        action = FactoredAction(op=LifecycleOp.GERMINATE, slot=index, blueprint=0, tempo=Tempo.FAST, alpha_target=AlphaTarget.FULL)
        assert model.apply(action, score_now=0.0).success
    seen: dict[str, tuple[int, ...]] = {}
    for slot_id, slot in model.slots.items():
        assert slot.stage is SeedStage.GERMINATED
        slot.seed.register_forward_hook(lambda _m, inputs, _o, slot_id=slot_id: seen.__setitem__(slot_id, tuple(inputs[0].shape)))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), host(x), atol=1e-6)  # newborn seeds leave the output unchanged
    assert seen == {
        spec.slot_id: (3, spec.channels, *host.slot_resolution(spec.slot_id)) for spec in host.injection_specs()
    }
    assert seen["r0c3"] == (3, 16, 8, 8) and seen["r0c4"] == (3, 16, 4, 4)


# -- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"slot_layout": "grid"}, {"slot_layout": "Lattice"}, {"memory_format": "nhwc"}, {"memory_format": True}])
def test_layout_and_memory_format_are_validated(options: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        CNNHostConfig(**options)


def test_toml_section_structures_and_names_a_bad_layout() -> None:
    config, problems = structure_section({"preset": "tiny", "slot_layout": "lattice", "memory_format": "channels_last"}, CNNHostConfig, "host")
    assert problems == [] and config.slot_layout == "lattice" and config.memory_format == "channels_last"
    _, problems = structure_section({"slot_layout": "grid"}, CNNHostConfig, "host")
    assert len(problems) == 1 and problems[0].startswith("[host] slot_layout") and "segments, lattice" in problems[0]


def test_host_constructor_rejects_unknown_layout_and_format() -> None:
    common = {"in_channels": 3, "channels": (8,), "pool": (True,), "convs_per_block": 1, "num_classes": 10}
    with pytest.raises(ValueError, match="unknown slot_layout 'grid'; choose one of segments, lattice"):
        CNNHost(**common, slot_layout="grid")
    with pytest.raises(ValueError, match="unknown memory_format 'nhwc'; choose one of contiguous, channels_last"):
        CNNHost(**common, memory_format="nhwc")
