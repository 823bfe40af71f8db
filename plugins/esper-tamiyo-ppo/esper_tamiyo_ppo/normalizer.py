"""Running mean/std normalisation of the continuous Obs V3 columns (flags and one-hots pass through unchanged)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from esper_core.tamiyo import BASE_FEATURES, SLOT_FEATURES, Feature, FeatureBatch, slot_layout

#: Obs V3 blocks whose values are 0/1 flags or one-hots. They are left as they are: normalising a rare
#: flag would blow it up to a large clipped value and hide its meaning. Every other column (including
#: the ``UNMEASURED`` sentinel in a value column, which its ``*_measured`` flag disambiguates) is
#: normalised.
BINARY_FEATURES: frozenset[str] = frozenset(
    {
        # per environment
        "metric_delta_measured",
        "loss_delta_measured",
        "last_op",
        "last_action_success",
        "rolled_back",
        # per slot
        "stage",
        "blend_out",
        "style",
        "alpha_curve",
        "contribution_measured",
        "contribution_velocity_measured",
        "score_delta_since_germination_measured",
        "grad_measured",
        "grad_finite",
        "subtarget_active_mask",
    }
)


def continuous_columns(layout: Sequence[Feature], binary: frozenset[str] = BINARY_FEATURES) -> torch.Tensor:
    """A bool mask over ``layout``'s columns: True where the column is normalised (not in ``binary`` and
    not named ``*_measured``)."""
    mask: list[bool] = []
    for feature in layout:
        is_flag = feature.name in binary or feature.name.endswith("_measured")
        mask.extend([not is_flag] * feature.size)
    return torch.tensor(mask, dtype=torch.bool)


def _check_binary_names() -> None:
    known = {feature.name for feature in (*BASE_FEATURES, *SLOT_FEATURES)}
    missing = sorted(BINARY_FEATURES - known)
    if missing:
        raise ValueError(f"BINARY_FEATURES names {missing} that the Obs V3 layout does not have")


_check_binary_names()


class RunningMeanStd:
    """Mean and variance of every column seen so far (parallel Welford update in float64, as in SB3)."""

    def __init__(self, size: int, device: torch.device, epsilon: float = 1e-4) -> None:
        self.mean = torch.zeros(size, dtype=torch.float64, device=device)
        self.var = torch.ones(size, dtype=torch.float64, device=device)
        self.count = epsilon

    def update(self, batch: torch.Tensor) -> None:
        """Fold in a (N, size) batch of rows."""
        batch = batch.to(torch.float64)
        batch_count = batch.shape[0]
        if batch_count == 0:
            raise ValueError("cannot update running statistics with an empty batch")
        batch_mean = batch.mean(dim=0)
        batch_var = batch.var(dim=0, unbiased=False)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta.square() * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.cpu().clone(), "var": self.var.cpu().clone(), "count": float(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("mean", "var"):
            if tuple(state[key].shape) != tuple(self.mean.shape):
                raise ValueError(
                    f"normaliser {key} has shape {tuple(state[key].shape)}, expected {tuple(self.mean.shape)}"
                )
        self.mean = state["mean"].to(device=self.mean.device, dtype=torch.float64).clone()
        self.var = state["var"].to(device=self.var.device, dtype=torch.float64).clone()
        self.count = float(state["count"])


def finite_rows(features: FeatureBatch) -> torch.Tensor:
    """(E,) bool: True for an environment whose base features and every slot's features are all finite."""
    return torch.isfinite(features.base).all(dim=-1) & torch.isfinite(features.slots).all(dim=-1).all(dim=-1)


def select_rows(features: FeatureBatch, rows: torch.Tensor) -> FeatureBatch:
    """The environments where ``rows`` (E,) bool is True."""
    return FeatureBatch(
        base=features.base[rows], slots=features.slots[rows], blueprint_ids=features.blueprint_ids[rows]
    )


def replace_non_finite(features: FeatureBatch, clip: float) -> FeatureBatch:
    """NaN becomes 0 (after normalisation: the running mean), +/-inf becomes +/-``clip``."""
    return FeatureBatch(
        base=torch.nan_to_num(features.base, nan=0.0, posinf=clip, neginf=-clip),
        slots=torch.nan_to_num(features.slots, nan=0.0, posinf=clip, neginf=-clip),
        blueprint_ids=features.blueprint_ids,
    )


class ObservationNormalizer:
    """Normalises base and per-slot features with separate statistics; slot statistics are shared by all
    slots (every slot has the same layout, ``slot_layout(subtarget_count)``). Values are clipped to
    ``[-clip, clip]`` after normalising."""

    def __init__(self, clip: float, device: torch.device, subtarget_count: int = 1, epsilon: float = 1e-8) -> None:
        self.clip = clip
        self.epsilon = epsilon
        slot_features = slot_layout(subtarget_count)
        self.base = RunningMeanStd(sum(f.size for f in BASE_FEATURES), device)
        self.slot = RunningMeanStd(sum(f.size for f in slot_features), device)
        self.base_columns = continuous_columns(BASE_FEATURES).to(device)
        self.slot_columns = continuous_columns(slot_features).to(device)

    def update(self, features: FeatureBatch) -> None:
        self.base.update(features.base)
        self.slot.update(features.slots.reshape(-1, features.slots.shape[-1]))

    def _apply(self, values: torch.Tensor, stats: RunningMeanStd, columns: torch.Tensor) -> torch.Tensor:
        scaled = (values.to(torch.float64) - stats.mean) / torch.sqrt(stats.var + self.epsilon)
        scaled = scaled.clamp(-self.clip, self.clip).to(values.dtype)
        return torch.where(columns, scaled, values)

    def normalize(self, features: FeatureBatch) -> FeatureBatch:
        return FeatureBatch(
            base=self._apply(features.base, self.base, self.base_columns),
            slots=self._apply(features.slots, self.slot, self.slot_columns),
            blueprint_ids=features.blueprint_ids,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "slot": self.slot.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.slot.load_state_dict(state["slot"])
