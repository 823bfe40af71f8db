"""Run configuration: TOML structured with cattrs into attrs classes; every problem reported at once with its path."""

from __future__ import annotations

import difflib
import math
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import cattrs
from cattrs.errors import (
    BaseValidationError,
    ForbiddenExtraKeysError,
)
from cattrs.errors import AttributeValidationNote, IterableValidationNote

from esper_core.errors import ConfigError, EsperError
from esper_core.plugins import PluginManager
from esper_core.registry import KINDS
from esper_core.telemetry.anomalies import AnomalyThresholds
from esper_core.validators import (
    InvalidValue,
    in_range,
    int_in_range,
    non_negative,
    non_negative_int,
    one_of,
    optional,
    positive,
    positive_int,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

import tomli_w

__all__ = [
    "CORE_SECTIONS",
    "PluginChoice",
    "RunConfig",
    "config_to_dict",
    "default_sinks",
    "load_config",
    "parse_config",
    "path_field",
    "read_toml",
    "structure_section",
    "write_config",
]

# --------------------------------------------------------------------------------------------------
# path options

PATH_METADATA = "esper_path"


def path_field(default: str | None = None, **kwargs: Any) -> Any:
    """An attrs field holding a filesystem path. The loader makes a relative path absolute (against
    the working directory at load time), so the resolved config a run saves works from anywhere."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata[PATH_METADATA] = True
    return attrs.field(default=default, metadata=metadata, **kwargs)


def _absolute_paths(instance: Any) -> Any:
    changes = {}
    for field in attrs.fields(type(instance)):
        value = getattr(instance, field.name)
        if field.metadata.get(PATH_METADATA) and isinstance(value, str) and value:
            path = Path(value).expanduser()
            if not path.is_absolute():
                changes[field.name] = str((Path.cwd() / path).resolve())
    return attrs.evolve(instance, **changes) if changes else instance


# --------------------------------------------------------------------------------------------------
# core sections


#: Device types a run may use; availability (a CUDA device present, its index) is checked when the run starts.
DEVICE_TYPES = ("cpu", "cuda", "mps")
#: The largest run seed: every seed the engine derives from it fits a signed 64-bit integer.
MAX_SEED = 2**63 - 1
#: Environments per round: each holds its own host, seeds and optimizers, so far fewer fit any machine.
MAX_ENVS = 1024
#: ``torch.set_num_threads`` takes a C int; no machine has more cores than this.
MAX_TORCH_THREADS = 1024


def _device(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A device string torch parses, of a type a run can train on (``meta`` holds no data)."""
    import torch  # here, not at module level: reading a config must not cost torch's import

    rule = f"must be a device of type {', '.join(DEVICE_TYPES)} (e.g. 'cpu', 'cuda', 'cuda:1')"
    if not isinstance(value, str):
        raise InvalidValue(attribute.name, f"{rule}, got {value!r}", value)
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise InvalidValue(attribute.name, f"{rule}, got {value!r}", value) from None
    if device.type not in DEVICE_TYPES:
        raise InvalidValue(attribute.name, f"{rule}, got {value!r}", value)


@attrs.frozen
class RunSection:
    """``[run]``: what to run, how long, where the run directory goes."""

    name: str = "run"
    seed: int = attrs.field(default=0, validator=int_in_range(0, MAX_SEED))
    rounds: int = attrs.field(default=1, validator=positive_int())
    envs: int = attrs.field(default=1, validator=int_in_range(1, MAX_ENVS))
    episode_length: int = attrs.field(default=20, validator=positive_int())
    device: str = attrs.field(default="cpu", validator=_device)
    output_dir: str = path_field(default="runs")
    checkpoint_every: int = attrs.field(default=5, validator=non_negative_int())
    torch_threads: int | None = attrs.field(default=None, validator=optional(int_in_range(1, MAX_TORCH_THREADS)))


def _betas(_instance: Any, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
    if not all(isinstance(beta, (int, float)) and math.isfinite(beta) and 0.0 <= beta < 1.0 for beta in value):
        raise InvalidValue(attribute.name, f"must be two finite numbers in [0, 1), got {list(value)}", value)


@attrs.frozen
class TrainingSection:
    """``[training]``: host and seed optimisation (SGD with momentum, or AdamW) and batching."""

    batch_size: int = attrs.field(default=128, validator=int_in_range(2))
    eval_batch_size: int = attrs.field(default=256, validator=positive_int())
    host_lr: float = attrs.field(default=0.05, validator=positive())
    seed_lr: float = attrs.field(default=0.05, validator=positive())
    optimizer: str = attrs.field(default="sgd", validator=one_of("sgd", "adamw"))
    momentum: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0, high_inclusive=False))
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), validator=_betas)
    weight_decay: float = attrs.field(default=5e-4, validator=non_negative())
    lr_schedule: str = attrs.field(default="cosine", validator=one_of("constant", "cosine"))
    warmup_steps: int = attrs.field(default=0, validator=non_negative_int())
    batches_per_epoch: int = attrs.field(default=0, validator=non_negative_int())


@attrs.frozen
class Implant:
    """One seed that is part of the host from birth: ``{slot = "r0c1", seed_family = "conv_light", level = 1}``."""

    #: keys renamed in 0.2.0: the old key is an error that names the new one
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"blueprint": "seed_family"}

    slot: str
    seed_family: str
    level: int | None = attrs.field(default=None, validator=optional(non_negative_int()))


@attrs.frozen
class MorphogenesisSection:
    """``[morphogenesis]``: which slots and seed families the policy may use, and lifecycle rules.

    Empty ``slots`` means every slot the host exposes; empty ``seed_families`` means every registered
    seed family that supports the host's topology. ``max_seeds`` caps occupied slots (live plus
    fossilized) per environment; unset means one per slot. ``implants`` are seeds built into the host
    from birth (fossilized at alpha 1, trained with the host from the first step): a static network with
    a grown network's final architecture, trained from scratch.
    """

    #: keys renamed in 0.2.0: the old key is an error that names the new one
    RENAMED_KEYS: ClassVar[dict[str, str]] = {"blueprints": "seed_families"}

    slots: tuple[str, ...] = ()
    seed_families: tuple[str, ...] = ()
    max_seeds: int | None = attrs.field(default=None, validator=optional(positive_int()))
    embargo_epochs: int = attrs.field(default=3, validator=non_negative_int())
    min_training_epochs: int = attrs.field(default=2, validator=non_negative_int())
    implants: tuple[Implant, ...] = ()
    auto_advance: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    #: ENABLE_SUBTARGET / DISABLE_SUBTARGET allowed (for any policy); false keeps every inventory's mask as
    #: built, the "ladders without subtarget ops" arm of a Phase 3 comparison
    subtarget_ops: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))


@attrs.frozen
class GovernorSection:
    """``[governor]``: roll back to the last healthy snapshot on non-finite or diverging loss."""

    enabled: bool = True
    divergence_factor: float = attrs.field(default=3.0, validator=in_range(1.0, None, low_inclusive=False))
    patience: int = attrs.field(default=2, validator=positive_int())
    #: an environment that rolls back this many epochs in a row stops the run with a clear error
    #: (training is unstable: a snapshot cannot help); 0 never stops
    max_consecutive_rollbacks: int = attrs.field(default=5, validator=non_negative_int())


@attrs.frozen
class FaultPoint:
    """A (round, epoch, env) at which a fault is injected."""

    epoch: int = attrs.field(validator=non_negative_int())
    round: int = attrs.field(default=0, validator=non_negative_int())
    env: int = attrs.field(default=0, validator=non_negative_int())


@attrs.frozen
class FaultsSection:
    """``[faults]``: deliberate faults for testing recovery.

    ``host_nan`` fills the host's first parameter with NaN before that epoch's training;
    ``abort`` stops the run after that epoch's checkpoint as if it had been killed.
    """

    host_nan: tuple[FaultPoint, ...] = ()
    abort: FaultPoint | None = None


@attrs.frozen
class PluginChoice:
    """A registered component chosen by ``name`` and its structured options."""

    name: str
    options: Any


@attrs.frozen
class RunConfig:
    """A whole, validated run configuration."""

    run: RunSection
    training: TrainingSection
    morphogenesis: MorphogenesisSection
    governor: GovernorSection
    faults: FaultsSection
    anomalies: AnomalyThresholds
    task: PluginChoice
    host: PluginChoice
    policy: PluginChoice
    reward: PluginChoice
    seed_family_options: dict[str, Any]
    sinks: dict[str, Any]
    source: str | None = None


CORE_SECTIONS: dict[str, type] = {
    "run": RunSection,
    "training": TrainingSection,
    "morphogenesis": MorphogenesisSection,
    "governor": GovernorSection,
    "faults": FaultsSection,
    "anomalies": AnomalyThresholds,
}
PLUGIN_SECTIONS: dict[str, str] = {"task": "tasks", "host": "hosts", "policy": "policies", "reward": "rewards"}
TABLE_SECTIONS: dict[str, str] = {"seed_families": "seed_families", "sinks": "telemetry_sinks"}
#: sections renamed in 0.2.0: the old name is an error that names the new one
RENAMED_SECTIONS: dict[str, str] = {"blueprints": "seed_families"}
DEFAULT_REWARD = "basic"
#: The sink a config without a ``[sinks]`` section gets, when a plugin registers it; without it, a run
#: has no sinks (``events.jsonl`` is written by the core whatever the sinks).
DEFAULT_SINK = "console"


def default_sinks(manager: PluginManager) -> dict[str, dict[str, Any]]:
    """``{"console": {}}`` when a sink called ``console`` is registered (unambiguously), else no sinks."""
    try:
        manager.registry.get("telemetry_sinks", DEFAULT_SINK)
    except (KeyError, EsperError):
        return {}
    return {DEFAULT_SINK: {}}


def _registered(manager: PluginManager, kind: str, name: str) -> tuple[Any | None, str | None]:
    """(the entry called ``name``, plain or ``plugin:name``, None) or (None, why it cannot be used)."""
    try:
        return manager.registry.get(kind, name), None
    except KeyError:
        return None, manager.registry.unknown_message(kind, name) + manager.failure_note()
    except EsperError as exc:  # a plain name two plugins registered: names both, and the spellings
        return None, str(exc)

# --------------------------------------------------------------------------------------------------
# strict structuring


def _strict_int(value: Any, _type: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _strict_float(value: Any, _type: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _strict_str(value: Any, _type: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _strict_bool(value: Any, _type: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _is_sequence_type(type_: Any) -> bool:
    return typing.get_origin(type_) in (tuple, list)


def make_converter() -> cattrs.Converter:
    """A cattrs converter that rejects extra keys and never coerces: 2.5 is not an int, "abc" is not
    a list of characters."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(bool, _strict_bool)
    inner = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for primitive, hook in ((int, _strict_int), (float, _strict_float), (str, _strict_str), (bool, _strict_bool)):
        inner.register_structure_hook(primitive, hook)

    def sequence_hook_factory(type_: Any) -> Any:
        structure_items = inner.get_structure_hook(type_)

        def structure_sequence(value: Any, _type: Any) -> Any:
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"expected an array, got {value!r}")
            return structure_items(value, type_)

        return structure_sequence

    converter.register_structure_hook_factory(_is_sequence_type, sequence_hook_factory)
    return converter


converter = make_converter()


def _format_path(section: str, path: list[str]) -> str:
    where = f"[{section}]"
    if not path:
        return where
    text = ""
    for part in path:
        text += part if part.startswith("[") else (f".{part}" if text else part)
    return f"{where} {text}:"


def _walk_errors(exc: BaseException, section: str, path: list[str], cls: type | None) -> Iterator[str]:
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [field.name for field in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        prefix = f"[{section}]" + (f" {'.'.join(path)}:" if path else "")
        renamed = getattr(exc.cl, "RENAMED_KEYS", {})
        for key in sorted(exc.extra_fields):
            if key in renamed:
                yield f"{prefix} '{key}' was renamed to '{renamed[key]}' in 0.2.0"
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            yield f"{prefix} unknown key '{key}'{hint}"
        return
    if isinstance(exc, BaseValidationError):
        with_notes, without_notes = exc.group_exceptions()
        for sub, note in with_notes:
            if isinstance(note, AttributeValidationNote):
                yield from _walk_errors(sub, section, [*path, note.name], None)
            elif isinstance(note, IterableValidationNote):
                yield from _walk_errors(sub, section, [*path, f"[{note.index}]"], None)
            else:
                yield from _walk_errors(sub, section, path, None)
        for sub in without_notes:
            yield from _walk_errors(sub, section, path, None)
        return
    message = str(exc) if str(exc) else type(exc).__name__
    if isinstance(exc, InvalidValue):
        message = exc.reason
    elif isinstance(exc, KeyError):
        message = f"missing required key {exc}"
    yield f"{_format_path(section, path)} {message}"


def _validator_message(exc: Exception, name: str) -> str:
    """The reason a validator rejected field ``name``: the structured ``InvalidValue.reason`` of the
    shared validators; for any other validator its own message, without a leading field name."""
    if isinstance(exc, InvalidValue):
        return exc.reason
    text = str(exc) or type(exc).__name__
    for prefix in (f"'{name}' ", f"{name} "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _check_validators(instance: Any, section: str, path: list[str]) -> Iterator[str]:
    """Run every attrs validator of ``instance`` (recursively) and yield each failure with its path."""
    for field in attrs.fields(type(instance)):
        value = getattr(instance, field.name)
        if field.validator is not None:
            try:
                field.validator(instance, field, value)
            except (ValueError, TypeError) as exc:
                yield f"{_format_path(section, [*path, field.name])} {_validator_message(exc, field.name)}"
        if attrs.has(type(value)):
            yield from _check_validators(value, section, [*path, field.name])
        elif isinstance(value, tuple):
            for index, item in enumerate(value):
                if attrs.has(type(item)):
                    yield from _check_validators(item, section, [*path, field.name, f"[{index}]"])


def _raw_field_problems(data: dict[str, Any], cls: type, section: str) -> list[str]:
    """The validators of the fields given in ``data``, run on the raw values (when a check across fields
    failed, a field's own problem, e.g. a non-finite number, is the one to report)."""
    problems = []
    for field in attrs.fields(cls):
        if field.name in data and field.validator is not None:
            try:
                field.validator(None, field, data[field.name])
            except (ValueError, TypeError) as exc:
                problems.append(f"{_format_path(section, [field.name])} {_validator_message(exc, field.name)}")
    return problems


def _renamed_key_problems(data: dict[str, Any], cls: type, where: str) -> Iterator[str]:
    """A key ``cls`` declares renamed (``RENAMED_KEYS``, old -> new), here or in a list of nested records."""
    renamed = getattr(cls, "RENAMED_KEYS", {})
    for key in data:
        if key in renamed:
            yield f"{where} '{key}' was renamed to '{renamed[key]}' in 0.2.0"
    if not attrs.has(cls):
        return
    for field in attrs.fields(cls):
        value = data.get(field.name)
        item_types = [arg for arg in getattr(field.type, "__args__", ()) if attrs.has(arg)]
        if item_types and isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    inner = f"{where[:-1]} {field.name}[{index}]:" if where.endswith(":") else f"{where} {field.name}[{index}]:"
                    yield from _renamed_key_problems(item, item_types[0], inner)


def structure_section(data: Any, cls: type, section: str) -> tuple[Any | None, list[str]]:
    """Structure ``data`` into ``cls``; return (instance or None, problems with paths)."""
    if not isinstance(data, dict):
        return None, [f"[{section}] must be a table, got {type(data).__name__}"]
    renamed = list(_renamed_key_problems(data, cls, f"[{section}]"))
    if renamed:
        return None, renamed
    across_fields: Exception | None = None
    with attrs.validators.disabled():
        try:
            instance = converter.structure(data, cls)
        except (BaseValidationError, ForbiddenExtraKeysError) as exc:
            problems = list(_walk_errors(exc, section, [], cls))
            rest = _validate_the_rest(data, cls, section, exc)
            raw = [] if rest or _failed_fields(exc) else _raw_field_problems(data, cls, section)
            if raw:  # a check across fields failed on a value that is itself invalid: report the value
                return None, [problem for problem in problems if "unknown key" in problem] + raw
            return None, problems + rest
        except (TypeError, ValueError) as exc:  # a check across fields (``__attrs_post_init__``) failed
            across_fields = exc
    if across_fields is not None:  # validators run outside the disabled block
        return None, _raw_field_problems(data, cls, section) or [f"[{section}] {across_fields}"]
    problems = list(_check_validators(instance, section, []))
    return (None if problems else _absolute_paths(instance)), problems


def _failed_fields(exc: BaseException) -> set[str]:
    """Top-level field names that failed to structure."""
    failed: set[str] = set()
    if isinstance(exc, BaseValidationError):
        with_notes, _without = exc.group_exceptions()
        for _sub, note in with_notes:
            if isinstance(note, AttributeValidationNote):
                failed.add(note.name)
    return failed


def _validate_the_rest(data: dict[str, Any], cls: type, section: str, exc: BaseException) -> list[str]:
    """Range problems of the fields that did structure, so that one bad key does not hide the others.

    Unknown keys and badly typed fields are set aside (their problems are already reported), the rest is
    structured with defaults standing in, and validators run for the fields the user actually gave.
    """
    known = {field.name for field in attrs.fields(cls)}
    failed = _failed_fields(exc)
    kept = {key: value for key, value in data.items() if key in known and key not in failed}
    with attrs.validators.disabled():
        try:
            instance = converter.structure(kept, cls)
        except (BaseValidationError, ForbiddenExtraKeysError, TypeError, ValueError):
            return []  # a required field is missing: already reported
    prefixes = tuple(f"[{section}] {key}{tail}" for key in kept for tail in (":", "[", "."))
    return [problem for problem in _check_validators(instance, section, []) if problem.startswith(prefixes)]


# --------------------------------------------------------------------------------------------------
# loading


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``; ``ConfigError`` naming the file for anything that is not a readable
    UTF-8 TOML file (missing, a directory, unreadable, binary, malformed, nested beyond reason)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise ConfigError([f"config file '{path}' does not exist"]) from None
    except IsADirectoryError:
        raise ConfigError(["is a directory, not a TOML config file"], source=str(path)) from None
    except OSError as exc:
        raise ConfigError([f"cannot be read: {exc.strerror or exc}"], source=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [f"not a TOML file: line {line} is not UTF-8 text (byte {exc.start}: {exc.reason})"], source=str(path)
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"malformed TOML: {exc}"], source=str(path)) from None
    except RecursionError:
        raise ConfigError(["malformed TOML: arrays or tables nested too deeply"], source=str(path)) from None


def load_config(path: str | Path, manager: PluginManager) -> RunConfig:
    """Read and validate a TOML run config; raise ``ConfigError`` listing every problem."""
    path = Path(path)
    return parse_config(read_toml(path), manager, source=str(path))


def parse_config(data: dict[str, Any], manager: PluginManager, source: str | None = None) -> RunConfig:
    problems: list[str] = []
    known_sections = [*CORE_SECTIONS, *PLUGIN_SECTIONS, *TABLE_SECTIONS]
    if "experiment" in data:
        problems.append("[experiment] describes several runs: run it with `esper run` (it is handled before this parser)")
    for key in data:
        if key in RENAMED_SECTIONS:
            problems.append(f"section [{key}] was renamed to [{RENAMED_SECTIONS[key]}] in 0.2.0 "
                            f"(write [{RENAMED_SECTIONS[key]}.NAME])")
        elif key not in known_sections:
            close = difflib.get_close_matches(key, known_sections, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            problems.append(f"unknown section [{key}]{hint}; sections: {', '.join(known_sections)}")

    core: dict[str, Any] = {}
    for section, cls in CORE_SECTIONS.items():
        instance, section_problems = structure_section(data.get(section, {}), cls, section)
        problems.extend(section_problems)
        core[section] = instance

    chosen: dict[str, PluginChoice | None] = {}
    for section, kind in PLUGIN_SECTIONS.items():
        table = data.get(section)
        if table is not None and not isinstance(table, dict):
            problems.append(f"[{section}] must be a table, got {type(table).__name__}")
            chosen[section] = None
            continue
        table = dict(table or {})
        name = table.pop("name", None)
        if name is None:
            if section == "host":
                task_name = (data.get("task") or {}).get("name") if isinstance(data.get("task"), dict) else None
                task_kind = _registered(manager, "tasks", task_name)[0] if isinstance(task_name, str) else None
                if task_kind is None:
                    chosen[section] = None  # the [task] problem is already reported
                    continue
                name = task_kind.default_host
            elif section == "reward":
                name = DEFAULT_REWARD
            else:
                problems.append(f"[{section}] missing required key 'name'")
                chosen[section] = None
                continue
        if not isinstance(name, str):
            problems.append(f"[{section}] name: expected a string, got {name!r}")
            chosen[section] = None
            continue
        entry, problem = _registered(manager, kind, name)
        if entry is None:
            problems.append(f"[{section}] {problem}")
            chosen[section] = None
            continue
        options, option_problems = structure_section(table, entry.config_class, section)
        problems.extend(option_problems)
        chosen[section] = PluginChoice(name=name, options=options) if options is not None else None

    tables: dict[str, dict[str, Any]] = {}
    for section, kind in TABLE_SECTIONS.items():
        raw = data.get(section, default_sinks(manager) if section == "sinks" else {})
        if not isinstance(raw, dict):
            problems.append(f"[{section}] must be a table, got {type(raw).__name__}")
            continue
        resolved: dict[str, Any] = {}
        spelled: dict[int, str] = {}  # id(entry) -> the first name it was given under
        for name, options in raw.items():
            label = f"{section}.{name}"
            entry, problem = _registered(manager, kind, name)
            if entry is None:
                problems.append(f"[{label}] {problem}")
                continue
            if id(entry) in spelled:
                problems.append(f"[{label}] names the same {KINDS[kind][2]} as [{section}.{spelled[id(entry)]}]")
                continue
            spelled[id(entry)] = name
            if options is True:
                options = {}
            instance, option_problems = structure_section(options, entry.config_class, label)
            problems.extend(option_problems)
            if instance is not None:
                resolved[name] = instance
        tables[section] = resolved

    morphogenesis = core.get("morphogenesis")
    if morphogenesis is not None:
        families = []
        for name in morphogenesis.seed_families:
            family, problem = _registered(manager, "seed_families", name)
            if problem is not None:
                problems.append(f"[morphogenesis] seed_families: {problem}")
            else:
                families.append(id(family))
        if len(set(morphogenesis.seed_families)) != len(morphogenesis.seed_families) or len(set(families)) != len(families):
            problems.append("[morphogenesis] seed_families: names must be unique (a plugin:name spelling counts as its name)")
        if len(set(morphogenesis.slots)) != len(morphogenesis.slots):
            problems.append("[morphogenesis] slots: slot ids must be unique")

    if problems:
        raise ConfigError(problems, source=source)
    return RunConfig(
        task=chosen["task"],
        host=chosen["host"],
        policy=chosen["policy"],
        reward=chosen["reward"],
        seed_family_options=tables["seed_families"],
        sinks=tables["sinks"],
        source=source,
        **core,
    )


# --------------------------------------------------------------------------------------------------
# writing


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _drop_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(item) for item in value]
    return value


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The fully resolved config (every default filled in) as TOML-ready data."""
    data: dict[str, Any] = {}
    for section in CORE_SECTIONS:
        data[section] = converter.unstructure(getattr(config, section))
    for section in PLUGIN_SECTIONS:
        choice: PluginChoice = getattr(config, section)
        data[section] = {"name": choice.name, **converter.unstructure(choice.options)}
    data["seed_families"] = {name: converter.unstructure(opts) for name, opts in config.seed_family_options.items()}
    data["sinks"] = {name: converter.unstructure(opts) for name, opts in config.sinks.items()}
    return _drop_none(data)


def write_config(config: RunConfig, path: Path) -> None:
    path.write_text(tomli_w.dumps(config_to_dict(config)), encoding="utf-8")
