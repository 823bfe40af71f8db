"""Tests for the `transformer` host family: conformance per layout, slot specs, routing, causality and config errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from esper_core.config import structure_section
from esper_core.errors import ConfigError
from esper_core.leyline import SEGMENT_BOUNDARY
from esper_core.tasks import TaskInfo
from esper_core.testing import check_host_family, registered_records, task_info

from esper_transformer import plugin
from esper_transformer.host import SLOT_LAYOUTS, TransformerHost, TransformerHostConfig, build_transformer_host

VOCAB = 11
CONTEXT = 8


HOSTS = registered_records(plugin, "hosts")
TRANSFORMER = HOSTS["transformer"]
#: A language task of ``CONTEXT`` tokens over ``VOCAB`` characters, scored on its loss.
TOKENS = task_info(topology="sequence", input_shape=(CONTEXT,), num_classes=VOCAB, score_basis="loss")


def test_plugin_registers_exactly_the_transformer_host() -> None:
    assert list(HOSTS) == ["transformer"]


def small(**options: object) -> TransformerHostConfig:
    """Six thin layers (slot counts of the defaults, a fraction of the compute)."""
    return TransformerHostConfig(**{"d_model": 16, "n_head": 2, **options})


def host_for(seed: int = 0, info: TaskInfo | None = None, **options: object) -> TransformerHost:
    torch.manual_seed(seed)
    return build_transformer_host(small(**options), info or TOKENS)


def tokens(batch: int = 3, time: int = CONTEXT, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, time), generator=torch.Generator().manual_seed(seed))


def routed(host: TransformerHost, x: torch.Tensor, slot_ids: list[str]) -> torch.Tensor:
    h, previous = x, None
    for slot_id in slot_ids:
        h = host.forward_to(slot_id, h, from_slot=previous)
        assert h.shape == (x.shape[0], x.shape[1], host.d_model)
        previous = slot_id
    return host.forward_from(previous, h)


# -- conformance and routing ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", SLOT_LAYOUTS)
def test_host_conforms_for_every_layout(layout: str) -> None:
    check_host_family(TRANSFORMER, TOKENS, config=small(slot_layout=layout))


def test_default_host_conforms() -> None:
    check_host_family(
        TRANSFORMER, task_info(topology="sequence", input_shape=(16,), num_classes=50, score_basis="loss")
    )


@pytest.mark.parametrize("options", [{"n_layer": 1, "num_segments": 1}, {"n_layer": 1, "slot_layout": "layers"}, {"n_layer": 4, "num_segments": 2}, {"n_layer": 1, "slot_layout": "lattice"}])
def test_other_depths_conform(options: dict[str, object]) -> None:
    check_host_family(TRANSFORMER, TOKENS, config=small(**options))


@pytest.mark.parametrize("layout", SLOT_LAYOUTS)
def test_routing_through_every_subset_shape_equals_forward(layout: str) -> None:
    host = host_for(slot_layout=layout).eval()
    x = tokens()
    ids = [spec.slot_id for spec in host.injection_specs()]
    subsets = [ids, ids[::2], ids[1::2], ids[::-1][::3][::-1]] + [[slot_id] for slot_id in ids]
    subsets += [sorted(pair, key=ids.index) for pair in itertools.combinations(ids, 2)][:20]
    generator = torch.Generator().manual_seed(3)
    for _ in range(10):
        mask = torch.rand(len(ids), generator=generator) < 0.5
        chosen = [slot_id for slot_id, keep in zip(ids, mask.tolist()) if keep]
        if chosen:
            subsets.append(chosen)
    with torch.no_grad():
        reference = host(x)
        assert reference.shape == (3, CONTEXT, VOCAB)
        for subset in subsets:
            assert torch.equal(routed(host, x, subset), reference), subset


@pytest.mark.parametrize(("layout", "count"), [("segments", 3), ("layers", 6), ("lattice", 12)])
def test_slot_counts_for_six_layers(layout: str, count: int) -> None:
    assert len(host_for(slot_layout=layout).injection_specs()) == count
    assert len(build_transformer_host(TransformerHostConfig(slot_layout=layout), TOKENS).injection_specs()) == count


def test_segment_specs() -> None:
    specs = host_for().injection_specs()
    assert [spec.slot_id for spec in specs] == ["r0c0", "r0c1", "r0c2"]
    assert [spec.order for spec in specs] == [0, 1, 2]
    assert [spec.host_block for spec in specs] == [0, 1, 2]
    assert [spec.host_layer for spec in specs] == [1, 3, 5]  # the last layer of each segment
    assert [spec.position for spec in specs] == [0.0, 0.5, 1.0]
    assert {spec.surface for spec in specs} == {SEGMENT_BOUNDARY}
    assert {spec.channels for spec in specs} == {16}
    two = host_for(num_segments=2).injection_specs()
    assert [(spec.slot_id, spec.host_layer) for spec in two] == [("r0c0", 2), ("r0c1", 5)]


def test_layer_specs() -> None:
    specs = host_for(slot_layout="layers").injection_specs()
    assert [spec.slot_id for spec in specs] == [f"r0c{i}" for i in range(6)]
    assert [spec.order for spec in specs] == list(range(6))
    assert [spec.host_block for spec in specs] == list(range(6))
    assert [spec.host_layer for spec in specs] == list(range(6))
    assert [spec.position for spec in specs] == [i / 5 for i in range(6)]
    assert {spec.surface for spec in specs} == {SEGMENT_BOUNDARY}


def test_lattice_specs() -> None:
    specs = host_for(slot_layout="lattice").injection_specs()
    assert [spec.slot_id for spec in specs] == [f"r{layer}c{code}" for layer in range(6) for code in (1, 2)]
    assert [spec.order for spec in specs] == list(range(12))
    assert [spec.surface for spec in specs] == ["post_attn", "post_mlp"] * 6
    assert [spec.host_layer for spec in specs] == [layer for layer in range(6) for _ in range(2)]
    assert [spec.host_block for spec in specs] == [spec.host_layer for spec in specs]
    assert [spec.position for spec in specs] == [order / 11 for order in range(12)]
    assert {spec.channels for spec in specs} == {16}


def test_one_slot_host_has_position_zero() -> None:
    specs = host_for(n_layer=1, slot_layout="layers").injection_specs()
    assert [(spec.slot_id, spec.position) for spec in specs] == [("r0c0", 0.0)]


def test_lattice_cuts_sit_after_the_attention_and_mlp_residual_adds() -> None:
    host = host_for(slot_layout="lattice", n_layer=2).eval()
    x = tokens()
    with torch.no_grad():
        h = host.embed(x)
        after_attn = h + host.blocks[0].attn(host.blocks[0].ln_1(h))
        after_mlp = after_attn + host.blocks[0].mlp(host.blocks[0].ln_2(after_attn))
        assert torch.equal(host.forward_to("r0c1", x), after_attn)
        assert torch.equal(host.forward_to("r0c2", x), after_mlp)
        assert torch.equal(host.forward_to("r0c2", after_attn, from_slot="r0c1"), after_mlp)


@pytest.mark.parametrize("layout", SLOT_LAYOUTS)
def test_routing_rejects_unknown_and_backward_slots(layout: str) -> None:
    host = host_for(slot_layout=layout)
    ids = [spec.slot_id for spec in host.injection_specs()]
    x = tokens(1)
    with pytest.raises(KeyError, match=", ".join(ids)):
        host.forward_to("r9c9", x)
    with pytest.raises(KeyError, match="no slot 'r9c9'"):
        host.forward_from("r9c9", torch.zeros(1, CONTEXT, 16))
    with pytest.raises(KeyError, match="no slot 'r9c9'"):
        host.forward_to(ids[-1], x, from_slot="r9c9")
    h = host.forward_to(ids[1], x)
    with pytest.raises(ValueError, match="from_slot must come before slot_id"):
        host.forward_to(ids[0], h, from_slot=ids[1])
    with pytest.raises(ValueError, match="from_slot must come before slot_id"):
        host.forward_to(ids[1], h, from_slot=ids[1])


def test_lattice_ids_are_not_segment_ids() -> None:
    with pytest.raises(KeyError):
        host_for(slot_layout="lattice").forward_to("r0c0", tokens(1))


def test_routing_carries_gradient_to_every_layer() -> None:
    host = host_for(slot_layout="lattice", n_layer=2)
    x = tokens()
    h, previous = x, None
    for slot_id in ("r0c1", "r1c2"):
        h = host.forward_to(slot_id, h, from_slot=previous)
        previous = slot_id
    host.forward_from(previous, h).square().mean().backward()
    for name, parameter in host.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# -- weights, shapes, causality ----------------------------------------------------------------------


def test_same_weights_and_function_under_every_layout() -> None:
    hosts = [host_for(seed=5, slot_layout=layout) for layout in SLOT_LAYOUTS] + [host_for(seed=5, num_segments=2)]
    reference = hosts[0].state_dict()
    x = tokens()
    with torch.no_grad():
        out = hosts[0].eval()(x)
        for host in hosts[1:]:
            state = host.state_dict()
            assert list(state) == list(reference)
            assert all(torch.equal(state[name], reference[name]) for name in reference)
            assert torch.equal(host.eval()(x), out)


def test_build_is_deterministic_and_seed_dependent() -> None:
    first, second, other = host_for(seed=11), host_for(seed=11), host_for(seed=12)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.token_embedding.weight, other.token_embedding.weight)


def test_host_is_causal() -> None:
    host = host_for(slot_layout="lattice").eval()
    x = tokens(2)
    with torch.no_grad():
        base = host(x)
        for t in range(CONTEXT - 1):
            changed = x.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1) % VOCAB
            out = host(changed)
            assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6), t
            assert not torch.allclose(out[:, t + 1], base[:, t + 1]), t
        h = host.forward_to("r2c1", x)  # a routed piece is causal as well
        h_changed = h.clone()
        h_changed[:, 4] += 1.0
        tail = host.forward_from("r2c1", h_changed)
        assert torch.allclose(tail[:, :4], host.forward_from("r2c1", h)[:, :4], atol=1e-6)


def test_logits_shape_and_shorter_sequences() -> None:
    host = host_for().eval()
    with torch.no_grad():
        full = host(tokens(2))
        short = host(tokens(2)[:, :3])
    assert full.shape == (2, CONTEXT, VOCAB)
    assert torch.allclose(short, full[:, :3], atol=1e-6)  # causal: a prefix gives the prefix's logits


def test_bad_inputs_raise() -> None:
    host = host_for()
    with pytest.raises(ValueError, match="exceeds the context length 8"):
        host(tokens(1, CONTEXT + 1))
    with pytest.raises(ValueError, match=r"shaped \(B, T\)"):
        host(torch.zeros(2, CONTEXT, 16, dtype=torch.long))


def test_tied_and_untied_embeddings() -> None:
    tied = host_for()
    untied = host_for(tie_embeddings=False)
    assert tied.head.weight is tied.token_embedding.weight
    assert untied.head.weight is not untied.token_embedding.weight
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(untied) - count(tied) == VOCAB * 16


def test_default_parameter_count() -> None:
    host = build_transformer_host(
        TransformerHostConfig(),
        task_info(topology="sequence", input_shape=(128,), num_classes=256, score_basis="loss"),
    )
    d = 128
    per_layer = 12 * d * d + 13 * d
    assert sum(p.numel() for p in host.parameters()) == 6 * per_layer + 2 * d + 256 * d + 128 * d == 1_239_040


def test_dropout_is_active_in_training_only() -> None:
    host = host_for(dropout=0.5)
    x = tokens()
    host.train()
    assert not torch.equal(host(x), host(x))
    host.eval()
    assert torch.equal(host(x), host(x))


# -- configuration errors ------------------------------------------------------------------------------


def config_error(config: TransformerHostConfig, info: TaskInfo | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build_transformer_host(config, info or TOKENS)
    assert caught.value.problems and all(problem.startswith("[host]") for problem in caught.value.problems)
    return caught.value


def test_segments_must_divide_layers() -> None:
    error = config_error(TransformerHostConfig(n_layer=6, num_segments=4))
    assert "n_layer 6 is not divisible by num_segments 4" in str(error)
    default = config_error(TransformerHostConfig(n_layer=4))
    assert "num_segments 3 (the default for slot_layout 'segments')" in str(default)


def test_heads_must_divide_width() -> None:
    error = config_error(TransformerHostConfig(d_model=30, n_head=4))
    assert "n_head 4 does not divide d_model 30" in str(error)


@pytest.mark.parametrize("layout", ["layers", "lattice"])
def test_num_segments_belongs_to_segments(layout: str) -> None:
    error = config_error(TransformerHostConfig(slot_layout=layout, num_segments=3))
    assert f"slot_layout is '{layout}'" in str(error)


def test_every_problem_is_reported_at_once() -> None:
    image = task_info(input_shape=(3, 8, 8), num_classes=VOCAB, score_basis="loss")
    error = config_error(TransformerHostConfig(n_layer=5, d_model=10, n_head=3), image)
    assert len(error.problems) == 4
    assert "topology 'image'" in error.problems[0]
    assert "(T,)" in error.problems[1]
    assert "n_head 3" in error.problems[2]
    assert "n_layer 5" in error.problems[3]


@pytest.mark.parametrize(
    "options",
    [
        {"n_layer": 0},
        {"d_model": 0},
        {"n_head": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"slot_layout": "grid"},
        {"num_segments": 0},
        {"tie_embeddings": "yes"},
    ],
)
def test_config_fields_are_validated(options: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        TransformerHostConfig(**options)


def test_toml_section_structures_and_names_host() -> None:
    config, problems = structure_section({"slot_layout": "lattice", "n_layer": 2, "dropout": 0}, TransformerHostConfig, "host")
    assert problems == [] and config.slot_layout == "lattice" and config.dropout == 0.0
    _, problems = structure_section({"n_layers": 2, "slot_layout": "grid"}, TransformerHostConfig, "host")
    assert any("unknown key 'n_layers' (did you mean 'n_layer'?)" in problem for problem in problems)
    assert any(problem.startswith("[host] slot_layout") for problem in problems)


def test_direct_construction_validates_layout() -> None:
    common = dict(vocab_size=5, context_length=4, n_layer=4, d_model=8, n_head=2, dropout=0.0, tie_embeddings=True)
    with pytest.raises(ValueError, match="num_segments 3 does not divide n_layer 4"):
        TransformerHost(**common, slot_layout="segments", num_segments=3)
    with pytest.raises(ValueError, match="required by slot_layout 'segments'"):
        TransformerHost(**common, slot_layout="segments")
    with pytest.raises(ValueError, match="unknown slot_layout"):
        TransformerHost(**common, slot_layout="grid")
