"""Telemetry (Karn/Nissa): the hub, the sink interface, and run reports."""

from esper_core.telemetry.hub import SinkContext, TelemetryHub, TelemetrySink

__all__ = ["SinkContext", "TelemetryHub", "TelemetrySink"]
