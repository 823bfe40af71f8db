"""The error types Esper raises for bad input and impossible states, each carrying a user-facing line."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EsperError",
    "LifecycleError",
    "PluginError",
    "RunAborted",
    "RunLocked",
    "SeedContractError",
    "TrainingUnstable",
]


class EsperError(Exception):
    """Base class: the message is one line a user can act on; the CLI prints it without a traceback."""

    exit_code = 1


class ConfigError(EsperError):
    """A run configuration is malformed or invalid. Carries every problem found, each with its path."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = f"{where}{self.problems[0]}"
        else:
            lines = "\n".join(f"  {problem}" for problem in self.problems)
            message = f"{where}{len(self.problems)} problems in the configuration:\n{lines}"
        super().__init__(message)


class PluginError(EsperError):
    """A plugin could not be loaded or registered something invalid (names the plugin)."""

    exit_code = 2


class DataError(EsperError):
    """A task's data is missing or malformed (names the file or folder)."""

    exit_code = 2


class CheckpointError(EsperError):
    """A checkpoint is missing, corrupt or was not written by Esper (names the file)."""

    exit_code = 2


class LifecycleError(EsperError):
    """A seed lifecycle operation that the transition table forbids (a bug in the caller)."""


class RunAborted(EsperError):
    """A run was stopped on purpose (fault injection or interrupt); its data up to here is on disk."""

    exit_code = 3


class TrainingUnstable(EsperError):
    """An environment kept diverging after every governor rollback; the run stops with its data on disk."""

    exit_code = 1


class SeedContractError(PluginError):
    """A seed family built something that breaks the seed contract (names the family and its plugin).

    Raised when a seed is germinated: ``build`` returned no module, or the seed's output on the probe
    batch differs from its input in shape, dtype or device.
    """

    def __init__(self, message: str, *, family: str, plugin: str | None) -> None:
        self.family = family
        self.plugin = plugin
        super().__init__(message)


class RunLocked(EsperError):
    """Another process holds the run directory's lock (names the holder's PID)."""

    exit_code = 2
