"""Anomaly detection: gradient and policy pathologies, judged on numbers already measured, as typed events.

The functions are pure: they read numbers the engine has already brought to the host (the gradient
norms after an epoch's training, one device sync for all of them; the policy's ``end_episode``
metrics) and return event payloads; they never touch a tensor, so they add no host-device sync.

How the engine calls them (once per environment per epoch, after ``Environment.finish_training``, and
once per round, after ``Policy.end_episode``)::

    from esper_core.telemetry.anomalies import (
        AnomalyThresholds, GradientNorm, action_head_sizes, anomaly_events,
        detect_gradient_anomalies, detect_policy_anomalies,
    )

    norms = [GradientNorm.host_segment("host", host_norm)] + [
        GradientNorm.seed(slot.slot_id, seed_norm, seed_id=slot.seed_id, stage=slot.stage)
        for slot, seed_norm in measured_slots
    ]
    for event in anomaly_events(detect_gradient_anomalies(
        norms, thresholds, env_id=env.env_id, round_index=round_index, epoch=epoch
    )):
        hub.emit(event)

    metrics = policy.end_episode(round_index)
    for event in anomaly_events(detect_policy_anomalies(
        metrics, value_loss_history, thresholds, round_index=round_index,
        head_sizes=action_head_sizes(len(slot_ids), len(seed_families), subtarget_count),
    )):
        hub.emit(event)
    value_loss_history.append(metrics["value_loss"])  # when the policy reports one

``value_loss_history`` is the caller's list of earlier rounds' value losses (it belongs in the
checkpoint, so a resumed run judges exactly as an uninterrupted one).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

import attrs

from esper_core.leyline import ENUM_HEAD_SIZES, SeedStage, TelemetryEvent, TelemetryEventType
from esper_core.leyline.telemetry import GRADIENT_SITES, GradientAnomalyPayload, PolicyAnomalyPayload
from esper_core.tamiyo.policy import APPROX_KL_METRIC, ENTROPY_METRIC_PREFIX, VALUE_LOSS_METRIC
from esper_core.validators import in_range, positive, positive_int


@attrs.frozen
class AnomalyThresholds:
    """When a measured number is an anomaly.

    - ``exploding_grad_norm``: a gradient norm (a seed's, or a host segment's) above this;
    - ``vanishing_grad_norm``: a TRAINING seed's gradient norm below this (and above zero; exactly zero
      is ``dead_seed``);
    - ``entropy_collapse_fraction``: an action head's entropy below this fraction of its maximum,
      ``ln(head size)``; ``entropy_collapse_nats``: the bound in nats for a head whose size is not known;
    - ``value_loss_blowup_factor``: the value loss above this multiple of the median of the previous
      ``value_loss_window`` rounds' value losses, judged once ``value_loss_min_history`` rounds are known;
    - ``kl_spike``: the update's approximate KL above this.
    """

    exploding_grad_norm: float = attrs.field(default=1e3, validator=positive())
    vanishing_grad_norm: float = attrs.field(default=1e-7, validator=positive())
    entropy_collapse_fraction: float = attrs.field(
        default=0.05, validator=in_range(0, 1, low_inclusive=False, high_inclusive=False)
    )
    entropy_collapse_nats: float = attrs.field(default=0.01, validator=positive())
    value_loss_blowup_factor: float = attrs.field(default=10.0, validator=positive())
    value_loss_window: int = attrs.field(default=20, validator=positive_int())
    value_loss_min_history: int = attrs.field(default=3, validator=positive_int())
    kl_spike: float = attrs.field(default=0.1, validator=positive())

    def __attrs_post_init__(self) -> None:
        if self.vanishing_grad_norm >= self.exploding_grad_norm:
            raise ValueError(
                f"vanishing_grad_norm ({self.vanishing_grad_norm}) must be below exploding_grad_norm "
                f"({self.exploding_grad_norm})"
            )
        if self.value_loss_min_history > self.value_loss_window:
            raise ValueError(
                f"value_loss_min_history ({self.value_loss_min_history}) must not exceed value_loss_window "
                f"({self.value_loss_window})"
            )


@attrs.frozen
class GradientNorm:
    """One measured gradient norm: of a seed (``where="seed"``, ``name`` its slot id, with its seed id and
    stage) or of a part of the host (``where="host_segment"``, ``name`` the segment, ``"host"`` for all)."""

    where: str
    name: str
    norm: float
    seed_id: str | None = None
    stage: SeedStage | None = None

    def __attrs_post_init__(self) -> None:
        if self.where not in GRADIENT_SITES:
            raise ValueError(f"where must be one of {', '.join(GRADIENT_SITES)}, got {self.where!r}")
        if (self.where == "seed") != (self.stage is not None):
            raise ValueError(f"a seed's gradient norm needs its stage, and only a seed's has one ({self.name})")

    @classmethod
    def seed(cls, slot_id: str, norm: float, *, seed_id: str, stage: SeedStage) -> GradientNorm:
        return cls("seed", slot_id, norm, seed_id=seed_id, stage=stage)

    @classmethod
    def host_segment(cls, name: str, norm: float) -> GradientNorm:
        return cls("host_segment", name, norm)


def detect_gradient_anomalies(
    norms: Iterable[GradientNorm], thresholds: AnomalyThresholds, *, env_id: int, round_index: int, epoch: int
) -> list[GradientAnomalyPayload]:
    """At most one anomaly per measured norm, the first that applies: ``non_finite`` (NaN or infinite),
    ``exploding`` (above ``exploding_grad_norm``), and for a seed in TRAINING (which must learn from the
    host's gradient) ``dead_seed`` (exactly zero: no gradient reached it) or ``vanishing`` (below
    ``vanishing_grad_norm``). Blended seeds are not judged as dead or vanishing: a small alpha makes
    their gradient small by design."""
    found = []
    for measured in norms:
        kind: str | None = None
        threshold: float | None = None
        if not math.isfinite(measured.norm):
            kind = "non_finite"
        elif measured.norm > thresholds.exploding_grad_norm:
            kind, threshold = "exploding", thresholds.exploding_grad_norm
        elif measured.stage is SeedStage.TRAINING and measured.norm == 0.0:
            kind, threshold = "dead_seed", 0.0
        elif measured.stage is SeedStage.TRAINING and measured.norm < thresholds.vanishing_grad_norm:
            kind, threshold = "vanishing", thresholds.vanishing_grad_norm
        if kind is not None:
            found.append(
                GradientAnomalyPayload(
                    env_id=env_id, round=round_index, epoch=epoch, where=measured.where, name=measured.name,
                    kind=kind, value=float(measured.norm), threshold=threshold, seed_id=measured.seed_id,
                )
            )
    return found


def action_head_sizes(n_slots: int, n_seed_families: int, subtarget_count: int = 1) -> dict[str, int]:
    """How many choices each action head has in a run (``slot``, ``blueprint`` and ``subtarget`` depend on
    the run; ``subtarget_count`` is its K, 1 without inventories: a head that is then never judged)."""
    return {**ENUM_HEAD_SIZES, "slot": n_slots, "blueprint": n_seed_families, "subtarget": subtarget_count}


def detect_policy_anomalies(
    metrics: Mapping[str, float],
    previous_value_losses: Sequence[float],
    thresholds: AnomalyThresholds,
    *,
    round_index: int,
    head_sizes: Mapping[str, int] | None = None,
) -> list[PolicyAnomalyPayload]:
    """Anomalies in one update's metrics, read by the policy metrics contract
    (``Policy.end_episode``); a key the policy does not report is not judged.

    - ``entropy_collapse`` per ``entropy/<head>``: below ``entropy_collapse_fraction * ln(size)`` nats when
      ``head_sizes`` gives the head's size (a head with one choice is not judged: its entropy is always 0),
      below ``entropy_collapse_nats`` otherwise;
    - ``value_loss_blowup``: ``value_loss`` not finite, or above ``value_loss_blowup_factor`` times the
      median of the last ``value_loss_window`` finite values of ``previous_value_losses`` (oldest first);
    - ``kl_spike``: ``approx_kl`` not finite or above ``kl_spike``.
    """
    found = []
    for key, entropy in metrics.items():
        if not key.startswith(ENTROPY_METRIC_PREFIX):
            continue
        head = key.removeprefix(ENTROPY_METRIC_PREFIX)
        size = None if head_sizes is None else head_sizes.get(head)
        if size is not None and size <= 1:
            continue
        bound = thresholds.entropy_collapse_nats if size is None else thresholds.entropy_collapse_fraction * math.log(size)
        if entropy < bound:
            found.append(PolicyAnomalyPayload(round=round_index, kind="entropy_collapse", value=float(entropy),
                                              threshold=bound, head=head))
    if VALUE_LOSS_METRIC in metrics:
        value_loss = float(metrics[VALUE_LOSS_METRIC])
        history = [v for v in previous_value_losses if math.isfinite(v)][-thresholds.value_loss_window:]
        bound = None
        if len(history) >= thresholds.value_loss_min_history and statistics.median(history) > 0:
            bound = thresholds.value_loss_blowup_factor * statistics.median(history)
        if not math.isfinite(value_loss) or (bound is not None and value_loss > bound):
            found.append(PolicyAnomalyPayload(round=round_index, kind="value_loss_blowup", value=value_loss,
                                              threshold=bound))
    if APPROX_KL_METRIC in metrics:
        kl = float(metrics[APPROX_KL_METRIC])
        if not math.isfinite(kl) or kl > thresholds.kl_spike:
            found.append(PolicyAnomalyPayload(round=round_index, kind="kl_spike", value=kl, threshold=thresholds.kl_spike))
    return found


def anomaly_events(found: Iterable[GradientAnomalyPayload | PolicyAnomalyPayload]) -> list[TelemetryEvent]:
    """The payloads as events ready for ``TelemetryHub.emit``."""
    kinds = {GradientAnomalyPayload: TelemetryEventType.GRADIENT_ANOMALY, PolicyAnomalyPayload: TelemetryEventType.POLICY_ANOMALY}
    return [TelemetryEvent(kinds[type(payload)], payload) for payload in found]
