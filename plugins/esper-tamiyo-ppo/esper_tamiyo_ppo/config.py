"""Options of the ``ppo`` policy (its ``[policy]`` table) and the network sizes its presets resolve to."""

from __future__ import annotations

import math
from typing import Any

import attrs

from esper_core.config import path_field
from esper_core.leyline import HEADS
from esper_core.validators import (
    InvalidValue,
    in_range,
    non_negative,
    non_negative_int,
    one_of,
    optional,
    positive,
    positive_int,
    probability,
)


@attrs.frozen
class NetworkSizes:
    """Widths of Policy V2 (see the README's network diagram)."""

    feature_dim: int
    lstm_hidden: int
    slot_dim: int
    blueprint_embed_dim: int
    action_embed_dim: int
    head_hidden: int

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


#: Named size sets. ``baseline`` is the roadmap's Policy V2 (512-wide features, a 512-unit LSTM);
#: ``cpu`` is small enough to train on a laptop core and is the default.
PRESETS: dict[str, NetworkSizes] = {
    "cpu": NetworkSizes(
        feature_dim=64, lstm_hidden=64, slot_dim=32, blueprint_embed_dim=8, action_embed_dim=8, head_hidden=64
    ),
    "baseline": NetworkSizes(
        feature_dim=512, lstm_hidden=512, slot_dim=128, blueprint_embed_dim=16, action_embed_dim=16, head_hidden=256
    ),
}

_SIZE_FIELDS: tuple[str, ...] = tuple(field.name for field in attrs.fields(NetworkSizes))


def _finite_non_negative(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= 0.0


def _head_weights(_instance: Any, attribute: attrs.Attribute[Any], value: dict[str, float]) -> None:
    unknown = sorted(set(value) - set(HEADS))
    if unknown:
        raise InvalidValue(attribute.name, f"unknown head(s) {', '.join(unknown)}; heads: {', '.join(HEADS)}", value)
    bad = sorted(head for head, weight in value.items() if not _finite_non_negative(weight))
    if bad:
        raise InvalidValue(
            attribute.name, f"weights must be finite and >= 0; got {', '.join(f'{h}={value[h]}' for h in bad)}", value
        )


def _path(_instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise InvalidValue(attribute.name, f"must be a non-empty path, got {value!r}", value)


_flag = attrs.validators.instance_of(bool)


@attrs.frozen(kw_only=True)
class PPOConfig:
    """Every option of the ``ppo`` policy; the README documents each one with its default."""

    # -- network ------------------------------------------------------------------------------------
    preset: str = attrs.field(default="cpu", validator=one_of(*PRESETS))
    feature_dim: int | None = attrs.field(default=None, validator=optional(positive_int()))
    lstm_hidden: int | None = attrs.field(default=None, validator=optional(positive_int()))
    slot_dim: int | None = attrs.field(default=None, validator=optional(positive_int()))
    blueprint_embed_dim: int | None = attrs.field(default=None, validator=optional(positive_int()))
    action_embed_dim: int | None = attrs.field(default=None, validator=optional(positive_int()))
    head_hidden: int | None = attrs.field(default=None, validator=optional(positive_int()))

    # -- learning control ---------------------------------------------------------------------------
    learn: bool = attrs.field(default=True, validator=_flag)
    checkpoint: str | None = path_field(default=None, validator=_path)
    deterministic: bool = attrs.field(default=False, validator=_flag)

    # -- observation normalisation --------------------------------------------------------------------
    normalize_observations: bool = attrs.field(default=True, validator=_flag)
    observation_clip: float = attrs.field(default=10.0, validator=positive())
    #: rewards are clipped to ±this before they enter the buffer (None: no clip); the episode return
    #: reported in telemetry is the unclipped sum
    reward_clip: float | None = attrs.field(default=10.0, validator=optional(positive()))

    # -- PPO --------------------------------------------------------------------------------------------
    learning_rate: float = attrs.field(default=3e-4, validator=positive())
    gamma: float = attrs.field(default=0.99, validator=probability())
    gae_lambda: float = attrs.field(default=0.95, validator=probability())
    rounds_per_update: int = attrs.field(default=1, validator=positive_int())
    #: an update waits (beyond ``rounds_per_update``) until it holds at least this many decisions; a round
    #: holds envs x (episode_length - 1), so small runs accumulate rounds rather than update on a few dozen
    min_decisions_per_update: int = attrs.field(default=128, validator=non_negative_int())
    update_epochs: int = attrs.field(default=4, validator=positive_int())
    num_minibatches: int = attrs.field(default=4, validator=positive_int())
    sequence_length: int = attrs.field(default=0, validator=non_negative_int())
    normalize_advantages: bool = attrs.field(default=True, validator=_flag)
    clip_coef: float = attrs.field(default=0.2, validator=positive())
    value_clip: float | None = attrs.field(default=None, validator=optional(positive()))
    vf_coef: float = attrs.field(default=0.5, validator=non_negative())
    q_coef: float = attrs.field(default=0.5, validator=non_negative())
    entropy_coef: float = attrs.field(default=0.01, validator=non_negative())
    entropy_head_weights: dict[str, float] = attrs.field(factory=dict, validator=_head_weights)
    #: a head whose mean normalised entropy (H / ln(valid choices), over the steps where it is relevant)
    #: in a minibatch is below this fraction gets its entropy bonus multiplied by ``entropy_floor_boost``
    entropy_floor: float = attrs.field(default=0.25, validator=probability())
    entropy_floor_boost: float = attrs.field(default=5.0, validator=in_range(1.0, None))
    #: the ``subtarget`` head's own entropy coefficient (it replaces ``entropy_coef`` for that head; its
    #: ``entropy_head_weights`` entry still multiplies it); unset: ``entropy_coef``
    subtarget_entropy_coef: float | None = attrs.field(default=None, validator=optional(non_negative()))
    #: the ``subtarget`` head's own entropy floor (see ``entropy_floor``); unset: ``entropy_floor``
    subtarget_entropy_floor: float | None = attrs.field(default=None, validator=optional(probability()))
    #: before this round (0-based, counted by the engine) the policy masks ENABLE_SUBTARGET and
    #: DISABLE_SUBTARGET off itself: the new head's curriculum unlock (0: allowed from the start)
    subtarget_unlock_round: int = attrs.field(default=0, validator=non_negative_int())
    max_grad_norm: float = attrs.field(default=0.5, validator=positive())
    target_kl: float | None = attrs.field(default=None, validator=optional(positive()))

    def sizes(self) -> NetworkSizes:
        """The preset's sizes with every explicitly set size in its place."""
        overrides = {name: getattr(self, name) for name in _SIZE_FIELDS if getattr(self, name) is not None}
        return attrs.evolve(PRESETS[self.preset], **overrides)

    def head_weight(self, head: str) -> float:
        """The entropy-bonus weight of ``head`` (1.0 unless ``entropy_head_weights`` says otherwise)."""
        return self.entropy_head_weights.get(head, 1.0)

    def head_entropy_coef(self, head: str) -> float:
        """The entropy coefficient of ``head``: ``subtarget_entropy_coef`` for the subtarget head when
        set, ``entropy_coef`` otherwise (``head_weight`` multiplies it in the loss)."""
        if head == "subtarget" and self.subtarget_entropy_coef is not None:
            return self.subtarget_entropy_coef
        return self.entropy_coef

    def head_entropy_floor(self, head: str) -> float:
        """The entropy floor of ``head``: ``subtarget_entropy_floor`` for the subtarget head when set,
        ``entropy_floor`` otherwise."""
        if head == "subtarget" and self.subtarget_entropy_floor is not None:
            return self.subtarget_entropy_floor
        return self.entropy_floor
