"""The telemetry hub: every event goes to the run's ``events.jsonl`` record and to each sink."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

import attrs

from esper_core.leyline import TelemetryEvent, event_to_json


@attrs.frozen
class SinkContext:
    """Handed to a sink's ``build``: where the run lives and how long it is."""

    run_dir: Path
    run_name: str
    rounds: int
    envs: int
    episode_length: int
    start_round: int = 0


@runtime_checkable
class TelemetrySink(Protocol):
    """Receives every typed event of a run. ``close`` is called exactly once, even on failure."""

    def handle(self, event: TelemetryEvent) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TelemetryHub:
    """Writes each event as one JSON line to the run record (flushed per line), then fans it out.

    A sink that raises is reported once on stderr by name and detached; the run and the record go on.
    """

    def __init__(self, record_path: Path | None, sinks: dict[str, TelemetrySink] | None = None) -> None:
        self._record: IO[str] | None = (
            open(record_path, "a", encoding="utf-8", buffering=1) if record_path is not None else None
        )
        self.sinks: dict[str, TelemetrySink] = dict(sinks or {})
        self.failed_sinks: dict[str, str] = {}
        self.count = 0

    def emit(self, event: TelemetryEvent) -> None:
        if self._record is not None:
            self._record.write(event_to_json(event) + "\n")
        self.count += 1
        for name, sink in list(self.sinks.items()):
            try:
                sink.handle(event)
            except Exception as exc:  # isolation boundary: one broken sink must not end the run
                self._detach(name, exc)

    def record_bytes(self) -> int:
        """Size of the run record so far (after a flush): where a resume cuts it back to."""
        if self._record is None:
            return 0
        self._record.flush()
        return os.fstat(self._record.fileno()).st_size

    def flush(self) -> None:
        if self._record is not None:
            self._record.flush()
        for name, sink in list(self.sinks.items()):
            try:
                sink.flush()
            except Exception as exc:  # isolation boundary
                self._detach(name, exc)

    def close(self) -> None:
        for name, sink in list(self.sinks.items()):
            try:
                sink.close()
            except Exception as exc:  # isolation boundary
                self._detach(name, exc)
        self.sinks.clear()
        if self._record is not None:
            self._record.close()
            self._record = None

    def _detach(self, name: str, exc: Exception) -> None:
        self.failed_sinks[name] = f"{type(exc).__name__}: {exc}"
        sink = self.sinks.pop(name, None)
        if sink is not None:
            try:
                sink.close()
            except Exception as close_exc:  # isolation boundary: it already failed once
                self.failed_sinks[name] += f"; close failed too: {type(close_exc).__name__}: {close_exc}"
        print(f"esper: telemetry sink '{name}' failed and was detached: {type(exc).__name__}: {exc}", file=sys.stderr)
