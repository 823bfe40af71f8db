"""Tests for the `cnn` host family: conformance per preset, slot specs, routing and config errors."""

from __future__ import annotations

import attrs
import pytest
import torch

from esper_core.errors import ConfigError
from esper_core.leyline import SEGMENT_BOUNDARY
from esper_core.tasks import TaskInfo
from esper_core.testing import check_host_family, registered_records, task_info

from esper_cnn import plugin
from esper_cnn.host import PRESETS, CNNHost, CNNHostConfig, build_cnn_host


HOSTS = registered_records(plugin, "hosts")
CNN = HOSTS["cnn"]


def host_for(input_shape: tuple[int, ...] = (3, 32, 32), **options: object) -> CNNHost:
    return build_cnn_host(CNNHostConfig(**options), task_info(input_shape=input_shape))


def test_plugin_registers_exactly_the_cnn_host() -> None:
    assert list(HOSTS) == ["cnn"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_host_conforms_on_cifar_shapes(preset: str) -> None:
    check_host_family(CNN, task_info(), config=CNNHostConfig(preset=preset))


def test_tiny_host_conforms_on_8x8_digits() -> None:
    check_host_family(CNN, task_info(input_shape=(1, 8, 8)), config=CNNHostConfig(preset="tiny"))


def test_host_conforms_with_overrides_and_deeper_blocks() -> None:
    config = CNNHostConfig(channels=(8, 12, 16, 24), pool=(False, True, False, True), convs_per_block=2)
    check_host_family(CNN, task_info(input_shape=(3, 16, 16)), config=config)


def test_single_block_host_conforms() -> None:
    config = CNNHostConfig(channels=(8,), pool=(False,))
    check_host_family(CNN, task_info(input_shape=(3, 4, 4)), config=config)
    assert host_for((3, 4, 4), channels=(8,), pool=(False,)).injection_specs()[0].position == 0.0


@pytest.mark.parametrize(("preset", "slots"), [("cifar_baseline", 3), ("cifar_scale", 5), ("tiny", 2)])
def test_preset_slot_counts(preset: str, slots: int) -> None:
    assert len(host_for(preset=preset).injection_specs()) == slots


def test_specs_follow_block_order() -> None:
    specs = host_for(preset="cifar_scale").injection_specs()
    assert [spec.slot_id for spec in specs] == ["r0c0", "r0c1", "r0c2", "r0c3", "r0c4"]
    assert [spec.order for spec in specs] == [0, 1, 2, 3, 4]
    assert [spec.host_block for spec in specs] == [0, 1, 2, 3, 4]
    assert [spec.channels for spec in specs] == list(PRESETS["cifar_scale"].channels)
    assert [spec.position for spec in specs] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert {spec.surface for spec in specs} == {SEGMENT_BOUNDARY}


def test_defaults_are_the_segment_layout_in_contiguous_memory() -> None:
    config = CNNHostConfig()
    assert (config.slot_layout, config.memory_format) == ("segments", "contiguous")
    host = host_for(preset="tiny")
    assert (host.slot_layout, host.memory_format) == ("segments", "contiguous")
    x = torch.randn(2, 3, 32, 32)
    assert host.enter(x) is x  # the default host converts nothing
    assert [host.slot_resolution(spec.slot_id) for spec in host.injection_specs()] == [(16, 16), (8, 8)]


def test_channel_override_sets_spec_channels() -> None:
    specs = host_for(channels=(8, 24), pool=(True, False)).injection_specs()
    assert [spec.channels for spec in specs] == [8, 24]


def test_activation_resolution_follows_pool_flags() -> None:
    host = host_for(preset="cifar_scale").eval()
    x = torch.randn(2, 3, 32, 32)
    sizes = []
    with torch.no_grad():
        h, previous = x, None
        for spec in host.injection_specs():
            h = host.forward_to(spec.slot_id, h, from_slot=previous)
            sizes.append(h.shape[-1])
            previous = spec.slot_id
    assert sizes == [16, 16, 8, 8, 4]
    assert host(x).shape == (2, 10)


def test_convs_per_block_stacks_convs() -> None:
    one = host_for(preset="tiny", convs_per_block=1)
    three = host_for(preset="tiny", convs_per_block=3)
    assert sum(isinstance(module, torch.nn.Conv2d) for module in one.modules()) == 2
    assert sum(isinstance(module, torch.nn.Conv2d) for module in three.modules()) == 6


def test_build_is_deterministic_under_a_fixed_seed() -> None:
    torch.manual_seed(11)
    first = host_for(preset="cifar_baseline")
    torch.manual_seed(11)
    second = host_for(preset="cifar_baseline")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_routing_rejects_unknown_and_backward_slots() -> None:
    host = host_for(preset="cifar_baseline")
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(KeyError, match="r0c0, r0c1, r0c2"):
        host.forward_to("r1c0", x)
    with pytest.raises(KeyError, match="no slot 'r0c9'"):
        host.forward_from("r0c9", x)
    h = host.forward_to("r0c1", x)
    with pytest.raises(ValueError, match="from_slot must come before slot_id"):
        host.forward_to("r0c0", h, from_slot="r0c1")
    with pytest.raises(ValueError, match="from_slot must come before slot_id"):
        host.forward_to("r0c1", h, from_slot="r0c1")


def test_routing_carries_gradient_to_every_block() -> None:
    host = host_for((1, 8, 8), preset="tiny")
    x = torch.randn(4, 1, 8, 8)
    h = host.forward_to("r0c0", x)
    h = host.forward_to("r0c1", h, from_slot="r0c0")
    host.forward_from("r0c1", h).sum().backward()
    for block in host.blocks:
        assert block.body[0].weight.grad is not None and block.body[0].weight.grad.abs().sum() > 0


# -- configuration errors ------------------------------------------------------------------------------


def config_error(config: CNNHostConfig, info: TaskInfo) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build_cnn_host(config, info)
    assert all(problem.startswith("[host]") for problem in caught.value.problems)
    return caught.value


def test_channels_and_pool_of_different_lengths() -> None:
    error = config_error(CNNHostConfig(channels=(8, 16), pool=(True, True, True)), task_info())
    assert "channels has 2 entries" in str(error) and "pool has 3" in str(error)


def test_channels_override_without_pool_names_the_preset() -> None:
    error = config_error(CNNHostConfig(preset="cifar_baseline", channels=(8, 16)), task_info())
    assert "from preset 'cifar_baseline'" in str(error)


def test_pooling_below_one_pixel() -> None:
    error = config_error(CNNHostConfig(preset="cifar_baseline"), task_info(input_shape=(1, 4, 4)))
    assert "block 2" in str(error) and "below 1x1" in str(error)


def test_tiny_fits_8x8_but_cifar_scale_does_not_fit_2x2() -> None:
    build_cnn_host(CNNHostConfig(preset="tiny"), task_info(input_shape=(1, 8, 8)))
    build_cnn_host(CNNHostConfig(preset="tiny"), task_info(input_shape=(1, 4, 4)))
    config_error(CNNHostConfig(preset="cifar_scale"), task_info(input_shape=(1, 2, 2)))


def test_non_image_task_reports_every_problem() -> None:
    error = config_error(CNNHostConfig(), task_info(input_shape=(16, 32), topology="sequence"))
    assert len(error.problems) == 2
    assert "topology 'sequence'" in error.problems[0]
    assert "(C, H, W)" in error.problems[1]


@pytest.mark.parametrize(
    "options",
    [
        {"preset": "cifar_huge"},
        {"convs_per_block": 0},
        {"channels": (16, 0)},
        {"channels": ()},
        {"pool": ()},
        {"pool": (1, 0)},
        {"channels": (16.5,)},
    ],
)
def test_config_fields_are_validated(options: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        CNNHostConfig(**options)


def test_config_accepts_lists_from_toml() -> None:
    config = CNNHostConfig(channels=[8, 16], pool=[True, False])
    assert config.channels == (8, 16)
    assert config.pool == (True, False)
    assert attrs.evolve(config, convs_per_block=2).channels == (8, 16)
