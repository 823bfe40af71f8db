"""esper-sinks: the first-party Esper telemetry sinks (console, jsonl, tensorboard), registered by ``esper_sinks.plugin``."""

__version__ = "0.1.0"
