"""The ``esper`` command line: run, validate, plugins, report."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from esper_core import __version__
from esper_core.config import parse_config, read_toml
from esper_core.errors import ConfigError, EsperError
from esper_core.plugins import PluginManager

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError([f"--set {text!r}: expected SECTION.KEY=VALUE"])
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if len(path) < 2:
        raise ConfigError([f"--set {text!r}: the key needs a section, e.g. run.envs=2"])
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def _apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError([f"--set {text!r}: '{part}' is not a table"])
            node = child
        node[path[-1]] = value
    return data


def _read_config(config_path: str) -> dict[str, Any]:
    """The TOML config at ``config_path``; anything but a readable UTF-8 TOML file is one ConfigError line."""
    path = Path(config_path)
    if path.is_dir():
        raise ConfigError([f"config '{path}' is a directory, not a TOML file"])
    try:
        return read_toml(path)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"config file '{path}' is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
             "a TOML config is UTF-8"]
        ) from None
    except OSError as exc:
        raise ConfigError([f"config file '{path}' cannot be read: {exc.strerror or type(exc).__name__}"]) from None


def _warn_failures(manager: PluginManager, console: Console) -> None:
    for failure in manager.failures:
        console.print(f"[yellow]esper: warning: {failure.describe()}[/yellow]", highlight=False)


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from esper_core.experiments import is_experiment_dir, resume_experiment, run_experiment
    from esper_core.tolaria.engine import resume_run, start_run

    manager = PluginManager()
    _warn_failures(manager, console)

    def announce(run_dir: Path) -> None:
        threads = torch.get_num_threads()
        console.print(f"run directory: {run_dir} ({threads} torch thread{'s' if threads != 1 else ''})", highlight=False)

    if args.resume:
        if args.config or args.set:
            raise ConfigError(["--resume continues a run with its saved config; give no CONFIG or --set"])
        target = Path(args.resume)
        if is_experiment_dir(target):
            out_dir = resume_experiment(target, manager)
            _print_comparison(out_dir, console)
        else:
            out_dir = resume_run(target, manager)
    else:
        if not args.config:
            raise ConfigError(["esper run needs a CONFIG file (or --resume RUN_DIR)"])
        data = _apply_overrides(_read_config(args.config), args.set)
        if "experiment" in data:
            out_dir = run_experiment(data, manager, source=args.config, on_dir=announce)
            _print_comparison(out_dir, console)
        else:
            config = parse_config(data, manager, source=args.config)
            if not config.sinks and "sinks" not in data:
                console.print("no [sinks] section and no console sink installed: events go to events.jsonl only",
                              highlight=False, markup=False)
            out_dir = start_run(config, manager, on_run_dir=announce)
    console.print(f"finished: {out_dir}", highlight=False)
    return 0


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_comparison(exp_dir: Path, console: Console) -> None:
    from esper_core.experiments import compare, comparison_table

    header, *rows = comparison_table(compare(exp_dir))
    table = Table(title=f"Experiment {exp_dir.name}: arms side by side (same seeds, same data order)")
    table.add_column(header[0])
    for name in header[1:]:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from esper_core.experiments import parse_experiment
    from esper_core.tolaria.engine import build_policy_and_reward, prepare

    manager = PluginManager()
    _warn_failures(manager, console)
    data = _apply_overrides(_read_config(args.config), args.set)
    if "experiment" in data:
        configs = parse_experiment(data, manager, source=args.config).arms
    else:
        configs = {"": parse_config(data, manager, source=args.config)}
    for arm, config in configs.items():
        setup = prepare(config, manager)
        build_policy_and_reward(setup, manager)
        label = f" arm '{arm}'" if arm else ""
        console.print(
            f"ok: {args.config}{label}: task {config.task.name} ({setup.task.info.train_size} train / "
            f"{setup.task.info.val_size} val), host {config.host.name} ({setup.host_params:,} params, "
            f"slots {', '.join(setup.slot_config.slot_ids)}), seed families {', '.join(setup.seed_families)}, "
            f"policy {config.policy.name}, reward {config.reward.name}, "
            f"{config.run.rounds} round(s) x {config.run.envs} env(s) x {config.run.episode_length} epochs",
            highlight=False,
        )
    return 0


def cmd_plugins(args: argparse.Namespace, console: Console) -> int:
    manager = PluginManager()
    status = manager.strict_exit_code() if args.strict else 0
    if args.json:
        print(json.dumps(manager.as_json(), indent=2))
        return status
    table = Table(title="Esper plugins")
    for column in ("plugin", "distribution", "version", "registers"):
        table.add_column(column)
    for info in manager.plugins:
        registered = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items())
        table.add_row(info.name + (" (built-in)" if info.builtin else ""), info.distribution or "-", info.version or "-", registered)
    console.print(table)
    for failure in manager.failures:
        console.print(f"[red]failed:[/red] {failure.describe()}", highlight=False)
    for clash in manager.clashes:
        console.print(f"[yellow]{escape(clash.describe())}[/yellow]", highlight=False)
    return status


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from esper_core.experiments import is_experiment_dir
    from esper_core.telemetry.report import (
        describe_anomalies,
        describe_internal_ops,
        load_events,
        plot_report,
        stage_duration_table,
        summarize_events,
    )

    run_dir = Path(args.run_dir)
    if is_experiment_dir(run_dir):
        _print_comparison(run_dir, console)
        return 0
    events = load_events(run_dir / "events.jsonl")
    summary = summarize_events(events)
    run = summary["run"]
    console.print(
        f"[bold]{run['name']}[/bold]: task {run['task']}, host {run['host']}, policy {run['policy']}, "
        f"seed {run['seed']}, {run['envs']} env(s); status {run['status']}, "
        f"{run['rounds_completed']} round(s), {run['wall_seconds']:.1f} s",
        highlight=False,
    )
    lifecycle = summary["lifecycle"]
    outcomes = Table(title="Lifecycle outcomes")
    for column in ("germinated", "blended", "fossilized", "pruned", "governor rollbacks"):
        outcomes.add_column(column, justify="right")
    outcomes.add_row(*(str(lifecycle[key]) for key in ("germinated", "blended", "fossilized", "pruned", "governor_rollbacks")))
    console.print(outcomes)
    if lifecycle["prune_reasons"]:
        console.print("prune reasons: " + ", ".join(f"{k} {v}" for k, v in lifecycle["prune_reasons"].items()), highlight=False)
    console.print(describe_internal_ops(summary), highlight=False)
    usage = Table(title="Seed family usage")
    for column in ("seed family", "germinated", "blended", "fossilized", "pruned", "mean contribution at fossilization"):
        usage.add_column(column, justify="right" if column != "seed family" else "left")
    for name, counts in summary["seed_families"].items():
        contribution = counts["mean_fossil_contribution"]
        usage.add_row(
            name, str(counts["germinated"]), str(counts["blended"]), str(counts["fossilized"]), str(counts["pruned"]),
            "-" if contribution is None else f"{contribution:+.4f}",
        )
    console.print(usage)
    rounds = Table(title="Rounds (final validation metric, loss and parameters per environment)")
    perplexity = summary["run"]["score_basis"] == "loss"  # a cross-entropy per token: exp(loss) is perplexity
    columns = ["round", "mean metric", "per env", "mean val loss"] + (["perplexity"] if perplexity else []) + ["mean params"]
    for column in columns:
        rounds.add_column(column, justify="right")
    for round_index, data in summary["rounds"].items():
        loss = data.get("mean_val_loss")
        cells = [round_index, f"{data['mean_metric']:.4f}", " ".join(f"{m:.4f}" for m in data["final_metrics"]),
                 _fmt(loss, ".4f")]
        if perplexity:
            cells.append("-" if loss is None or loss > 50 else f"{math.exp(loss):.2f}")
        rounds.add_row(*cells, f"{data['mean_params']:,.0f}")
    console.print(rounds)
    console.print(stage_duration_table(summary))
    console.print(describe_anomalies(summary), highlight=False)
    plot = plot_report(run_dir, events)
    console.print(f"plot: {plot}", highlight=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esper", description="Morphogenetic neural network training.")
    parser.add_argument("--version", action="version", version=f"esper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an experiment from a TOML config (or resume one)")
    run.add_argument("config", nargs="?", help="the TOML run config")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    run.add_argument("-s", "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a config value (TOML syntax), e.g. -s run.envs=4")
    run.set_defaults(handler=cmd_run)
    validate = commands.add_parser("validate", help="check a config and build its task, host and slots")
    validate.add_argument("config")
    validate.add_argument("-s", "--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    validate.set_defaults(handler=cmd_validate)
    plugins = commands.add_parser("plugins", help="list installed plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.add_argument("--strict", action="store_true",
                         help="exit 1 when any plugin (or any item of one) failed to load, e.g. to gate CI")
    plugins.set_defaults(handler=cmd_plugins)
    report = commands.add_parser("report", help="summarise a run directory (tables + report.png)")
    report.add_argument("run_dir")
    report.set_defaults(handler=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=False, soft_wrap=True)
    error_console = Console(stderr=True, soft_wrap=True)
    from esper_core.tolaria.engine import Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            return args.handler(args, console)
    except EsperError as exc:
        error_console.print(f"esper: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return exc.exit_code
    except Terminated:
        error_console.print("esper: terminated (SIGTERM)", highlight=False)
        return 143
    except KeyboardInterrupt:
        error_console.print("esper: interrupted", highlight=False)
        return 130
    except BrokenPipeError:  # e.g. `esper plugins --json | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
