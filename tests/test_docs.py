"""Meta-tests: every hook is documented in docs/hooks.md and implemented by the test suite's plugin."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from esper_core import hookspecs
from esper_core.plugins import HOOK_NAMES
from esper_core.registry import KINDS
from tests import toy_plugin

DOCS = Path(__file__).resolve().parents[1] / "docs"


def hook_sections() -> dict[str, str]:
    text = (DOCS / "hooks.md").read_text()
    parts = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    return {part.splitlines()[0].strip(): part for part in parts}


def test_hook_names_match_the_hookspecs():
    declared = {name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("esper_")}
    assert declared == set(HOOK_NAMES)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_hook_is_documented_with_its_record(kind):
    hook, record, _label = KINDS[kind]
    sections = hook_sections()
    assert hook in sections, f"docs/hooks.md has no '## {hook}' section"
    assert record.__name__ in sections[hook], f"the {hook} section does not name {record.__name__}"
    assert inspect.getdoc(getattr(hookspecs, hook)), f"{hook} has no docstring"


def test_documentation_has_no_sections_for_hooks_that_do_not_exist():
    assert set(hook_sections()) <= set(HOOK_NAMES)


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_every_hook_is_exercised_by_the_test_plugin(hook):
    assert callable(getattr(toy_plugin, hook)), f"tests/toy_plugin.py does not implement {hook}"
