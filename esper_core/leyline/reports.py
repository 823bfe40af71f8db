"""Per-slot, per-epoch state reports and seed metrics that Kasmina produces and policies consume."""

from __future__ import annotations

import attrs

from esper_core.leyline.actions import AlphaCurve, BlendStyle
from esper_core.leyline.stages import OCCUPIED_STAGES, SeedStage


@attrs.frozen
class SeedMetrics:
    """What has been measured about a seed. ``None`` means *not measured*, never zero.

    ``counterfactual_contribution`` is the task's score with the seed minus the score with the
    seed's alpha forced to 0, on the environment's fixed validation set. It is measured every epoch
    for a seed that is blended in (BLENDING, HOLDING) and for a fossil (FOSSILIZED), so a fossil's
    contribution stays current; an incubating seed has none. The score is the validation
    metric, or minus the validation loss for a task with ``score_basis = "loss"`` (language models):
    either way positive means the seed helps. ``score_at_germination`` and
    ``score_delta_since_germination`` are on the same score.
    """

    counterfactual_contribution: float | None = None
    contribution_velocity: float | None = None
    epochs_since_measured: int | None = None
    score_at_germination: float | None = None
    score_delta_since_germination: float | None = None
    seed_grad_norm: float | None = None
    host_grad_norm: float | None = None
    grad_finite: bool = True
    epochs_in_stage: int = 0
    seed_age_epochs: int = 0


@attrs.frozen
class SeedStateReport:
    """The observable state of one slot at the end of one epoch.

    **The size rule** (one rule for every size a user sees: reports, events, summaries, rent, ROI): a
    seed's size is its *parameters in use* — for a seed with a ladder the count at its current level
    (capacity built up front but switched off is not counted), for any other seed all its parameters,
    plus a learned gate if its blend style has one. ``seed_params`` and ``internal_effective_params``
    are that count; ``built_params`` is what the seed allocates (memory, never size). A model's size is
    the host's parameters plus the sizes of its live and fossilized seeds. ``effective_params`` is what
    rent is charged on (alpha x the size while live, the size once fossilized). For a seed with a
    ladder, ``internal_kind`` names its registered ladder kind (a ``LadderKind``; None without a
    ladder), ``internal_level`` of ``internal_max_level`` is the capacity in use;
    ``internal_last_direction`` (+1 grow, -1 shrink, 0 never) and ``epochs_since_internal_change``
    describe the last level change. For a ladder whose levels count equal groups of units (a
    ``LadderModule`` with ``internal_group_size``, e.g. the ``channel_groups`` kind),
    ``internal_group_size`` is the units per group (the last group may hold fewer) and
    ``internal_active_groups`` the groups in use, equal to ``internal_level``; for any other ladder, and
    for a slot without a ladder or without a seed, both are None: *not meaningful*, never a
    measurement of zero.

    For a seed with a subtarget inventory (an ``esper_core.kasmina.SubtargetInventory``, added in
    0.2.1), ``subtarget_kind`` names its registered ``SubtargetKind`` (None without an inventory or
    without a seed), ``subtarget_count`` is its K (0 without), ``subtarget_active_count`` the enabled
    groups, ``subtarget_active_mask`` the seed's own K entries (True = enabled; ``()`` without),
    ``subtarget_importance`` its K importance scores (``subtarget_importance()``, comparable within the
    seed only; ``()`` without) and ``epochs_since_subtarget_change`` the epochs since the last
    ENABLE/DISABLE_SUBTARGET or level change that moved the mask (None: never changed). Such a seed's
    size (``seed_params``, ``internal_effective_params``) is the parameters in use under its mask.

    **The levers** (what the action heads set, so a policy can see what it pulled): ``style`` is the
    blend style chosen at germination (the style head); ``blend_epochs`` the blend-in length in epochs
    chosen at germination (the tempo head; ``Tempo.epochs``), 0 with no seed; ``alpha_target`` and
    ``alpha_curve`` the target and shape of the current alpha schedule, or of the planned blend-in
    before ADVANCE (the alpha_target and alpha_curve heads of GERMINATE, SET_ALPHA_TARGET or a
    scheduled PRUNE), 0.0 and None with no seed; ``alpha_schedule_total_epochs`` the current
    schedule's length (the tempo on ADVANCE, the alpha_speed head's ``AlphaSpeed.epochs`` after
    SET_ALPHA_TARGET or a scheduled PRUNE), 0 with no schedule.
    """

    env_id: int
    slot_id: str
    stage: SeedStage
    seed_id: str | None = None
    blueprint_id: str | None = None
    style: BlendStyle | None = None
    alpha: float = 0.0
    alpha_target: float = 0.0
    alpha_curve: AlphaCurve | None = None
    blend_epochs: int = 0
    alpha_schedule_epochs_left: int = 0
    alpha_schedule_total_epochs: int = 0
    blend_out: bool = False
    seed_params: int = 0
    built_params: int = 0
    effective_params: float = 0.0
    embargo_epochs_left: int = 0
    internal_kind: str | None = None
    internal_level: int = 0
    internal_max_level: int = 0
    internal_effective_params: int = 0
    internal_group_size: int | None = None
    internal_active_groups: int | None = None
    internal_last_direction: int = 0
    epochs_since_internal_change: int | None = None
    subtarget_kind: str | None = None
    subtarget_count: int = 0
    subtarget_active_count: int = 0
    subtarget_active_mask: tuple[bool, ...] = ()
    subtarget_importance: tuple[float, ...] = ()
    epochs_since_subtarget_change: int | None = None
    metrics: SeedMetrics = attrs.Factory(SeedMetrics)

    @property
    def is_occupied(self) -> bool:
        return self.stage in OCCUPIED_STAGES
