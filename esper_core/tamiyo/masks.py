"""Action masks: per environment, which ops, slots and seed families are possible right now.

Masks forbid only the impossible. A move that is possible but may fail a gate (ADVANCE before the
incubation minimum) stays allowed; it fails and is observed as ``last_action_success = False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from esper_core.leyline import (
    BLENDED_STAGES,
    ENUM_HEAD_SIZES,
    LIVE_STAGES,
    MAX_SUBTARGETS,
    FactoredAction,
    LifecycleOp,
    SeedStage,
    SeedStateReport,
)


@attrs.frozen
class ActionMasks:
    """Boolean masks for a batch of environments (True = allowed).

    - ``op``: (E, n_ops)
    - ``slot``: (E, n_ops, n_slots): slots valid for each op
    - ``blueprint``: (E, n_slots, n_seed_families): the seed families that can be germinated in each slot (the
      ``blueprint`` head picks one)
    - ``subtarget``: (E, 2, n_slots, K) (added in 0.2.1): ``[:, 0]`` the group indices ENABLE_SUBTARGET may
      pick in each slot (the seed's existing disabled groups), ``[:, 1]`` those DISABLE_SUBTARGET may pick
      (its enabled groups); indices at or beyond the seed's ``subtarget_count`` are False. K is the run's
      ``subtarget`` head size.
    Heads with a fixed vocabulary (style, tempo, alpha_*) are always fully allowed.
    Row ``e`` belongs to the ``e``-th observation of the batch; the engine keeps ``env_id == e``.
    """

    op: torch.Tensor
    slot: torch.Tensor
    blueprint: torch.Tensor
    subtarget: torch.Tensor = attrs.field()

    @subtarget.default
    def _no_inventories(self) -> torch.Tensor:
        # a batch built without subtarget masks: a size-1 head that no op may use
        return torch.zeros(int(self.op.shape[0]), 2, int(self.slot.shape[2]), 1, dtype=torch.bool)

    @property
    def num_envs(self) -> int:
        return int(self.op.shape[0])

    def allows(self, env: int, action: FactoredAction) -> bool:
        """Whether ``action`` is allowed for environment ``env`` (heads irrelevant to the op ignored)."""
        op = int(action.op)
        if not bool(self.op[env, op]):
            return False
        if action.op is LifecycleOp.WAIT:
            return True
        if not 0 <= action.slot < self.slot.shape[2] or not bool(self.slot[env, op, action.slot]):
            return False
        if action.op is LifecycleOp.GERMINATE:
            if not 0 <= action.blueprint < self.blueprint.shape[2]:
                return False
            return bool(self.blueprint[env, action.slot, action.blueprint])
        if action.op in SUBTARGET_OPS:
            if not 0 <= action.subtarget < self.subtarget.shape[3]:
                return False
            direction = SUBTARGET_OPS.index(action.op)
            return bool(self.subtarget[env, direction, action.slot, action.subtarget])
        return True


#: The ops that pick a subtarget, in the order of ``ActionMasks.subtarget``'s second axis.
SUBTARGET_OPS: tuple[LifecycleOp, LifecycleOp] = (LifecycleOp.ENABLE_SUBTARGET, LifecycleOp.DISABLE_SUBTARGET)
#: Stages in which a seed's subtargets may be switched (a fossil's mask is frozen).
SUBTARGET_STAGES = frozenset({SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING})


def subtarget_choices(op: LifecycleOp, report: SeedStateReport) -> tuple[int, ...]:
    """The group indices ``op`` (ENABLE_SUBTARGET or DISABLE_SUBTARGET) may pick in the slot of
    ``report``: existing disabled groups to enable, enabled groups to disable while at least one other
    stays enabled; () when the slot's seed is not live (TRAINING, BLENDING, HOLDING), is blending out, or
    has no inventory."""
    if op not in SUBTARGET_OPS:
        raise ValueError(f"{op!r} picks no subtarget")
    if report.stage not in SUBTARGET_STAGES or report.blend_out or report.subtarget_kind is None:
        return ()
    wanted = op is LifecycleOp.DISABLE_SUBTARGET
    mask = report.subtarget_active_mask[: report.subtarget_count]
    if wanted and sum(bool(enabled) for enabled in mask) <= 1:
        return ()  # DISABLE never empties a seed (a seed without groups is PRUNE's job, not a fossil's)
    return tuple(index for index, enabled in enumerate(mask) if bool(enabled) is wanted)


def slot_valid_for(op: LifecycleOp, report: SeedStateReport, *, seeds_available: bool) -> bool:
    stage = report.stage
    if op is LifecycleOp.WAIT:
        return False
    if op is LifecycleOp.GERMINATE:
        return stage is SeedStage.DORMANT and seeds_available
    if op is LifecycleOp.ADVANCE:
        return stage is SeedStage.TRAINING
    if op is LifecycleOp.SET_ALPHA_TARGET:
        return stage in BLENDED_STAGES and not report.blend_out
    if op is LifecycleOp.PRUNE:
        return stage in LIVE_STAGES and not report.blend_out
    if op is LifecycleOp.FOSSILIZE:
        return stage is SeedStage.HOLDING
    if op in (LifecycleOp.GROW_INTERNAL, LifecycleOp.SHRINK_INTERNAL):
        if stage not in LIVE_STAGES or report.blend_out or report.internal_kind is None:
            return False
        if op is LifecycleOp.GROW_INTERNAL:
            return report.internal_level < report.internal_max_level
        return report.internal_level > 0
    if op in SUBTARGET_OPS:
        return bool(subtarget_choices(op, report))
    raise ValueError(f"unhandled lifecycle op {op!r}")


def compute_masks(
    slot_reports: Sequence[Sequence[SeedStateReport]],
    *,
    num_seed_families: int,
    max_seeds: int,
    seed_family_allowed: Sequence[Sequence[bool]] | None = None,
    subtarget_count: int = 1,
    subtarget_ops: bool = True,
    auto_advance: bool = False,
) -> ActionMasks:
    """Masks for a batch of environments from their slot reports.

    ``seed_family_allowed[s][f]`` says whether seed family ``f`` can be planted in slot ``s`` at all
    (topology and size compatibility); default: everywhere. ``subtarget_count`` is the run's
    ``subtarget`` head size K (the largest ``SubtargetSpec.max_count`` of its seed families, at least 1).
    ``subtarget_ops = False`` (the run's ``[morphogenesis] subtarget_ops``) forbids ENABLE_SUBTARGET and
    DISABLE_SUBTARGET everywhere: inventories keep their masks, and ladders still move by level.
    ``auto_advance = True`` (the run's ``[morphogenesis] auto_advance``) forbids ADVANCE: a TRAINING seed
    blends by itself as soon as gate G1 passes, so at decision time an ADVANCE could only fail.
    """
    if isinstance(subtarget_count, bool) or not isinstance(subtarget_count, int) or not (
        1 <= subtarget_count <= MAX_SUBTARGETS
    ):
        raise ValueError(f"subtarget_count must be an integer from 1 to {MAX_SUBTARGETS}, got {subtarget_count!r}")
    n_envs = len(slot_reports)
    n_slots = len(slot_reports[0]) if n_envs else 0
    n_ops = ENUM_HEAD_SIZES["op"]
    op_mask = torch.zeros(n_envs, n_ops, dtype=torch.bool)
    slot_mask = torch.zeros(n_envs, n_ops, n_slots, dtype=torch.bool)
    if seed_family_allowed is None:
        bp_row = torch.ones(n_slots, num_seed_families, dtype=torch.bool)
    else:
        bp_row = torch.tensor(seed_family_allowed, dtype=torch.bool).view(n_slots, num_seed_families)
    blueprint_mask = bp_row.unsqueeze(0).repeat(n_envs, 1, 1)
    subtarget_mask = torch.zeros(n_envs, len(SUBTARGET_OPS), n_slots, subtarget_count, dtype=torch.bool)
    for env, reports in enumerate(slot_reports):
        occupied = sum(1 for report in reports if report.is_occupied)
        seeds_available = occupied < max_seeds
        for op in LifecycleOp:
            if (
                op is LifecycleOp.WAIT
                or (op in SUBTARGET_OPS and not subtarget_ops)
                or (op is LifecycleOp.ADVANCE and auto_advance)
            ):
                continue
            for index, report in enumerate(reports):
                valid = slot_valid_for(op, report, seeds_available=seeds_available)
                if op is LifecycleOp.GERMINATE and valid and not bool(bp_row[index].any()):
                    valid = False
                if op in SUBTARGET_OPS and valid:
                    choices = [choice for choice in subtarget_choices(op, report) if choice < subtarget_count]
                    subtarget_mask[env, SUBTARGET_OPS.index(op), index, choices] = True
                    valid = bool(choices)
                slot_mask[env, int(op), index] = valid
        op_mask[env] = slot_mask[env].any(dim=1)
        op_mask[env, int(LifecycleOp.WAIT)] = True
    return ActionMasks(op=op_mask, slot=slot_mask, blueprint=blueprint_mask, subtarget=subtarget_mask)
