"""Config fuzz: mutated run configs either validate or fail with one ConfigError line per problem, never a traceback."""

from __future__ import annotations

import copy
import math
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from esper_core.config import parse_config
from esper_core.errors import EsperError
from esper_core.tolaria.engine import build_policy_and_reward, prepare

#: values a careless or hostile user might write where any other value was expected
HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([math.inf, -math.inf, math.nan, 0.0, -0.0, 1e308, -1e-308, 1e-320]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "meta", "cuda:99", "../..", "ü", "\x00", "inf", "nan", "toy", "1e9"]),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.sampled_from(["a", "name", "epoch"]), st.integers(-2, 2), max_size=2),
)


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts (and list indexes), leaves and tables alike."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            found.append((*prefix, key))
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.append((*prefix, index))
            found.extend(_paths(value, (*prefix, index)))
    return found


def _set(data: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _delete(data: Any, path: tuple) -> None:
    for key in path[:-1]:
        data = data[key]
    del data[path[-1]]


@st.composite
def mutated_configs(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        # the toy policy's action script is test scaffolding, not a user-facing option
        paths = [path for path in _paths(data) if path[:2] != ("policy", "script")]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "add" or not paths:
            tables = [()] + [path for path in paths if isinstance(_get(data, path), dict)]
            table = draw(st.sampled_from(tables))
            key = draw(st.sampled_from(["unknown_key", "seed", "name", "epochs", "lr", "envs"]))
            _set(data, (*table, key), draw(HOSTILE_VALUES))
        elif action == "delete":
            _delete(data, draw(st.sampled_from(paths)))
        else:
            _set(data, draw(st.sampled_from(paths)), draw(HOSTILE_VALUES))
    return data


def _get(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


@pytest.mark.timeout(240)
@hypothesis.settings(max_examples=150, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(data=st.data())
def test_a_mutated_config_validates_or_fails_with_one_line_per_problem(data, toy_manager, toy_run_data) -> None:
    config_data = data.draw(mutated_configs(toy_run_data()))
    try:
        config = parse_config(config_data, toy_manager, source="fuzz.toml")
        setup = prepare(config, toy_manager)
        build_policy_and_reward(setup, toy_manager)
    except EsperError as exc:
        message = str(exc)
        assert message.strip(), "an error with no message"
        assert "Traceback" not in message
        problems = getattr(exc, "problems", [message])
        for problem in problems:
            assert "\n" not in problem, f"a problem spans lines: {problem!r}"
            assert len(problem) < 600, f"a problem is not one readable line: {problem[:200]!r}"
