"""Config tests: validators, seed family names checked at build time, and the README's TOML example."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from esper_core.config import structure_section
from esper_core.errors import ConfigError
from esper_heuristic import (
    AdaLoRAScheduleConfig,
    AdaLoRASchedulePolicy,
    HeuristicConfig,
    HeuristicPolicy,
    RandomPolicyConfig,
    StaticPolicyConfig,
)

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prune_threshold": -0.1}, "prune_threshold must be a finite number >= 0, got -0.1"),
        ({"plateau_delta": float("nan")}, "plateau_delta must be a finite number >= 0, got nan"),
        ({"holding_patience": 0}, "holding_patience must be >= 1, got 0"),
        ({"plateau_window": 0}, "plateau_window must be >= 1"),
        ({"warmup_epochs": -1}, "warmup_epochs must be >= 0"),
        ({"min_training_epochs": 1.5}, "min_training_epochs must be an integer"),
        ({"seed_family_cooldown_epochs": True}, "seed_family_cooldown_epochs must be an integer"),
        ({"tempo": "STANDARD"}, "tempo must be one of fast, standard, slow"),
        ({"style": "concat"}, "style must be one of add, multiply, gate"),
        ({"prune_alpha_speed": "warp"}, "prune_alpha_speed must be one of instant, fast, medium, slow"),
        ({"seed_families": "conv_light"}, "'seed_families' must be a list"),
        ({"seed_families": ("a", "b", "a")}, "seed_families lists a more than once"),
        ({"prune_threshold": 0.01, "fossilize_threshold": -0.02}, "must be at least -prune_threshold (-0.01)"),
        ({"price_per_kparam": -0.01}, "price_per_kparam must be a finite number >= 0, got -0.01"),
        ({"escalate_margin": 0.5}, "escalate_margin must be a finite number >= 1, got 0.5"),
        ({"prune_threshold": float("inf")}, "prune_threshold must be a finite number >= 0, got inf"),
        ({"fossilize_threshold": float("-inf")}, "fossilize_threshold must be a finite number, got -inf"),
        ({"ladder_min_gain": True}, "ladder_min_gain must be a finite number >= 0, got True"),
    ],
)
def test_heuristic_config_rejects_out_of_range_values(options, message):
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        HeuristicConfig(**options)


def test_fossilize_threshold_may_meet_minus_prune_threshold():
    config = HeuristicConfig(prune_threshold=0.0, fossilize_threshold=0.0)
    assert config.fossilize_threshold == -config.prune_threshold


def test_run_config_loader_reports_every_problem_with_its_path():
    table = {
        "holding_patience": 0,
        "tempo": "STANDARD",
        "prune_threshold": 0.1,
        "fossilize_threshold": -0.2,
        "warmup_epochs": True,
        "plateu_window": 3,
    }
    config, problems = structure_section(table, HeuristicConfig, "policy")
    assert config is None
    range_problems = [
        "[policy] fossilize_threshold: must be at least -prune_threshold (-0.1), got -0.2 "
        "(a seed cannot both earn fossilization and be pruned for damage)",
        "[policy] holding_patience: must be >= 1, got 0",
        "[policy] tempo: must be one of fast, standard, slow, got 'STANDARD'",
    ]
    # a type error or an unknown key does not hide the range problems of the other keys
    assert sorted(problems) == sorted(
        [
            "[policy] warmup_epochs: expected an integer, got True",
            "[policy] unknown key 'plateu_window' (did you mean 'plateau_window'?)",
            *range_problems,
        ]
    )
    del table["warmup_epochs"], table["plateu_window"]
    config, problems = structure_section(table, HeuristicConfig, "policy")
    assert config is None
    assert problems == [
        "[policy] fossilize_threshold: must be at least -prune_threshold (-0.1), got -0.2 "
        "(a seed cannot both earn fossilization and be pruned for damage)",
        "[policy] holding_patience: must be >= 1, got 0",
        "[policy] tempo: must be one of fast, standard, slow, got 'STANDARD'",
    ]
    _config, problems = structure_section({"wait_probability": 2}, RandomPolicyConfig, "policy")
    assert problems == ["[policy] wait_probability: must be a finite number in [0, 1], got 2.0"]


def test_heuristic_config_defaults():
    config = HeuristicConfig()
    assert config.min_training_epochs is None  # follows the run's [morphogenesis] min_training_epochs
    assert config.seed_families == ()
    assert (config.style, config.tempo, config.alpha_target, config.alpha_curve) == ("add", "standard", "full", "linear")
    assert config.prune_alpha_speed == "instant"
    assert (config.price_per_kparam, config.escalate_margin) == (0.01, 2.0)
    assert config.epochs_to_verdict(2) == 2 + 5 + 5


def test_static_config_has_no_options_and_rejects_unknown_keys():
    assert structure_section({}, StaticPolicyConfig, "policy") == (StaticPolicyConfig(), [])
    config, problems = structure_section({"warmup_epochs": 1}, StaticPolicyConfig, "policy")
    assert config is None
    assert problems == ["[policy] unknown key 'warmup_epochs'"]
    with pytest.raises(TypeError):
        StaticPolicyConfig(warmup_epochs=1)


@pytest.mark.parametrize("value", [-0.01, 1.01, float("inf"), "half"])
def test_random_config_rejects_bad_wait_probability(value):
    with pytest.raises((TypeError, ValueError), match="wait_probability"):
        RandomPolicyConfig(wait_probability=value)


@pytest.mark.parametrize("value", [None, 0, 0.0, 0.25, 1.0])
def test_random_config_accepts_probabilities(value):
    assert RandomPolicyConfig(wait_probability=value).wait_probability == value


def test_unknown_blueprints_are_config_errors_at_build_time(kit):
    config = HeuristicConfig(seed_families=("conv_lite", "attention", "mystery"))
    with pytest.raises(ConfigError) as caught:
        HeuristicPolicy(config, kit.context())
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("[policy] unknown seed family 'conv_lite'")
    assert "did you mean 'conv_light'?" in problems[0]
    assert problems[1].startswith("[policy] unknown seed family 'mystery'")
    assert "conv_light, conv_heavy, attention" in problems[1]


def test_known_blueprints_build(kit):
    policy = HeuristicPolicy(HeuristicConfig(seed_families=("attention",)), kit.context())
    assert policy.config.seed_families == ("attention",)


def _readme_policy_tables() -> list[dict]:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README.md has no ```toml example"
    return [tomllib.loads(block)["policy"] for block in blocks]


def test_readme_toml_examples_load_with_the_run_config_loader(kit):
    classes = {
        "heuristic": HeuristicConfig, "adalora_schedule": AdaLoRAScheduleConfig,
        "random": RandomPolicyConfig, "static": StaticPolicyConfig,
    }
    seen = set()
    for table in _readme_policy_tables():
        options = dict(table)
        name = options.pop("name")
        config, problems = structure_section(options, classes[name], "policy")
        assert problems == []
        seen.add(name)
        if name == "heuristic":
            HeuristicPolicy(config, kit.context())  # its seed family names exist in the test run
        if name == "adalora_schedule":
            AdaLoRASchedulePolicy(config, kit.context())
    assert seen == {"heuristic", "adalora_schedule", "random", "static"}


def test_readme_documents_every_option_with_its_default():
    text = README.read_text()
    for config_class in (HeuristicConfig, RandomPolicyConfig, StaticPolicyConfig):
        for field in config_class.__attrs_attrs__:
            default = field.default
            shown = {None: "unset", (): "[]"}.get(default, default) if not isinstance(default, float) else default
            if isinstance(default, bool):
                shown = str(default).lower()  # as TOML writes it
            row = re.search(rf"^\| `{field.name}` \|[^|]*\| `?([^|`]*)`? \|", text, flags=re.MULTILINE)
            assert row, f"README.md has no table row for `{field.name}`"
            assert row.group(1).strip().strip('"') == str(shown), f"README default of {field.name}"
    # the schedule's own options, in the adalora_schedule section
    section = text[text.index("## `adalora_schedule`"):text.index("## `random`")]
    heuristic_fields = {field.name for field in HeuristicConfig.__attrs_attrs__}
    for field in AdaLoRAScheduleConfig.__attrs_attrs__:
        if field.name in heuristic_fields:
            continue
        row = re.search(rf"^\| `{field.name}` \|[^|]*\| `?([^|`]*)`? \|", section, flags=re.MULTILINE)
        assert row, f"README.md's adalora_schedule section has no table row for `{field.name}`"
        assert row.group(1).strip() == str(field.default), f"README default of {field.name}"
