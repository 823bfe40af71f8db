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
    Heads with a fixed vocabulary (style, tempo, alpha_*) are always fully allowed.
    Row ``e`` belongs to the ``e``-th observation of the batch; the engine keeps ``env_id == e``.
    """

    op: torch.Tensor
    slot: torch.Tensor
    blueprint: torch.Tensor

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
        return True


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
    raise ValueError(f"unhandled lifecycle op {op!r}")


def compute_masks(
    slot_reports: Sequence[Sequence[SeedStateReport]],
    *,
    num_seed_families: int,
    max_seeds: int,
    seed_family_allowed: Sequence[Sequence[bool]] | None = None,
) -> ActionMasks:
    """Masks for a batch of environments from their slot reports.

    ``seed_family_allowed[s][f]`` says whether seed family ``f`` can be planted in slot ``s`` at all
    (topology and size compatibility); default: everywhere.
    """
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
    for env, reports in enumerate(slot_reports):
        occupied = sum(1 for report in reports if report.is_occupied)
        seeds_available = occupied < max_seeds
        for op in LifecycleOp:
            if op is LifecycleOp.WAIT:
                continue
            for index, report in enumerate(reports):
                valid = slot_valid_for(op, report, seeds_available=seeds_available)
                if op is LifecycleOp.GERMINATE and valid and not bool(bp_row[index].any()):
                    valid = False
                slot_mask[env, int(op), index] = valid
        op_mask[env] = slot_mask[env].any(dim=1)
        op_mask[env, int(LifecycleOp.WAIT)] = True
    return ActionMasks(op=op_mask, slot=slot_mask, blueprint=blueprint_mask)
