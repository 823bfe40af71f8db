"""Obs V3: turns observations into fixed-layout feature tensors for learned policies; the layout is documented from here.

Every feature is a float. A value that has not been measured is never a silent 0: it is written as
``UNMEASURED`` and paired with a ``*_measured`` flag (1.0 measured, 0.0 not). Seed family identity is
not in the vectors: ``blueprint_ids`` carries it as integers for a learned embedding (0 = no seed,
``k + 1`` = the run's seed family ``k``, index ``k`` of the blueprint head).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs
import torch

from esper_core.errors import PluginError
from esper_core.leyline import (
    MAX_SURFACE_CODE,
    AlphaCurve,
    AlphaSpeed,
    BlendStyle,
    MAX_SUBTARGETS,
    LifecycleOp,
    SeedStage,
    SeedStateReport,
    Tempo,
)
from esper_core.registry import MAX_LADDER_CODE
from esper_core.tamiyo.observation import EnvObservation

#: The value written for anything not measured (always accompanied by a ``*_measured`` flag of 0).
UNMEASURED = -1.0
#: How many past epochs the metric and loss deltas look back.
HISTORY = 5
#: The longest alpha schedule a head can choose (Tempo.SLOW, AlphaSpeed.SLOW): schedule lengths are divided by it.
MAX_SCHEDULE_EPOCHS = max(*(tempo.epochs for tempo in Tempo), *(speed.epochs for speed in AlphaSpeed))


@attrs.frozen
class Feature:
    """One named block of the layout: ``size`` floats described by ``meaning``.

    ``per_subtarget`` marks a block of one float per index of the run's ``subtarget`` head: its size is
    the run's K (``EnvObservation.subtarget_count``), so the per-slot layout depends on K
    (``slot_layout``); in ``SLOT_FEATURES`` (the layout of a run without inventories, K = 1) it is 1.
    """

    name: str
    size: int
    meaning: str
    per_subtarget: bool = False

    def sized(self, subtarget_count: int) -> Feature:
        """This feature in the layout of a run whose subtarget head has ``subtarget_count`` entries."""
        return attrs.evolve(self, size=subtarget_count) if self.per_subtarget else self


def _signed_log(value: float) -> float:
    return math.copysign(math.log1p(abs(value)), value)


# -- base (per environment) features ---------------------------------------------------------------------

BASE_FEATURES: tuple[Feature, ...] = (
    Feature("epoch_progress", 1, "epoch / (episode_length - 1): 0 at the first epoch, 1 at the last"),
    Feature("epochs_left_norm", 1, "epochs left after this one / episode_length"),
    Feature("val_metric", 1, "validation metric of this epoch (accuracy: 0..1)"),
    Feature("val_loss", 1, "validation loss, signed log1p"),
    Feature("train_loss", 1, "mean training loss of this epoch, signed log1p; UNMEASURED after a rollback to the untrained model"),
    Feature("generalization_gap", 1, "validation loss minus training loss, signed log1p; UNMEASURED with train_loss"),
    Feature("train_loss_measured", 1, "1 if train_loss (and generalization_gap) is measured"),
    Feature("metric_delta", HISTORY, "val_metric now minus k epochs ago, k = 1..5 (UNMEASURED before the episode had k epochs)"),
    Feature("metric_delta_measured", HISTORY, "1 where metric_delta[k] is measured"),
    Feature("loss_delta", HISTORY, "validation loss now minus k epochs ago, signed log1p, k = 1..5"),
    Feature("loss_delta_measured", HISTORY, "1 where loss_delta[k] is measured"),
    Feature("stage_counts", len(SeedStage), "fraction of slots in each SeedStage, in enum order"),
    Feature("seeds_free_norm", 1, "(max_seeds - occupied slots) / max_seeds"),
    Feature("effective_params_norm", 1, "log1p(sum of slots' effective params / host params)"),
    Feature("last_op", len(LifecycleOp) + 1, "one-hot of the last action's op; the final entry means no action yet"),
    Feature("last_action_success", 1, "1 if the last action succeeded (or none was taken), else 0"),
    Feature("rolled_back", 1, "1 if the governor rolled this environment back this epoch"),
)

# -- per-slot subtarget features (Phase 3): last in the slot layout, so every other offset is the same for any K --

SUBTARGET_FEATURES: tuple[Feature, ...] = (
    Feature("subtarget_count_norm", 1, "the number of groups in the seed's subtarget inventory (its subtarget_count) / the run's subtarget head size K; 0 without an inventory"),
    Feature("subtarget_active_frac", 1, "enabled groups / max(the seed's subtarget_count, 1); 0 without an inventory"),
    Feature("subtarget_churn_norm", 1, "epochs since the seed's last subtarget change (ENABLE/DISABLE_SUBTARGET, or a level change that moved its mask) / episode_length, UNMEASURED if none"),
    Feature("subtarget_active_mask", 1, "one float per subtarget index i of the run's head: 1 if the seed's group i is enabled, 0 if disabled or beyond the seed's count (what DISABLE_SUBTARGET / ENABLE_SUBTARGET can pick)", per_subtarget=True),
    Feature("subtarget_importance_norm", 1, "one float per subtarget index i: the seed's importance score of group i (an EMA of its contribution, e.g. its output norm) / the largest among its enabled groups; 0 for a disabled or missing group, or when no enabled group has run yet", per_subtarget=True),
)

# -- per-slot features ------------------------------------------------------------------------------------

SLOT_FEATURES: tuple[Feature, ...] = (
    Feature("slot_order_norm", 1, "(the slot's InjectionSpec.order - the host's lowest) / the host's order span, over all the host's slots, enabled or not; 0 with one slot"),
    Feature("slot_surface_norm", 1, f"the registered code of the slot's surface (SurfaceKind.code) / MAX_SURFACE_CODE ({MAX_SURFACE_CODE}); the core's segment_boundary is 0"),
    Feature("stage", len(SeedStage), "one-hot of the slot's SeedStage, in enum order"),
    Feature("alpha", 1, "current blend weight"),
    Feature("alpha_target", 1, "where the current (or planned) alpha schedule goes; 0 with no seed"),
    Feature("alpha_schedule_progress", 1, "1 - epochs left / total epochs of the alpha schedule; 1 with no schedule"),
    Feature("blend_out", 1, "1 while a scheduled prune blends the seed out"),
    Feature("style", len(BlendStyle), "one-hot of the seed's BlendStyle (the style head), in enum order; 0s with no seed"),
    Feature("tempo_epochs_norm", 1, "blend-in epochs the tempo head chose at germination / MAX_SCHEDULE_EPOCHS (8); 0 with no seed"),
    Feature("alpha_schedule_epochs_norm", 1, "length of the current alpha schedule / MAX_SCHEDULE_EPOCHS (8): the tempo's after ADVANCE, the alpha_speed head's after SET_ALPHA_TARGET or a scheduled PRUNE (0 for INSTANT); 0 with no schedule"),
    Feature("alpha_curve", len(AlphaCurve), "one-hot of the AlphaCurve of the current (or planned) alpha schedule (the alpha_curve head), in enum order; 0s with no seed"),
    Feature("contribution", 1, "counterfactual contribution (metric with seed - without), UNMEASURED if never measured"),
    Feature("contribution_measured", 1, "1 if the seed's contribution has been measured"),
    Feature("contribution_velocity", 1, "change of the contribution between its last two measurements, UNMEASURED if fewer"),
    Feature("contribution_velocity_measured", 1, "1 if contribution_velocity is measured"),
    Feature("contribution_staleness", 1, "epochs since the contribution was last measured / episode_length, UNMEASURED if never"),
    Feature("score_delta_since_germination", 1, "the score now minus at germination, UNMEASURED with no seed"),
    Feature("score_delta_since_germination_measured", 1, "1 if score_delta_since_germination is measured"),
    Feature("seed_grad_norm", 1, "log1p of the seed's gradient norm on the epoch's last batch, UNMEASURED if not measured"),
    Feature("grad_ratio", 1, "log1p(seed grad norm / host grad norm), UNMEASURED if not measured"),
    Feature("grad_measured", 1, "1 if the seed's gradient norms are measured"),
    Feature("grad_finite", 1, "1 unless the seed's last measured gradient was NaN or Inf"),
    Feature("epochs_in_stage_norm", 1, "epochs in the current stage / episode_length"),
    Feature("seed_age_norm", 1, "epochs since germination / episode_length"),
    Feature("seed_params_norm", 1, "log1p(seed params / host params); seed params are the parameters in use (the size rule)"),
    Feature("embargo_left_norm", 1, "embargo epochs left / episode_length"),
    Feature("has_ladder", 1, "1 if the seed has an internal capacity ladder (GROW/SHRINK_INTERNAL apply)"),
    Feature("ladder_kind_norm", 1, f"the registered code of the seed's ladder kind (LadderKind.code) / MAX_LADDER_CODE ({MAX_LADDER_CODE}); 0 without a ladder"),
    Feature("internal_level_norm", 1, "internal_level / max(internal_max_level, 1); 0 without a ladder"),
    Feature("contribution_per_param", 1, "signed log1p(contribution / (seed params / host params)): contribution per unit of relative size in use, what rent is weighed against; UNMEASURED with contribution or with no seed"),
    Feature("epochs_since_internal_change_norm", 1, "epochs since the last level change / episode_length, UNMEASURED if none"),
    Feature("internal_last_direction", 1, "+1 if the last level change grew, -1 if it shrank, 0 if none"),
    *SUBTARGET_FEATURES,
)


def layout_size(features: Sequence[Feature]) -> int:
    return sum(feature.size for feature in features)


def slot_layout(subtarget_count: int = 1) -> tuple[Feature, ...]:
    """The per-slot layout of a run whose ``subtarget`` head has ``subtarget_count`` (K) entries: every
    per-subtarget block (last in the layout) is K floats wide. ``slot_layout(1) == SLOT_FEATURES``."""
    _check_subtarget_count(subtarget_count)
    return tuple(feature.sized(subtarget_count) for feature in SLOT_FEATURES)


def slot_size(subtarget_count: int = 1) -> int:
    """Floats per slot in the layout of a run whose subtarget head has ``subtarget_count`` entries."""
    return layout_size(slot_layout(subtarget_count))


def _check_subtarget_count(subtarget_count: int) -> None:
    if isinstance(subtarget_count, bool) or not isinstance(subtarget_count, int) or not (
        1 <= subtarget_count <= MAX_SUBTARGETS
    ):
        raise ValueError(
            f"Obs V3: subtarget_count (the run's subtarget head size K) must be an integer from 1 to "
            f"{MAX_SUBTARGETS}, got {subtarget_count!r}"
        )


BASE_SIZE = layout_size(BASE_FEATURES)
#: Floats per slot for a run without inventories (K = 1); ``slot_size(K)`` for any other run.
SLOT_SIZE = layout_size(SLOT_FEATURES)
#: Where the per-subtarget blocks start in a slot's row (they are the layout's last features).
SUBTARGET_BLOCKS_OFFSET = layout_size([feature for feature in SLOT_FEATURES if not feature.per_subtarget])
# subtarget_blocks writes the active mask, then the normalised importance, after every other feature
assert [feature.name for feature in SLOT_FEATURES if feature.per_subtarget] == [
    "subtarget_active_mask", "subtarget_importance_norm"
] and all(feature.per_subtarget for feature in SLOT_FEATURES[-2:])

#: Features renamed in 0.2.0 (old name -> name), for readers of layouts saved before (they hold the score)
RENAMED_FEATURES: dict[str, str] = {
    "metric_delta_since_germination": "score_delta_since_germination",
    "metric_delta_since_germination_measured": "score_delta_since_germination_measured",
}


def _one_hot(index: int, size: int) -> list[float]:
    values = [0.0] * size
    values[index] = 1.0
    return values


def _measured(value: float | None, transform: Callable[[float], float] = float) -> tuple[float, float]:
    if value is None:
        return UNMEASURED, 0.0
    return transform(value), 1.0


def base_features(observation: EnvObservation) -> list[float]:
    length = observation.episode_length
    metrics = observation.metric_history
    losses = observation.loss_history
    metric_deltas, metric_flags, loss_deltas, loss_flags = [], [], [], []
    for k in range(1, HISTORY + 1):
        if len(metrics) > k:
            metric_deltas.append(metrics[-1] - metrics[-1 - k])
            metric_flags.append(1.0)
        else:
            metric_deltas.append(UNMEASURED)
            metric_flags.append(0.0)
        if len(losses) > k:
            loss_deltas.append(_signed_log(losses[-1] - losses[-1 - k]))
            loss_flags.append(1.0)
        else:
            loss_deltas.append(UNMEASURED)
            loss_flags.append(0.0)
    slots = observation.slots
    stage_counts = [0.0] * len(SeedStage)
    for report in slots:
        stage_counts[int(report.stage)] += 1.0 / len(slots)
    effective = sum(report.effective_params for report in slots)
    last_op = (
        _one_hot(len(LifecycleOp), len(LifecycleOp) + 1)
        if observation.last_action is None
        else _one_hot(int(observation.last_action.op), len(LifecycleOp) + 1)
    )
    values = [
        observation.epoch / max(length - 1, 1),
        observation.epochs_left / length,
        observation.val_metric,
        _signed_log(observation.val_loss),
        *(
            (UNMEASURED, UNMEASURED, 0.0)
            if observation.train_loss is None
            else (_signed_log(observation.train_loss), _signed_log(observation.val_loss - observation.train_loss), 1.0)
        ),
        *metric_deltas,
        *metric_flags,
        *loss_deltas,
        *loss_flags,
        *stage_counts,
        (observation.max_seeds - observation.occupied_slots) / observation.max_seeds,
        math.log1p(effective / observation.host_params),
        *last_op,
        1.0 if observation.last_action_success else 0.0,
        1.0 if observation.rolled_back else 0.0,
    ]
    return values


def slot_features(
    report: SeedStateReport,
    *,
    episode_length: int,
    host_params: int,
    order_norm: float,
    surface_norm: float,
    ladder_kind_norm: float,
    subtarget_count: int = 1,
) -> list[float]:
    """One slot's features except the per-subtarget blocks (``subtarget_blocks`` builds those, batched)."""
    metrics = report.metrics
    has_seed = report.seed_id is not None and report.seed_params > 0
    if report.alpha_schedule_total_epochs > 0:
        progress = 1.0 - report.alpha_schedule_epochs_left / report.alpha_schedule_total_epochs
    else:
        progress = 1.0
    contribution, contribution_flag = _measured(metrics.counterfactual_contribution)
    if has_seed and metrics.counterfactual_contribution is not None:
        per_param = _signed_log(metrics.counterfactual_contribution * host_params / report.seed_params)
    else:
        per_param = UNMEASURED
    style = _one_hot(int(report.style), len(BlendStyle)) if has_seed and report.style is not None else [0.0] * len(BlendStyle)
    curve = (
        _one_hot(int(report.alpha_curve), len(AlphaCurve))
        if has_seed and report.alpha_curve is not None
        else [0.0] * len(AlphaCurve)
    )
    velocity, velocity_flag = _measured(metrics.contribution_velocity)
    staleness, _ = _measured(metrics.epochs_since_measured, lambda epochs: epochs / episode_length)
    delta, delta_flag = _measured(metrics.score_delta_since_germination if has_seed else None)
    if has_seed and metrics.seed_grad_norm is not None and metrics.host_grad_norm is not None:
        grad_norm = math.log1p(metrics.seed_grad_norm) if math.isfinite(metrics.seed_grad_norm) else UNMEASURED
        ratio = metrics.seed_grad_norm / metrics.host_grad_norm if metrics.host_grad_norm > 0 else 0.0
        grad_ratio = math.log1p(ratio) if math.isfinite(ratio) else UNMEASURED
        grad_flag = 1.0
    else:
        grad_norm, grad_ratio, grad_flag = UNMEASURED, UNMEASURED, 0.0
    return [
        order_norm,
        surface_norm,
        *_one_hot(int(report.stage), len(SeedStage)),
        report.alpha,
        report.alpha_target,
        progress,
        1.0 if report.blend_out else 0.0,
        *style,
        (report.blend_epochs if has_seed else 0) / MAX_SCHEDULE_EPOCHS,
        report.alpha_schedule_total_epochs / MAX_SCHEDULE_EPOCHS,
        *curve,
        contribution,
        contribution_flag,
        velocity,
        velocity_flag,
        staleness,
        delta,
        delta_flag,
        grad_norm,
        grad_ratio,
        grad_flag,
        1.0 if metrics.grad_finite else 0.0,
        metrics.epochs_in_stage / episode_length,
        metrics.seed_age_epochs / episode_length,
        math.log1p(report.seed_params / host_params),
        report.embargo_epochs_left / episode_length,
        0.0 if report.internal_kind is None else 1.0,
        ladder_kind_norm,
        report.internal_level / max(report.internal_max_level, 1),
        per_param,
        _measured(report.epochs_since_internal_change, lambda epochs: epochs / episode_length)[0],
        float(report.internal_last_direction),
        report.subtarget_count / subtarget_count,
        report.subtarget_active_count / max(report.subtarget_count, 1),
        _measured(report.epochs_since_subtarget_change, lambda epochs: epochs / episode_length)[0],
    ]


def _check_inventory(report: SeedStateReport, subtarget_count: int) -> None:
    count = report.subtarget_count
    if count > subtarget_count:
        raise PluginError(
            f"Obs V3: environment {report.env_id} slot {report.slot_id}: seed {report.seed_id} "
            f"({report.blueprint_id}) reports {count} subtargets; the run's subtarget head has "
            f"{subtarget_count} (the largest SubtargetSpec.max_count of its seed families)"
        )
    if len(report.subtarget_active_mask) < count:
        raise PluginError(
            f"Obs V3: environment {report.env_id} slot {report.slot_id}: seed {report.seed_id} reports "
            f"{count} subtargets but an active mask of {len(report.subtarget_active_mask)} entries"
        )


def subtarget_blocks(
    slot_reports: Sequence[Sequence[SeedStateReport]], subtarget_count: int, device: torch.device | None = None
) -> torch.Tensor:
    """The per-subtarget blocks of every environment's slots (``slot_reports[e]``), (E, n_slots, 2 * K): the active mask, then the importance
    normalised within each seed (by its largest enabled group's; 0 for disabled or missing groups).
    One tensor per block is copied from the reports and the normalisation runs batched on ``device``; a
    non-finite importance stays non-finite (the caller sees it, nothing hides it as 0)."""
    active: list[list[list[float]]] = []
    importance: list[list[list[float]]] = []
    for reports in slot_reports:
        env_active, env_importance = [], []
        for report in reports:
            _check_inventory(report, subtarget_count)
            count = report.subtarget_count
            padding = [0.0] * (subtarget_count - count)
            env_active.append([1.0 if entry else 0.0 for entry in report.subtarget_active_mask[:count]] + padding)
            scores = [float(value) for value in report.subtarget_importance[:count]]
            env_importance.append(scores + [0.0] * (subtarget_count - len(scores)))
        active.append(env_active)
        importance.append(env_importance)
    n_slots = len(active[0]) if active else 0
    mask = torch.tensor(active, dtype=torch.float32, device=device).view(len(active), n_slots, subtarget_count)
    scores = torch.tensor(importance, dtype=torch.float32, device=device).view_as(mask) * mask
    peak = scores.amax(dim=-1, keepdim=True)
    normalised = torch.where(peak == 0.0, torch.zeros_like(scores), scores / peak)
    return torch.cat([mask, normalised], dim=-1)


@attrs.frozen
class FeatureBatch:
    """Obs V3 tensors for a batch of environments.

    - ``base``: (E, BASE_SIZE)
    - ``slots``: (E, n_slots, SLOT_SIZE), slots in SlotConfig order
    - ``blueprint_ids``: (E, n_slots) long, 0 = no seed, k + 1 = seed family k of the run
    """

    base: torch.Tensor
    slots: torch.Tensor
    blueprint_ids: torch.Tensor

    def flat(self) -> torch.Tensor:
        """base and slot features concatenated: (E, BASE_SIZE + n_slots * SLOT_SIZE)."""
        return torch.cat([self.base, self.slots.flatten(start_dim=1)], dim=1)


def _code(codes: dict[str, int], name: str, label: str) -> int:
    try:
        return codes[name]
    except KeyError:
        raise PluginError(
            f"Obs V3: {label} '{name}' has no registered code in this observation "
            f"(known: {', '.join(sorted(codes)) or 'none'}); register it with its code"
        ) from None


def batch_subtarget_count(observations: Sequence[EnvObservation]) -> int:
    """The K every observation of the batch carries (``EnvObservation.subtarget_count``); 1 for no observation."""
    counts = sorted({observation.subtarget_count for observation in observations})
    if len(counts) > 1:
        raise ValueError(f"Obs V3: one batch mixes subtarget head sizes {counts}; a run has one K")
    return counts[0] if counts else 1


def build_features(observations: Sequence[EnvObservation], device: torch.device | None = None) -> FeatureBatch:
    """Obs V3 features for every environment (one host-to-device copy per tensor); each slot row follows
    ``slot_layout(K)`` with K the observations' ``subtarget_count``."""
    subtarget_count = batch_subtarget_count(observations)
    base, slots, ids = [], [], []
    for observation in observations:
        index = {name: position for position, name in enumerate(observation.seed_families)}
        base.append(base_features(observation))
        slot_config = observation.slot_config
        slots.append(
            [
                slot_features(
                    report, episode_length=observation.episode_length, host_params=observation.host_params,
                    order_norm=slot_config.order_norm(spec.slot_id),
                    surface_norm=_code(observation.surface_codes, spec.surface, "surface") / MAX_SURFACE_CODE,
                    ladder_kind_norm=0.0
                    if report.internal_kind is None
                    else _code(observation.ladder_kind_codes, report.internal_kind, "ladder kind") / MAX_LADDER_CODE,
                    subtarget_count=subtarget_count,
                )
                for report, spec in zip(observation.slots, slot_config.specs)
            ]
        )
        ids.append([0 if report.blueprint_id is None else index[report.blueprint_id] + 1 for report in observation.slots])
    n_slots = len(slots[0]) if slots else 0
    fixed = torch.tensor(slots, dtype=torch.float32, device=device).view(len(slots), n_slots, SUBTARGET_BLOCKS_OFFSET)
    observed = [[report for report, _spec in zip(item.slots, item.slot_config.specs)] for item in observations]
    return FeatureBatch(
        base=torch.tensor(base, dtype=torch.float32, device=device),
        slots=torch.cat([fixed, subtarget_blocks(observed, subtarget_count, device)], dim=-1),
        blueprint_ids=torch.tensor(ids, dtype=torch.long, device=device),
    )


#: What the core reads from a host and from plugins to build these features (docs/observation.md).
READS_CONTRACT: tuple[str, ...] = (
    "## What the core reads from hosts and plugins",
    "",
    "The features depend on no particular host, surface, topology or seed family: the core reads only",
    "these contracted values, so any host or plugin that meets them is observed the same way.",
    "",
    "- **Slot placement**: each slot's `InjectionSpec.order` (normalised over the host's whole span of",
    "  orders, enabled slots or not); slot ids are opaque and never parsed.",
    "- **Surface**: the registered code of the slot's `InjectionSpec.surface` (`SurfaceKind.code`, 0..`MAX_SURFACE_CODE`,",
    f"  here {MAX_SURFACE_CODE}), from `EnvObservation.surface_codes`; the value is `code / MAX_SURFACE_CODE`, the same",
    "  whatever other plugins are installed. A plugin that adds a surface registers it with a free code.",
    "- **Ladder kind**: the registered code of the seed's ladder kind (`LadderKind.code`, 1..`MAX_LADDER_CODE`,",
    f"  here {MAX_LADDER_CODE}; 0 without a ladder), from `EnvObservation.ladder_kind_codes` and the",
    "  `LadderSpec.kind` / `LadderModule.internal_kind` name the seed reports.",
    "- **Seed state**: the slot's `SeedStateReport` (stage, levers, sizes by the size rule, measurements).",
    "- **Subtarget inventory**: the report's `subtarget_count`, `subtarget_active_count`, `subtarget_active_mask`,",
    "  `subtarget_importance` and `epochs_since_subtarget_change`, and the run's `subtarget` head size K",
    "  (`EnvObservation.subtarget_count`, the largest `SubtargetSpec.max_count` of the run's seed families, 1",
    "  without inventories). The per-subtarget blocks are K floats each, so the slot width is the fixed part plus",
    "  2K; a seed reporting more groups than K is an error naming it.",
    "- **Sizes**: the host's parameter count and each seed's parameters in use.",
    "",
    "A surface or ladder kind name without a code in the observation is an error naming it, never a silent 0.",
)


def layout_markdown() -> str:
    """The Obs V3 layout as Markdown tables (docs/observation.md is generated from this)."""
    lines = [
        "# Observation layout (Obs V3)",
        "",
        "Generated from `esper_core/tamiyo/features.py` by `python -m esper_core.tamiyo.features`;",
        "a test keeps this page identical to the code.",
        "",
        f"Unmeasured values are written as `{UNMEASURED}` and paired with a `*_measured` flag (never a silent 0).",
        "Seed family identity is not a feature: `blueprint_ids` (0 = no seed, k + 1 = the run's seed family k) feeds",
        "a learned embedding.",
        "",
        *READS_CONTRACT,
        "",
    ]
    for title, features in (("Per-environment features", BASE_FEATURES), ("Per-slot features (slot order)", SLOT_FEATURES)):
        fixed = layout_size([feature for feature in features if not feature.per_subtarget])
        blocks = sum(1 for feature in features if feature.per_subtarget)
        width = f"{fixed} + {blocks}K" if blocks else f"{fixed}"
        lines += [f"## {title} ({width} floats)", ""]
        if blocks:
            lines += [
                f"K is the run's `subtarget` head size (1 without inventories: then {fixed + blocks} floats). The",
                "per-subtarget blocks come last, so every other offset is the same for any K.",
                "",
            ]
        lines += ["| offset | name | size | meaning |", "|---:|---|---:|---|"]
        offset, k_blocks = 0, 0
        for feature in features:
            where = str(offset) if not k_blocks else f"{offset} + {k_blocks}K".replace(" + 1K", " + K")
            size = "K" if feature.per_subtarget else str(feature.size)
            lines.append(f"| {where} | `{feature.name}` | {size} | {feature.meaning} |")
            if feature.per_subtarget:
                k_blocks += 1
            else:
                offset += feature.size
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - documentation generator
    print(layout_markdown())
