"""The README documents every option, its TOML examples are valid, and its parameter counts are current."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import attrs

from esper_core.config import structure_section
from esper_tamiyo_ppo import PRESETS, PolicyNetwork, PPOConfig, parameter_count

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_option_is_documented_with_its_default():
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", README, flags=re.MULTILINE))
    defaults = PPOConfig()
    for field in attrs.fields(PPOConfig):
        assert field.name in rows, f"option {field.name} is missing from the README"
        value = getattr(defaults, field.name)
        documented = rows[field.name].strip()
        if value is None:
            assert documented in ("unset", "preset"), (field.name, documented)
        elif isinstance(value, bool):
            assert documented == f"`{str(value).lower()}`", (field.name, documented)
        elif isinstance(value, (int, float, str)):
            shown = documented.strip("`").strip('"')
            assert shown == str(value) or float(shown) == value, (field.name, documented)


def test_readme_toml_examples_are_valid_policy_tables():
    blocks = re.findall(r"```toml\n(.*?)```", README, flags=re.DOTALL)
    assert len(blocks) == 2
    for block in blocks:
        table = dict(tomllib.loads(block)["policy"])
        assert table.pop("name") == "ppo"
        instance, problems = structure_section(table, PPOConfig, "policy")
        assert problems == [] and instance is not None


def test_readme_parameter_counts_are_current():
    for preset, sizes in PRESETS.items():
        row = re.search(rf"^\| `{preset}` \|(.*)\|$", README, flags=re.MULTILINE).group(1)
        cells = [cell.strip() for cell in row.split("|")]
        assert [int(cell) for cell in cells[:6]] == list(sizes.as_dict().values())
        assert int(cells[6].replace(",", "")) == parameter_count(PolicyNetwork(sizes, n_slots=3, n_blueprints=3))


def test_readme_names_every_metric_a_round_reports(kit):
    """Every key ``end_episode`` returns (heads and feature names folded into their placeholders) is
    documented in the README's metrics section."""
    policy = kit.policy(seed=1)
    kit.play_round(policy, seed=1, close=False)
    metrics = policy.end_episode(0)
    assert "value_loss" in metrics  # the round updated
    for key in metrics:
        documented = re.sub(r"^(entropy|charts/entropy_norm|charts/entropy_floor_boosted)/\w+$", r"\1/<head>", key)
        documented = re.sub(r"^obs/(base|slot)/\w+$", r"obs/\1/<name>", documented)
        assert f"`{documented}`" in README, key
