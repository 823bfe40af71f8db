"""Tests for the esper-transformer seed families: conformance, identity, causality, options and parameter ordering."""

from __future__ import annotations

import attrs
import pytest
import torch

from esper_core.kasmina import count_parameters
from esper_core.testing import check_seed_family, registered_records

from esper_transformer import plugin, seeds

FAMILY_NAMES = ("layer_norm", "lora", "lora_large", "causal_attention", "head_group_attention", "mlp_small", "mlp")


FAMILIES = registered_records(plugin, "seed_families")


def build(name: str, channels: int, **options: object) -> torch.nn.Module:
    family = FAMILIES[name]
    return family.build(channels, "sequence", attrs.evolve(family.config_class(), **options))


def perturb(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return module


def test_plugin_registers_exactly_the_seven_families() -> None:
    assert sorted(FAMILIES) == sorted(FAMILY_NAMES)
    assert all(family.topologies == ("sequence",) for family in FAMILIES.values())
    assert all(family.ladder is None for family in FAMILIES.values())


@pytest.mark.parametrize("channels", [16, 128])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_seed_family_conforms(name: str, channels: int) -> None:
    check_seed_family(FAMILIES[name], channels=channels)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_seed_is_exactly_identity_at_birth_for_any_length(name: str) -> None:
    torch.manual_seed(3)
    seed = build(name, 16)
    for mode in (True, False):
        seed.train(mode)
        for time in (1, 5, 33):
            x = torch.randn(3, time, 16)
            assert torch.equal(seed(x), x)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_zero_initialised_last_layer_gets_gradient_at_birth(name: str) -> None:
    torch.manual_seed(0)
    seed = build(name, 16).train()
    last = [p for p in seed.parameters() if p.requires_grad][-1]
    assert torch.count_nonzero(last) == 0
    x = torch.randn(4, 6, 16)
    ((seed(x) - torch.randn_like(x)) ** 2).mean().backward()
    assert last.grad is not None and last.grad.abs().sum() > 0


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_seeds_are_causal_and_batch_independent(name: str) -> None:
    seed = perturb(build(name, 16)).eval()
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        base = seed(x)
        assert not torch.allclose(base, x)  # the branch now contributes
        for t in range(6):
            changed = x.clone()
            changed[:, t + 1] += 1.0
            assert torch.allclose(seed(changed)[:, : t + 1], base[:, : t + 1], atol=1e-6), t
        single = torch.cat([seed(x[i : i + 1]) for i in range(3)])
        assert torch.allclose(single, base, atol=1e-6)


def test_attention_seed_mixes_earlier_positions() -> None:
    seed = perturb(build("causal_attention", 16)).eval()
    x = torch.randn(2, 5, 16)
    changed = x.clone()
    changed[:, 1] += 1.0
    with torch.no_grad():
        delta = (seed(changed) - seed(x)).abs().amax(dim=(0, 2))
    assert delta[0] == 0 and bool((delta[2:] > 0).all())  # later positions see position 1


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_seed_rejects_image_topology(name: str) -> None:
    family = FAMILIES[name]
    with pytest.raises(ValueError, match="topology 'sequence'"):
        family.build(16, "image", family.config_class())


@pytest.mark.parametrize("channels", [1, 2, 8, 16, 64, 128, 256])
def test_parameter_counts_are_ordered(channels: int) -> None:
    assert count_parameters(build("lora", channels)) < count_parameters(build("lora_large", channels))
    assert count_parameters(build("mlp_small", channels)) < count_parameters(build("mlp", channels))


def test_parameter_counts_at_d_model_128() -> None:
    counts = {name: count_parameters(build(name, 128)) for name in FAMILY_NAMES}
    assert counts == {
        "layer_norm": 256,
        "lora": 2048,
        "lora_large": 8192,
        "causal_attention": 66_304,
        "head_group_attention": 66_176,  # causal_attention without the output-projection bias
        "mlp_small": 16_832,
        "mlp": 131_968,
    }


def test_lora_options_set_rank_and_scale() -> None:
    seed = build("lora", 16, rank=4, alpha=2.0)
    assert seed.down.weight.shape == (4, 16) and seed.up.weight.shape == (16, 4)
    assert seed.scale == 0.5
    assert build("lora_large", 16).down.weight.shape == (32, 16) and build("lora_large", 16).scale == 1.0
    perturb(seed)
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        assert torch.allclose(seed(x), x + 0.5 * (x @ seed.down.weight.T @ seed.up.weight.T), atol=1e-6)


def test_attention_heads_must_divide_channels() -> None:
    assert build("causal_attention", 24, n_head=3).n_head == 3
    with pytest.raises(ValueError, match="n_head 4 does not divide the slot's 6 channels.*1, 2, 3, 6"):
        build("causal_attention", 6)


def test_seed_configs_validate_ranges() -> None:
    with pytest.raises(ValueError):
        seeds.LoraSeedConfig(rank=0)
    with pytest.raises(ValueError):
        seeds.LoraLargeSeedConfig(alpha=0.0)
    with pytest.raises(ValueError):
        seeds.AttentionSeedConfig(n_head=0)


def test_seed_rejects_zero_channels() -> None:
    with pytest.raises(ValueError, match="at least one channel"):
        build("mlp", 0)


def test_seeds_build_deterministically() -> None:
    for name in FAMILY_NAMES:
        torch.manual_seed(4)
        first = build(name, 16)
        torch.manual_seed(4)
        second = build(name, 16)
        assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values())), name
