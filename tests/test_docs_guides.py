"""Meta-tests: docs/user-guide.md and docs/plugin-author-guide.md stay true to the code.

- every core config key (and the built-in rewards' and ``[experiment]``'s) is in the user guide's
  configuration reference with its exact default, and nothing documented there is stale;
- every telemetry event type is listed with every payload field;
- every CLI subcommand and option is mentioned;
- the lifecycle tables (stages, ops, heads and their values, causal relevance) match Leyline;
- every TOML block in the user guide parses, and every full run config in it validates against the
  installed plugins;
- every Python block in the plugin author guide compiles, and the guide's example plugins load,
  pass the conformance kit and run;
- every relative link in the three guides points to an existing file and heading.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import attrs
import pytest

from esper_core.cli import build_parser
from esper_core.config import CORE_SECTIONS, FaultPoint, parse_config
from esper_core.experiments import ArmSection, ExperimentSection, parse_experiment
from esper_core.leyline import (
    CAUSAL_RELEVANCE,
    EVENT_PAYLOADS,
    HEADS,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlendStyle,
    LifecycleOp,
    SeedStage,
    Tempo,
    TelemetryEventType,
)
from esper_core.plugins import PluginManager

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DOCS = Path(__file__).resolve().parents[1] / "docs"
USER_GUIDE = DOCS / "user-guide.md"
PLUGIN_GUIDE = DOCS / "plugin-author-guide.md"
DESIGN = DOCS / "design.md"


# --------------------------------------------------------------------------------------------------
# Markdown helpers


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def prose_lines(text: str) -> list[tuple[str, bool]]:
    """Every line with a flag saying whether it is outside fenced code blocks."""
    result = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            result.append((line, False))
            continue
        result.append((line, not fenced))
    return result


def headings(text: str) -> list[str]:
    return [line for line, prose in prose_lines(text) if prose and re.match(r"^#{1,6} ", line)]


def section(text: str, heading: str) -> str:
    """The text under the heading line ``heading`` up to the next heading of the same or a higher level."""
    lines = prose_lines(text)
    starts = [index for index, (line, prose) in enumerate(lines) if prose and line == heading]
    assert starts, f"no heading {heading!r} in the document"
    level = len(heading) - len(heading.lstrip("#"))
    body = []
    for line, prose in lines[starts[0] + 1 :]:
        match = re.match(r"^(#{1,6}) ", line) if prose else None
        if match and len(match.group(1)) <= level:
            break
        body.append(line)
    return "\n".join(body)


def section_matching(text: str, pattern: str) -> str:
    found = [heading for heading in headings(text) if re.search(pattern, heading)]
    assert len(found) == 1, f"expected one heading matching {pattern!r}, found {found}"
    return section(text, found[0])


def tables(text: str) -> list[list[list[str]]]:
    """Markdown tables outside code blocks: lists of rows (header first), separator rows dropped."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line, prose in prose_lines(text) + [("", True)]:
        if prose and line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
                current.append(cells)
            continue
        if current:
            found.append(current)
            current = []
    return found


def rows_by_key(text: str) -> dict[str, list[str]]:
    """Every table row of ``text`` by its first cell (header rows included)."""
    rows: dict[str, list[str]] = {}
    for table in tables(text):
        for row in table:
            rows.setdefault(row[0], row)
    return rows


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


# --------------------------------------------------------------------------------------------------
# defaults as the guide writes them


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"
    return repr(value)


def documented_default(field: attrs.Attribute) -> str:
    """How the configuration reference writes a field's default: `value`, unset, or required."""
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    if default is None:
        return "unset"
    return f"`{toml_value(default)}`"


def check_option_table(text: str, fields: dict[str, attrs.Attribute], where: str) -> None:
    rows = {key: row for key, row in rows_by_key(text).items() if key.startswith("`")}
    for name, field in fields.items():
        key = f"`{name}`"
        assert key in rows, f"{where}: no table row for {key}"
        assert len(rows[key]) >= 3, f"{where}: the row for {key} has no default column"
        assert rows[key][2] == documented_default(field), (
            f"{where}: {key} is documented with default {rows[key][2]!r}, the code says {documented_default(field)!r}"
        )
    stale = sorted(set(rows) - {f"`{name}`" for name in fields})
    assert not stale, f"{where}: documents keys the code does not have: {stale}"


# --------------------------------------------------------------------------------------------------
# the configuration reference


def core_fields() -> list[tuple[str, type]]:
    return list(CORE_SECTIONS.items())


@pytest.mark.parametrize("section_name, cls", core_fields(), ids=[name for name, _ in core_fields()])
def test_every_core_config_field_is_documented_with_its_default(section_name: str, cls: type) -> None:
    text = section(read(USER_GUIDE), f"### `[{section_name}]`")
    fields = {field.name: field for field in attrs.fields(cls)}
    if section_name == "faults":  # the fault point table sits in the [faults] subsection
        fields.update({field.name: field for field in attrs.fields(FaultPoint)})
    check_option_table(text, fields, f"[{section_name}]")


def builtin_rewards() -> dict[str, Any]:
    manager = PluginManager(autoload=False)
    return {
        name: entry
        for name, entry in manager.registry.entries["rewards"].items()
        if manager.registry.owner("rewards", name) == "esper_core"
    }


@pytest.mark.parametrize("reward", sorted(builtin_rewards()))
def test_every_builtin_reward_option_is_documented_with_its_default(reward: str) -> None:
    entry = builtin_rewards()[reward]
    text = section(section(read(USER_GUIDE), "### `[reward]`"), f"#### `{reward}`")
    check_option_table(text, {field.name: field for field in attrs.fields(entry.config_class)}, f"reward {reward}")


def test_experiment_section_is_documented_with_its_defaults() -> None:
    text = section_matching(read(USER_GUIDE), r"^## .*[Pp]aired experiments")
    fields = {field.name: field for field in attrs.fields(ExperimentSection)}
    fields.update({f"arms[].{field.name}": field for field in attrs.fields(ArmSection)})
    check_option_table(text, fields, "[experiment]")


# --------------------------------------------------------------------------------------------------
# telemetry, CLI, lifecycle


def test_every_telemetry_event_is_listed_with_every_payload_field() -> None:
    text = section_matching(read(USER_GUIDE), r"^## .*Telemetry events")
    rows = {key: row for key, row in rows_by_key(text).items() if key.startswith("`")}
    for event_type in TelemetryEventType:
        key = f"`{event_type.value}`"
        assert key in rows, f"the telemetry table has no row for {key}"
        documented = " ".join(rows[key][1:])
        for field in attrs.fields(EVENT_PAYLOADS[event_type]):
            assert f"`{field.name}`" in documented, f"{key}: payload field `{field.name}` is not listed"
    stale = sorted(set(rows) - {f"`{event_type.value}`" for event_type in TelemetryEventType})
    assert not stale, f"the telemetry table lists events that do not exist: {stale}"


def cli_subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


@pytest.mark.parametrize("command", sorted(cli_subcommands()))
def test_every_cli_subcommand_and_option_is_in_the_user_guide(command: str) -> None:
    text = read(USER_GUIDE)
    assert f"esper {command}" in text, f"the user guide never shows `esper {command}`"
    for action in cli_subcommands()[command]._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert option in text, f"the user guide does not mention `esper {command} {option}`"


HEAD_ENUMS = {
    "op": LifecycleOp,
    "style": BlendStyle,
    "tempo": Tempo,
    "alpha_target": AlphaTarget,
    "alpha_speed": AlphaSpeed,
    "alpha_curve": AlphaCurve,
}


def table_with_header(text: str, column: int, name: str) -> list[list[str]]:
    found = [table for table in tables(text) if len(table[0]) > column and table[0][column] == name]
    assert len(found) == 1, f"expected one table whose column {column} is headed {name!r}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("head", list(HEAD_ENUMS))
def test_every_action_head_value_is_documented_with_its_meaning(head: str) -> None:
    text = section_matching(read(USER_GUIDE), r"^## .*seed lifecycle")
    enum = HEAD_ENUMS[head]
    table = table_with_header(text, 1, head)
    documented = {row[0]: row for row in table[1:]}
    assert set(documented) == {str(int(member)) for member in enum}, f"{head}: values {sorted(documented)}"
    for member in enum:
        row = documented[str(int(member))]
        assert row[1] == f"`{member.name}`", f"{head} {int(member)} is {member.name}, the guide says {row[1]}"
        if enum in (Tempo, AlphaSpeed):
            assert row[2] == str(member.epochs), f"{head} {member.name}: {member.epochs} epochs, the guide says {row[2]}"
        if enum is AlphaTarget:
            assert row[2] == str(member.value_), f"{head} {member.name}: alpha {member.value_}, the guide says {row[2]}"


@pytest.mark.parametrize(
    "document, heading",
    [(USER_GUIDE, r"^## .*seed lifecycle"), (PLUGIN_GUIDE, r"^## .*Policies")],
    ids=["user-guide", "plugin-author-guide"],
)
def test_causal_relevance_table_matches_leyline(document: Path, heading: str) -> None:
    text = section_matching(read(document), heading)
    table = table_with_header(text, 0, "op")
    assert table[0][1:] == list(HEADS[1:]), f"relevance table columns {table[0][1:]} vs heads {HEADS[1:]}"
    documented = {row[0]: row for row in table[1:]}
    assert set(documented) == {f"`{op.name}`" for op in LifecycleOp}
    for op in LifecycleOp:
        row = documented[f"`{op.name}`"]
        marked = {head for head, cell in zip(HEADS[1:], row[1:]) if cell}
        assert marked == set(CAUSAL_RELEVANCE[op]) - {"op"}, f"{op.name}: the guide marks {sorted(marked)}"


def test_every_seed_stage_is_explained() -> None:
    text = section_matching(read(USER_GUIDE), r"^## .*seed lifecycle")
    table = table_with_header(text, 0, "stage")
    assert {row[0] for row in table[1:]} == {f"`{stage.name}`" for stage in SeedStage}


# --------------------------------------------------------------------------------------------------
# TOML examples in the user guide


def user_guide_toml() -> list[str]:
    return code_blocks(read(USER_GUIDE), "toml")


def is_full_config(data: dict[str, Any]) -> bool:
    return isinstance(data.get("task"), dict) and isinstance(data.get("policy"), dict)


@pytest.fixture(scope="module")
def installed_plugins() -> PluginManager:
    return PluginManager()


@pytest.mark.parametrize("index", range(len(user_guide_toml())))
def test_every_user_guide_toml_block_is_valid(index: int, installed_plugins: PluginManager) -> None:
    block = user_guide_toml()[index]
    data = tomllib.loads(block)
    if not is_full_config(data):
        return
    if "experiment" in data:
        parse_experiment(data, installed_plugins, source=f"user guide TOML block {index}")
    else:
        parse_config(data, installed_plugins, source=f"user guide TOML block {index}")


def test_the_user_guide_has_full_run_configs_to_check() -> None:
    full = [block for block in user_guide_toml() if is_full_config(tomllib.loads(block))]
    assert len(full) >= 3, "the user guide should show complete run configs (with [task] and [policy])"


# --------------------------------------------------------------------------------------------------
# the plugin author guide's code


def plugin_guide_python() -> list[str]:
    return code_blocks(read(PLUGIN_GUIDE), "python")


@pytest.mark.parametrize("index", range(len(plugin_guide_python())))
def test_every_plugin_guide_python_block_compiles(index: int) -> None:
    compile(plugin_guide_python()[index], f"plugin-author-guide.md python block {index}", "exec")


def guide_files() -> dict[str, str]:
    """Code blocks of the plugin author guide whose first line is ``# <file name>``, by file name."""
    files: dict[str, str] = {}
    for language in ("python", "toml"):
        for block in code_blocks(read(PLUGIN_GUIDE), language):
            match = re.match(r"# (\S+\.(?:py|toml))\n", block)
            if match:
                files[match.group(1)] = block
    return files


def load_guide_module(monkeypatch: pytest.MonkeyPatch, file_name: str) -> types.ModuleType:
    """Execute one of the guide's files as a fresh module (registered in sys.modules for the test)."""
    files = guide_files()
    assert file_name in files, f"the plugin author guide has no block starting with '# {file_name}'"
    name = "esper_docs_guide_" + re.sub(r"\W", "_", file_name.removesuffix(".py"))
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(files[file_name], f"<plugin-author-guide.md: {file_name}>", "exec"), module.__dict__)
    return module


EXTRA_FILES = ("my_host.py", "my_task.py", "my_policy.py", "my_reward.py", "my_sink.py")


def guide_manager(monkeypatch: pytest.MonkeyPatch, *, autoload: bool) -> tuple[PluginManager, dict[str, types.ModuleType]]:
    modules = {file_name: load_guide_module(monkeypatch, file_name) for file_name in ("esper_dilated/plugin.py", *EXTRA_FILES)}
    extra = list(modules.values())
    if autoload and "dilated_conv" in PluginManager().registry.entries["seed_families"]:
        extra.remove(modules["esper_dilated/plugin.py"])  # the guide's plugin is installed: use that one
    manager = PluginManager(autoload=autoload, extra=extra)
    return manager, modules


def test_plugin_guide_seed_family_passes_the_conformance_kit(monkeypatch: pytest.MonkeyPatch) -> None:
    from esper_core.testing import check_seed_family

    module = load_guide_module(monkeypatch, "esper_dilated/plugin.py")
    for channels in (1, 8):
        check_seed_family(module.DILATED_CONV, channels=channels)
    manager = PluginManager(autoload=False, extra=[module])
    assert not manager.failures, [failure.describe() for failure in manager.failures]
    assert "dilated_conv" in manager.registry.entries["seed_families"]


def test_plugin_guide_pyproject_declares_the_entry_point() -> None:
    blocks = [block for block in code_blocks(read(PLUGIN_GUIDE), "toml") if block.startswith("[build-system]")]
    assert len(blocks) == 1
    data = tomllib.loads(blocks[0])
    assert data["project"]["entry-points"]["esper"] == {"dilated": "esper_dilated.plugin"}


def test_plugin_guide_other_kinds_load_and_pass_the_conformance_kit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from esper_core.testing import check_host_family, check_sink_kind, check_task_kind

    manager, _modules = guide_manager(monkeypatch, autoload=False)
    assert not manager.failures, [failure.describe() for failure in manager.failures]
    registry = manager.registry
    task = check_task_kind(registry.get("tasks", "bars"))
    check_host_family(registry.get("hosts", "stack"), task.info)
    check_sink_kind(registry.get("telemetry_sinks", "csv"), tmp_path)
    assert "eager" in registry.entries["policies"] and "gain_minus_rent" in registry.entries["rewards"]


def plugin_guide_run_configs() -> dict[str, str]:
    return {name: block for name, block in guide_files().items() if name.endswith(".toml")}


def test_plugin_guide_run_configs_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    configs = plugin_guide_run_configs()
    assert set(configs) >= {"dilated-digits.toml", "bars.toml"}
    manager, _modules = guide_manager(monkeypatch, autoload=True)
    for name, block in configs.items():
        parse_config(tomllib.loads(block), manager, source=name)


@pytest.mark.slow
def test_plugin_guide_example_plugins_run_end_to_end(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from esper_core.tolaria.engine import start_run

    manager, _modules = guide_manager(monkeypatch, autoload=False)
    data = tomllib.loads(plugin_guide_run_configs()["bars.toml"])
    data["run"].update({"episode_length": 5, "output_dir": str(tmp_path), "torch_threads": 1})
    data["task"].update({"train_size": 256, "val_size": 64})
    data["training"] = {"batch_size": 32, "batches_per_epoch": 4}
    data["morphogenesis"]["min_training_epochs"] = 1
    data["sinks"] = {"csv": {}}
    run_dir = start_run(parse_config(data, manager), manager)
    rows = (run_dir / "epochs.csv").read_text().splitlines()
    assert len(rows) == data["run"]["envs"] * 5
    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert "SEED_GERMINATED" in events and events[-1] == "RUN_FINISHED"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["status"] == "completed"


# --------------------------------------------------------------------------------------------------
# links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading line."""
    text = heading.lstrip("#").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@pytest.mark.parametrize("document", [USER_GUIDE, PLUGIN_GUIDE, DESIGN], ids=lambda path: path.name)
def test_every_relative_link_resolves(document: Path) -> None:
    text = "\n".join(line for line, prose in prose_lines(read(document)) if prose)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, f"{document.name} has no links"
    for link in links:
        if re.match(r"^[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        assert path.exists(), f"{document.name}: link {link!r} points to a missing file"
        if anchor and path.suffix == ".md":
            anchors = {slug(heading) for heading in headings(read(path))}
            assert anchor in anchors, f"{document.name}: link {link!r}: no heading with anchor #{anchor} in {path.name}"
