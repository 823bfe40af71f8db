"""The conformance kit plugin authors run on their own components (seed families, hosts, sinks, tasks)."""

from esper_core.testing.conformance import (
    ConformanceError,
    check_host_family,
    check_ladder_family,
    check_seed_family,
    check_sink_kind,
    check_task_kind,
    sample_events,
)

__all__ = [
    "ConformanceError",
    "check_host_family",
    "check_ladder_family",
    "check_seed_family",
    "check_sink_kind",
    "check_task_kind",
    "sample_events",
]
