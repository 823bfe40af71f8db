"""TEMPORARY (issue 11 rename in progress): the old module name of ``esper_core.tamiyo.policy``."""

from esper_core.tamiyo.policy import (  # noqa: F401
    APPROX_KL_METRIC,
    ENTROPY_METRIC_PREFIX,
    VALUE_LOSS_METRIC,
    Controller,
    Policy,
    PolicyContext,
)
