"""Capacity-limited growth regimes (small host, run config, static frontier family) for the growth benchmarks."""

from __future__ import annotations

import copy
from typing import Any

import attrs


@attrs.frozen
class Regime:
    """One growth regime.

    ``base`` is a run configuration as the dict a TOML file parses to (``task``, ``training``, ``run``
    with ``episode_length``, ``morphogenesis`` with the seed families a policy may use and
    ``max_seeds``); it has no ``[host]`` or ``[policy]``. ``small_host`` is the capacity-limited host's
    ``[host]`` table; ``frontier`` names the static hosts (``[host]`` tables, the small host first)
    trained from scratch for the same epochs to measure the headroom growth could claim.
    ``metric_name`` is the score the run reports (``higher_is_better`` says which way is better).
    """

    name: str
    description: str
    base: dict[str, Any]
    small_host: dict[str, Any]
    frontier: dict[str, dict[str, Any]]
    metric_name: str
    higher_is_better: bool
    #: The frontier entry sized like a plausible grown network (about 1.5-3x the small host's parameters).
    grown_like: str

    def config(self, host: dict[str, Any] | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
        """A deep copy of ``base`` with ``[host]`` set (default: the small host) and ``sections`` merged in."""
        data = copy.deepcopy(self.base)
        data["host"] = copy.deepcopy(self.small_host if host is None else host)
        for name, values in sections.items():
            data.setdefault(name, {}).update(copy.deepcopy(values))
        return data


def _cnn(channels: list[int], pool: list[bool], convs: int = 1) -> dict[str, Any]:
    return {"name": "cnn", "channels": list(channels), "pool": list(pool), "convs_per_block": convs}


def _transformer(d_model: int, n_layer: int, n_head: int = 2, slot_layout: str = "lattice") -> dict[str, Any]:
    return {"name": "transformer", "d_model": d_model, "n_layer": n_layer, "n_head": n_head,
            "slot_layout": slot_layout}


# -- regime 1: digits, a shallow CNN ---------------------------------------------------------------

_DIGITS_POOL = [False, False]
DIGITS = Regime(
    name="digits",
    description=(
        "scikit-learn 8x8 digits; a 2-block cnn of 8 channels, one conv per block and no pooling: its receptive "
        "field (5x5) and depth limit it, not its width. Conv seeds at its two slots add the missing depth."
    ),
    base={
        "task": {"name": "digits"},
        "training": {"batch_size": 64, "host_lr": 0.05, "seed_lr": 0.05, "lr_schedule": "cosine"},
        "run": {"episode_length": 20},
        "morphogenesis": {
            "seed_families": ["conv_small", "conv_light", "conv_heavy"],
            "max_seeds": 2,
            "min_training_epochs": 2,
            "embargo_epochs": 2,
        },
    },
    small_host=_cnn([8, 8], _DIGITS_POOL, 1),
    frontier={
        "c8x2-d1": _cnn([8, 8], _DIGITS_POOL, 1),
        "c12x2-d1": _cnn([12, 12], _DIGITS_POOL, 1),
        "c8x3-d1": _cnn([8, 8, 8], [False] * 3, 1),
        "c8x2-d2": _cnn([8, 8], _DIGITS_POOL, 2),
        "c8x2-d3": _cnn([8, 8], _DIGITS_POOL, 3),
        "c12x2-d2": _cnn([12, 12], _DIGITS_POOL, 2),
        "c16x2-d2": _cnn([16, 16], _DIGITS_POOL, 2),
    },
    metric_name="val_accuracy",
    higher_is_better=True,
    grown_like="c8x2-d2",
)


# -- regime 2: shapes, a narrow 5-block CNN --------------------------------------------------------

_SCALE_POOL = [True, False, True, False, True]
SHAPES_DEEP = Regime(
    name="shapes_deep",
    description=(
        "procedural 32x32 shapes; a cifar_scale-style 5-block cnn with narrow channels and one conv per block. "
        "Conv seeds at its five slots add depth."
    ),
    base={
        "task": {"name": "shapes", "train_size": 12288, "val_size": 1024},
        "training": {"batch_size": 64, "host_lr": 0.1, "seed_lr": 0.05, "lr_schedule": "cosine",
                     "warmup_steps": 50},
        "run": {"episode_length": 6},
        "morphogenesis": {
            "seed_families": ["conv_small", "conv_light", "conv_heavy"],
            "max_seeds": 3,
            "min_training_epochs": 1,
            "embargo_epochs": 1,
        },
    },
    small_host=_cnn([8, 8, 12, 12, 16], _SCALE_POOL, 1),
    frontier={
        "n8-d1": _cnn([8, 8, 12, 12, 16], _SCALE_POOL, 1),
        "n10-d1": _cnn([10, 10, 15, 15, 20], _SCALE_POOL, 1),
        "n12-d1": _cnn([12, 12, 18, 18, 24], _SCALE_POOL, 1),
        "n8-d2": _cnn([8, 8, 12, 12, 16], _SCALE_POOL, 2),
        "n16-d1": _cnn([16, 16, 24, 24, 32], _SCALE_POOL, 1),
    },
    metric_name="val_accuracy",
    higher_is_better=True,
    grown_like="n8-d2",
)


# -- regime 3: pydoc, a narrow transformer ---------------------------------------------------------

PYDOC = Regime(
    name="pydoc",
    description=(
        "character-level LM on CPython's help text; a narrow 1-layer transformer (d_model 24, 2 heads) cut post-attention "
        "and post-MLP (lattice layout: 2 slots). Residual MLP / attention / LoRA seeds at its slots add depth."
    ),
    base={
        "task": {"name": "pydoc", "context_length": 64, "max_train_windows": 8192, "max_val_windows": 256},
        "training": {"batch_size": 64, "host_lr": 1.5e-2, "seed_lr": 6e-3, "optimizer": "adamw",
                     "lr_schedule": "cosine", "warmup_steps": 30},
        "run": {"episode_length": 12},
        "morphogenesis": {
            "seed_families": ["lora", "mlp_small", "mlp", "causal_attention"],
            "max_seeds": 2,
            "min_training_epochs": 2,
            "embargo_epochs": 2,
        },
    },
    small_host=_transformer(24, 1),
    frontier={
        "d24-L1": _transformer(24, 1),
        "d24-L2": _transformer(24, 2),
        "d24-L3": _transformer(24, 3),
        "d32-L1": _transformer(32, 1),
        "d32-L2": _transformer(32, 2),
    },
    metric_name="val_loss",
    higher_is_better=False,
    grown_like="d24-L3",
)


# -- Phase 2 regimes: pooled CNNs on 8x8 digits (roadmap Phase 2: cifar_scale deep, cifar_baseline shallow) ----
#
# Both pool, so the cnn host's lattice layout has PRE_POOL and POST_POOL surfaces to choose between. The
# seed families are the conv seeds plus both ladders; ``channel_ladder``'s group size is set to 2 channels so
# that its four groups (hidden width 8) fit hosts this narrow.

_PHASE2_MORPHOGENESIS = {
    "seed_families": ["conv_small", "conv_light", "conv_heavy", "conv_ladder", "channel_ladder"],
    "min_training_epochs": 2,
    "embargo_epochs": 2,
}

_DEEP_POOL = [True, False, True, False, True]
DIGITS_DEEP = Regime(
    name="digits_deep",
    description=(
        "scikit-learn 8x8 digits; a cifar_scale-style 5-block cnn (pool after blocks 0, 2 and 4: 8x8 -> 1x1) with "
        "2-4 channels and one conv per block: its width limits it. A second plain conv per block does not help "
        "it (plain depth trains worse here), so the grown-like host is the 1.5x wider one; conv and ladder seeds "
        "add residual capacity at its slots."
    ),
    base={
        "task": {"name": "digits"},
        "training": {"batch_size": 64, "host_lr": 0.05, "seed_lr": 0.05, "lr_schedule": "cosine"},
        "run": {"episode_length": 20},
        "morphogenesis": {**_PHASE2_MORPHOGENESIS, "max_seeds": 3},
        "seed_families": {"channel_ladder": {"group_size": 2}},
    },
    small_host=_cnn([2, 2, 3, 3, 4], _DEEP_POOL, 1),
    frontier={
        "c2-d1": _cnn([2, 2, 3, 3, 4], _DEEP_POOL, 1),
        "c3-d1": _cnn([3, 3, 4, 4, 6], _DEEP_POOL, 1),
        "c2-d2": _cnn([2, 2, 3, 3, 4], _DEEP_POOL, 2),
        "c4-d1": _cnn([4, 4, 6, 6, 8], _DEEP_POOL, 1),
        "c3-d2": _cnn([3, 3, 4, 4, 6], _DEEP_POOL, 2),
        "c6-d1": _cnn([6, 6, 9, 9, 12], _DEEP_POOL, 1),
    },
    metric_name="val_accuracy",
    higher_is_better=True,
    grown_like="c3-d1",
)

_SHALLOW_POOL = [True, True, True]
DIGITS_SHALLOW = Regime(
    name="digits_shallow",
    description=(
        "scikit-learn 8x8 digits; a cifar_baseline-style 3-block cnn (pool after each: 8x8 -> 1x1) with 2-4 "
        "channels and one conv per block. Conv and ladder seeds at its slots add depth."
    ),
    base={
        "task": {"name": "digits"},
        "training": {"batch_size": 64, "host_lr": 0.05, "seed_lr": 0.05, "lr_schedule": "cosine"},
        "run": {"episode_length": 20},
        "morphogenesis": {**_PHASE2_MORPHOGENESIS, "max_seeds": 2},
        "seed_families": {"channel_ladder": {"group_size": 2}},
    },
    small_host=_cnn([2, 3, 4], _SHALLOW_POOL, 1),
    frontier={
        "c2-d1": _cnn([2, 3, 4], _SHALLOW_POOL, 1),
        "c3-d1": _cnn([3, 4, 6], _SHALLOW_POOL, 1),
        "c2-d2": _cnn([2, 3, 4], _SHALLOW_POOL, 2),
        "c4-d1": _cnn([4, 6, 8], _SHALLOW_POOL, 1),
        "c3-d2": _cnn([3, 4, 6], _SHALLOW_POOL, 2),
        "c4-d2": _cnn([4, 6, 8], _SHALLOW_POOL, 2),
        "c6-d1": _cnn([6, 9, 12], _SHALLOW_POOL, 1),
    },
    metric_name="val_accuracy",
    higher_is_better=True,
    grown_like="c2-d2",
)


REGIMES: dict[str, Regime] = {
    regime.name: regime for regime in (DIGITS, SHAPES_DEEP, PYDOC, DIGITS_DEEP, DIGITS_SHALLOW)
}
