"""The ``ppo`` policy: acts with Policy V2, collects rounds, updates by PPO and resumes exactly."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from esper_core.errors import CheckpointError, ConfigError
from esper_core.leyline import HEADS, FactoredAction, LifecycleOp
from esper_core.runs import CHECKPOINT_DIR, LATEST_CHECKPOINT, derive_seed, load_checkpoint
from esper_core.tamiyo import ActionMasks, EnvObservation, PolicyContext
from esper_core.tamiyo import (
    BASE_FEATURES,
    BASE_SIZE,
    RENAMED_FEATURES,
    Feature,
    FeatureBatch,
    build_features,
    slot_layout,
    slot_size,
)

from esper_tamiyo_ppo.buffer import RolloutBuffer
from esper_tamiyo_ppo.config import PPOConfig
from esper_tamiyo_ppo.network import N_OPS, SUBTARGET_OPS, Decisions, PolicyNetwork
from esper_tamiyo_ppo.normalizer import ObservationNormalizer, finite_rows, replace_non_finite, select_rows
from esper_tamiyo_ppo.ppo import ppo_update

#: Marks a policy state written by this plugin (inside an Esper checkpoint, under "policy").
STATE_FORMAT = "esper-tamiyo-ppo"
#: 2: episodes carry observation statistics; 3: Obs V3 slot features show every lever (style, tempo,
#: alpha schedule length, alpha curve) and contribution per parameter (43 slot floats, was 35); 4: the
#: slot feature ladder_kind_norm (44 slot floats); 5: the subtarget ops and head (op head 10 wide,
#: last_op 11 wide, the slot's subtarget features: 47 + 2K slot floats, a ``subtarget`` head of K, a
#: second sampling generator for the noise of what version 5 added). A ``checkpoint`` of version 3 or
#: later loads through ``widen_to_layout``; a resume needs the version it was written with.
STATE_VERSION = 5
#: The oldest state version whose network ``checkpoint`` can widen to this layout.
OLDEST_WIDENABLE_VERSION = 3
#: Per-round counters of the non-finite values the policy kept away from its network (see act/record).
_EPISODE_ANOMALIES: tuple[str, ...] = ("non_finite_observations", "non_finite_rewards")
#: Streams of the run seed: network initialisation and the sampling/shuffling generator.
_INIT_STREAM = 0x7070_0001
_SAMPLING_STREAM = 0x7070_0002
_SUBTARGET_SAMPLING_STREAM = 0x7070_0003
#: The ops of state versions 3 and 4 (WAIT .. SHRINK_INTERNAL): their sampling noise keeps its old place.
LEGACY_OPS = int(LifecycleOp.ENABLE_SUBTARGET)
#: Base features that grew since an older state: name -> where each saved column goes, given the saved
#: and the current size. last_op is a one-hot over the ops plus a final "no action yet" entry: the old
#: ops keep their columns, the final entry moves to the end, the new ops' columns enter with zero weight.
GROWN_FEATURES: dict[str, Any] = {
    "last_op": lambda saved, size: [*range(saved - 1), size - 1],
}


def rounds_per_update(config: PPOConfig, n_envs: int, episode_length: int) -> int:
    """Rounds one update collects: ``rounds_per_update``, or more until the update holds at least
    ``min_decisions_per_update`` decisions (a round holds envs x (episode_length - 1))."""
    per_round = n_envs * max(episode_length - 1, 1)
    return max(config.rounds_per_update, math.ceil(config.min_decisions_per_update / per_round))


def sequences_per_update(config: PPOConfig, n_envs: int, episode_length: int) -> int:
    """How many sequences one update sees: environments x rounds x chunks per episode."""
    decisions = episode_length - 1
    chunks = 1 if config.sequence_length == 0 else math.ceil(decisions / config.sequence_length)
    return n_envs * rounds_per_update(config, n_envs, episode_length) * chunks


def check_context(config: PPOConfig, context: PolicyContext) -> None:
    """Raise ``ConfigError`` for options that cannot work with this run's shape."""
    problems = []
    if context.episode_length < 2:
        problems.append(
            "[policy] ppo needs episode_length >= 2 (one decision per epoch but the last); "
            f"got {context.episode_length}"
        )
    elif config.learn:
        available = sequences_per_update(config, context.n_envs, context.episode_length)
        if config.num_minibatches > available:
            problems.append(
                f"[policy] num_minibatches: {config.num_minibatches} minibatches need at least as many sequences "
                f"per update; this run gives {available} (envs {context.n_envs} x "
                f"{rounds_per_update(config, context.n_envs, context.episode_length)} rounds per update x chunks "
                f"per episode); lower num_minibatches, or raise envs, rounds_per_update or "
                f"min_decisions_per_update, or set a sequence_length"
            )
    if config.deterministic and config.learn:
        problems.append("[policy] deterministic: argmax actions need learn = false (PPO learns from sampled actions)")
    if problems:
        raise ConfigError(problems)


def observation_statistics(
    episode: dict[str, Any], n_slots: int, slot_features: Sequence[Feature] | None = None
) -> dict[str, float]:
    """The round's mean raw value of every one-float Obs V3 feature, as ``obs/base/{name}`` (over
    environments and decisions) and ``obs/slot/{name}`` (over slots too), and of every per-subtarget
    block (over its K entries too): the roadmap's observation stats telemetry, e.g. to see that
    ``internal_level_norm`` moves when ladders grow or ``subtarget_active_frac`` when groups switch.
    ``slot_features`` is the run's slot layout (``slot_layout(K)``; default K = 1)."""
    observed = episode["steps"] * episode["n_envs"]
    if not observed:
        return {}
    statistics: dict[str, float] = {}
    for scope, features, total, count in (
        ("base", BASE_FEATURES, episode["obs_base_sum"].tolist(), observed),
        ("slot", slot_features or slot_layout(1), episode["obs_slot_sum"].tolist(), observed * n_slots),
    ):
        offset = 0
        for feature in features:
            if feature.size == 1 or feature.per_subtarget:
                statistics[f"obs/{scope}/{feature.name}"] = sum(total[offset:offset + feature.size]) / (count * feature.size)
            offset += feature.size
    return statistics


def _widened_columns(saved: list[list[Any]], layout: Sequence[Any], what: str) -> tuple[torch.Tensor, int]:
    """Where each saved column goes in ``layout`` (a long tensor) and the layout's width. The saved
    features must appear in ``layout`` in the same order with the same sizes (features may only have
    been added); otherwise ``CheckpointError``."""
    saved_sizes = {str(name): int(size) for name, size in saved}
    names = [feature.name for feature in layout]
    kept = [name for name in names if name in saved_sizes]
    if kept != [str(name) for name, _size in saved]:
        removed = sorted(set(saved_sizes) - set(names))
        detail = (
            f"it has features this layout lacks ({', '.join(removed)})" if removed else "its features are in another order"
        )
        raise CheckpointError(f"{what}: the saved observation layout cannot be widened to this one: {detail}; retrain")
    columns, offset = [], 0
    for feature in layout:
        if feature.name in saved_sizes:
            saved_size = saved_sizes[feature.name]
            if saved_size == feature.size:
                columns.extend(range(offset, offset + feature.size))
            elif feature.name in GROWN_FEATURES and saved_size < feature.size:
                columns.extend(offset + column for column in GROWN_FEATURES[feature.name](saved_size, feature.size))
            else:
                raise CheckpointError(
                    f"{what}: feature {feature.name} has {saved_size} columns saved, {feature.size} here; retrain"
                )
        offset += feature.size
    return torch.tensor(columns, dtype=torch.long), offset


def with_current_feature_names(state: Any) -> Any:
    """``state`` with its saved layout's feature names as this version spells them (``RENAMED_FEATURES``:
    states written before 0.2.0 name the score delta ``metric_delta_since_germination``)."""
    if not isinstance(state, dict) or not isinstance(state.get("architecture"), dict):
        return state
    architecture = dict(state["architecture"])
    for key in ("base_features", "slot_features"):
        if isinstance(architecture.get(key), list):
            architecture[key] = [
                [RENAMED_FEATURES.get(entry[0], entry[0]), *entry[1:]] if isinstance(entry, list) and entry else entry
                for entry in architecture[key]
            ]
    return {**state, "architecture": architecture}


def widen_to_layout(
    state: dict[str, Any], what: str, fresh_network: dict[str, torch.Tensor], subtarget_count: int = 1
) -> dict[str, Any]:
    """A saved network and normaliser (``state_dict`` format) of an older version, widened to this
    version for a run whose subtarget head has ``subtarget_count`` entries, so the policy decides
    exactly as it did:

    - every Obs V3 feature the saved layout lacks enters the network with zero weight (normaliser mean 0,
      variance 1), and a grown one-hot (``last_op``) keeps each saved column's meaning;
    - ops the saved network did not have (ENABLE/DISABLE_SUBTARGET, version < 5) get new rows in the op
      head, the op embedding and the Q head, and the ``subtarget`` head is added, all taken from
      ``fresh_network`` (this run's freshly initialised network): while those ops are masked, as they are
      in any slot without an inventory, nothing the saved policy chooses changes.

    Only the network, the normaliser and the architecture are returned (what ``checkpoint`` loads)."""
    architecture = dict(state["architecture"])
    network = dict(state["network"])
    normalizer = {part: dict(stats) for part, stats in state["normalizer"].items()}
    for scope, layout, weight_name in (
        ("base", BASE_FEATURES, "trunk.0.weight"),
        ("slot", slot_layout(subtarget_count), "slot_encoder.0.weight"),
    ):
        saved = architecture[f"{scope}_features"]
        columns, width = _widened_columns(saved, layout, what)
        old_width = len(columns)
        old = network[weight_name]
        widened = torch.zeros(old.shape[0], width + old.shape[1] - old_width, dtype=old.dtype)
        widened[:, columns] = old[:, :old_width]
        widened[:, width:] = old[:, old_width:]  # the inputs after the features (embeddings, slot codes)
        network[weight_name] = widened
        stats = normalizer[scope]
        mean = torch.zeros(width, dtype=stats["mean"].dtype)
        var = torch.ones(width, dtype=stats["var"].dtype)
        mean[columns], var[columns] = stats["mean"], stats["var"]
        normalizer[scope] = {**stats, "mean": mean, "var": var}
        architecture[f"{scope}_features"] = [[feature.name, feature.size] for feature in layout]
    saved_ops = int(architecture.get("n_ops", N_OPS))
    if saved_ops > N_OPS:
        raise CheckpointError(f"{what}: the saved network has {saved_ops} ops, this plugin {N_OPS}; retrain")
    for name in ("op_embedding.weight", "policy_heads.op.2.weight", "policy_heads.op.2.bias", "q_head.2.weight", "q_head.2.bias"):
        old = network[name]
        if old.shape[0] != saved_ops:
            raise CheckpointError(f"{what}: {name} has {old.shape[0]} rows for {saved_ops} ops; retrain")
        network[name] = torch.cat([old, fresh_network[name][saved_ops:].to(old.dtype)], dim=0)
    for name, value in fresh_network.items():
        if name not in network:  # the subtarget head
            network[name] = value.detach().cpu().clone()
    architecture["n_ops"] = N_OPS
    architecture["n_subtargets"] = subtarget_count
    widened_state = {"version": STATE_VERSION, "architecture": architecture, "network": network, "normalizer": normalizer}
    return {**state, **widened_state}


def _plain(value: Any) -> Any:
    """Checkpoint-safe copy: tuples become lists, tensors move to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


class PPOPolicy:
    """The learned ``ppo`` policy (see the README for the network and the update)."""

    def __init__(self, config: PPOConfig, context: PolicyContext) -> None:
        check_context(config, context)
        self.config = config
        self.context = context
        self.device = context.device
        self.sizes = config.sizes()
        self.slot_ids = tuple(context.slot_config.slot_ids)
        self.seed_families = tuple(context.seed_families)
        #: K, the run's subtarget head size (the per-subtarget observation blocks are as wide)
        self.subtarget_count = int(context.subtarget_count)
        self.slot_features = slot_layout(self.subtarget_count)
        # Initial weights depend on the run seed alone; the global RNG is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(context.seed, _INIT_STREAM))
            network = PolicyNetwork(self.sizes, len(self.slot_ids), len(self.seed_families), self.subtarget_count)
        self.network = network.to(self.device)
        self.normalizer = ObservationNormalizer(config.observation_clip, self.device, self.subtarget_count)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.learning_rate, eps=1e-5)
        # A CPU generator: its state is portable, and sampling noise is drawn on it then moved.
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(derive_seed(context.seed, _SAMPLING_STREAM))
        # The noise of what state version 5 added (the subtarget ops and head) comes from a generator of
        # its own, so ``generator`` draws exactly what it drew before them (see ``_draw_uniform``).
        self.subtarget_generator = torch.Generator(device="cpu")
        self.subtarget_generator.manual_seed(derive_seed(context.seed, _SUBTARGET_SAMPLING_STREAM))
        self.buffer = RolloutBuffer(self.device)
        #: rounds collected per update (``rounds_per_update`` raised to reach ``min_decisions_per_update``)
        self.rounds_per_update = rounds_per_update(config, context.n_envs, context.episode_length)
        self.rounds_seen = 0
        self.updates = 0
        self.decisions = 0
        self._episode: dict[str, Any] | None = None
        self._clock = time.perf_counter()
        if config.checkpoint is not None:
            self.load_pretrained(Path(config.checkpoint))

    # -- Policy protocol -----------------------------------------------------------------------

    def begin_episode(self, round_index: int, n_envs: int) -> None:
        """Reset every environment's LSTM state and the round's bookkeeping."""
        if n_envs != self.context.n_envs:
            raise ValueError(
                f"begin_episode with {n_envs} environments; the policy was built for {self.context.n_envs}"
            )
        if self._episode is not None:
            raise RuntimeError("begin_episode() before end_episode() closed the previous round")
        h, c = self.network.initial_state(n_envs)
        self._episode = {
            "round": round_index,
            "n_envs": n_envs,
            "h": h,
            "c": c,
            "awaiting_reward": False,
            "terminal": False,
            "returns": torch.zeros(n_envs, dtype=torch.float64),
            # raw (unnormalised) Obs V3 sums for the round's observation statistics, kept on the
            # policy's device so a decision adds no host-device copy
            "obs_base_sum": torch.zeros(BASE_SIZE, dtype=torch.float64, device=self.device),
            "obs_slot_sum": torch.zeros(slot_size(self.subtarget_count), dtype=torch.float64, device=self.device),
            "steps": 0,
            "elapsed": 0.0,
            **{name: 0 for name in _EPISODE_ANOMALIES},
        }
        self._clock = time.perf_counter()

    def act(self, observations: Sequence[EnvObservation], masks: ActionMasks) -> list[FactoredAction]:
        """One masked action per environment from one batched forward pass (stored for PPO when learning).

        An environment whose features hold a NaN or an infinity (a diverged host with the governor off)
        is counted, left out of the normaliser's statistics, and seen by the network with NaN as 0 and
        +/-inf as +/-``observation_clip`` (after normalisation), so the network never sees it.

        Before round ``subtarget_unlock_round`` the policy masks ENABLE_SUBTARGET and DISABLE_SUBTARGET
        off itself (the subtarget head's curriculum unlock); the decision is stored with that mask."""
        episode = self._require_episode("act")
        if episode["awaiting_reward"]:
            raise RuntimeError("act() called again before record() paid the previous decision's reward")
        if episode["terminal"]:
            raise RuntimeError("act() after the terminal reward of the episode")
        self._check_batch(observations, masks, episode["n_envs"])
        features = build_features(observations, device=self.device)
        finite = finite_rows(features)
        non_finite = int((~finite).sum())
        episode["non_finite_observations"] += non_finite
        counted = features if not non_finite else replace_non_finite(features, 0.0)
        episode["obs_base_sum"] += counted.base.sum(dim=0, dtype=torch.float64)
        episode["obs_slot_sum"] += counted.slots.sum(dim=(0, 1), dtype=torch.float64)
        if self.config.normalize_observations:
            if self.config.learn and non_finite < len(observations):
                self.normalizer.update(features if not non_finite else select_rows(features, finite))
            features = self.normalizer.normalize(features)
        if non_finite:
            features = replace_non_finite(features, self.config.observation_clip)
        with torch.no_grad():
            z, (h, c) = self.network.encode(
                features.base.unsqueeze(1),
                features.slots.unsqueeze(1),
                features.blueprint_ids.unsqueeze(1),
                (episode["h"], episode["c"]),
            )
            uniform = None if self.config.deterministic else self._draw_uniform(len(observations))
            op_mask = masks.op.to(self.device)
            if episode["round"] < self.config.subtarget_unlock_round:
                op_mask = op_mask.clone()
                op_mask[:, [int(op) for op in SUBTARGET_OPS]] = False
            decisions = self.network.sample(
                z[:, 0],
                op_mask,
                masks.slot.to(self.device),
                masks.blueprint.to(self.device),
                uniform,
                masks.subtarget.to(self.device),
            )
        if self.config.learn:
            self.buffer.add_step(self._step_record(features, decisions, episode["h"][0], episode["c"][0]))
        episode["h"], episode["c"] = h, c
        episode["awaiting_reward"] = True
        episode["steps"] += 1
        self.decisions += len(observations)
        return [FactoredAction(**dict(zip(HEADS, row))) for row in decisions.actions.cpu().tolist()]

    def record(self, rewards: Sequence[float], terminal: bool) -> None:
        """The rewards of the last decisions; ``terminal`` marks the episode's final reward. A non-finite
        reward is counted and replaced by 0 (in the learned reward and in the reported return)."""
        episode = self._require_episode("record")
        if not episode["awaiting_reward"]:
            raise RuntimeError("record() with no decision awaiting its reward")
        if len(rewards) != episode["n_envs"]:
            raise ValueError(f"got {len(rewards)} rewards for {episode['n_envs']} environments")
        values = torch.tensor([float(reward) for reward in rewards], dtype=torch.float64)
        finite = torch.isfinite(values)
        non_finite = int((~finite).sum())
        if non_finite:
            episode["non_finite_rewards"] += non_finite
            values = torch.where(finite, values, 0.0)
        episode["returns"] += values
        if self.config.learn:
            learned = values if self.config.reward_clip is None else values.clamp(-self.config.reward_clip, self.config.reward_clip)
            self.buffer.add_reward(learned.to(device=self.device, dtype=torch.float32), bool(terminal))
        episode["awaiting_reward"] = False
        episode["terminal"] = bool(terminal)

    def end_episode(self, round_index: int) -> dict[str, float]:
        """Close the round; update every ``self.rounds_per_update`` rounds. Returns the round's metrics."""
        episode = self._require_episode("end_episode")
        if round_index != episode["round"]:
            raise ValueError(f"end_episode({round_index}) closes the episode begun for round {episode['round']}")
        if episode["awaiting_reward"]:
            raise RuntimeError("end_episode() while a decision still awaits its reward")
        elapsed = episode["elapsed"] + (time.perf_counter() - self._clock)
        decisions = episode["steps"] * episode["n_envs"]
        metrics = {
            "charts/episode_return": float(episode["returns"].mean()),
            "charts/SPS": decisions / elapsed,
            **observation_statistics(episode, len(self.slot_ids), self.slot_features),
            **{f"anomalies/{name}": float(episode.get(name, 0)) for name in _EPISODE_ANOMALIES},
        }
        self._episode = None
        self.rounds_seen += 1
        if self.config.learn:
            self.buffer.close_round()
            if len(self.buffer.rounds) >= self.rounds_per_update:
                batch = self.buffer.sequences(self.config.gamma, self.config.gae_lambda, self.config.sequence_length)
                metrics.update(ppo_update(self.network, self.optimizer, batch, self.config, self.generator))
                self.buffer.clear()
                self.updates += 1
        metrics["anomalies/non_finite_skipped"] = sum(
            value for name, value in metrics.items() if name.startswith("anomalies/non_finite_")
        )
        metrics["charts/updates"] = float(self.updates)
        metrics["charts/decisions"] = float(self.decisions)
        return metrics

    # -- state -------------------------------------------------------------------------------------

    def architecture(self) -> dict[str, Any]:
        """What a saved network must match to be loaded here."""
        return {
            "sizes": self.sizes.as_dict(),
            "slot_ids": list(self.slot_ids),
            "blueprints": list(self.seed_families),  # the checkpoint key keeps its name
            "n_ops": N_OPS,
            "n_subtargets": self.subtarget_count,
            "base_features": [[feature.name, feature.size] for feature in BASE_FEATURES],
            "slot_features": [[feature.name, feature.size] for feature in self.slot_features],
        }

    def state_dict(self) -> dict[str, Any]:
        episode = None
        if self._episode is not None:
            episode = _plain({**self._episode, "elapsed": self._episode["elapsed"] + time.perf_counter() - self._clock})
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "architecture": self.architecture(),
            "network": _plain(self.network.state_dict()),
            "normalizer": self.normalizer.state_dict(),
            "optimizer": _plain(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "subtarget_generator": self.subtarget_generator.get_state(),
            "counters": {"rounds_seen": self.rounds_seen, "updates": self.updates, "decisions": self.decisions},
            "episode": episode,
            "buffer": self.buffer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore everything ``state_dict`` captured (exact resume)."""
        state = with_current_feature_names(state)
        self._check_state(state, "resume state")
        self.network.load_state_dict(state["network"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.subtarget_generator.set_state(state["subtarget_generator"])
        counters = state["counters"]
        self.rounds_seen = int(counters["rounds_seen"])
        self.updates = int(counters["updates"])
        self.decisions = int(counters["decisions"])
        self.buffer.load_state_dict(state["buffer"])
        episode = state["episode"]
        if episode is None:
            self._episode = None
        else:
            self._episode = {
                **episode,
                "h": episode["h"].to(self.device),
                "c": episode["c"].to(self.device),
                "returns": episode["returns"].clone(),
                "obs_base_sum": episode["obs_base_sum"].to(self.device, copy=True),
                "obs_slot_sum": episode["obs_slot_sum"].to(self.device, copy=True),
                **{name: int(episode.get(name, 0)) for name in _EPISODE_ANOMALIES},
            }
        self._clock = time.perf_counter()

    def load_pretrained(self, path: Path) -> None:
        """Load network weights and normaliser statistics from an Esper run checkpoint or run directory."""
        file = path / CHECKPOINT_DIR / LATEST_CHECKPOINT if path.is_dir() else path
        try:
            payload = load_checkpoint(file)
        except CheckpointError as exc:
            raise CheckpointError(f"[policy] checkpoint: {exc}") from None
        if "policy" not in payload:
            raise CheckpointError(f"[policy] checkpoint: '{file}' holds no policy state")
        state = with_current_feature_names(payload["policy"])
        what = f"checkpoint '{file}'"
        version = state.get("version") if isinstance(state, dict) else None
        if (
            isinstance(state, dict) and state.get("format") == STATE_FORMAT and isinstance(version, int)
            and OLDEST_WIDENABLE_VERSION <= version < STATE_VERSION
        ):
            fresh = {name: value.detach().cpu() for name, value in self.network.state_dict().items()}
            state = widen_to_layout(state, f"[policy] checkpoint: {what}", fresh, self.subtarget_count)
        self._check_state(state, what)
        self.network.load_state_dict(state["network"])
        self.normalizer.load_state_dict(state["normalizer"])

    # -- helpers -----------------------------------------------------------------------------------

    def _check_state(self, state: Any, what: str) -> None:
        prefix = "[policy] checkpoint: " if what.startswith("checkpoint") else ""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{prefix}{what} was not written by the ppo policy")
        if state.get("version") != STATE_VERSION:
            raise CheckpointError(
                f"{prefix}{what} has ppo state version {state.get('version')}; this plugin reads {STATE_VERSION} "
                f"(the observation layout or the saved state changed: retrain, or use the plugin version that wrote it)"
            )
        saved, mine = state["architecture"], self.architecture()
        differences = []
        for key in mine:
            if key == "sizes":
                saved_sizes = saved[key]
                for name, value in mine[key].items():
                    if saved_sizes.get(name) != value:
                        differences.append(f"{name} {saved_sizes.get(name)} vs {value}")
            elif saved.get(key) != mine[key]:
                differences.append(f"{key} {_short(saved.get(key))} vs {_short(mine[key])}")
        if differences:
            raise CheckpointError(
                f"{prefix}{what} is incompatible with this run (saved vs here): {'; '.join(differences)}"
            )

    def _require_episode(self, method: str) -> dict[str, Any]:
        if self._episode is None:
            raise RuntimeError(f"{method}() outside an episode (call begin_episode first)")
        return self._episode

    def _check_batch(self, observations: Sequence[EnvObservation], masks: ActionMasks, n_envs: int) -> None:
        if len(observations) != n_envs or masks.num_envs != n_envs:
            raise ValueError(
                f"act() got {len(observations)} observations and masks for {masks.num_envs} environments; "
                f"the episode has {n_envs}"
            )
        n_slots, n_blueprints = len(self.slot_ids), len(self.seed_families)
        slot_shape, blueprint_shape = tuple(masks.slot.shape[1:]), tuple(masks.blueprint.shape[1:])
        if slot_shape != (N_OPS, n_slots) or blueprint_shape != (n_slots, n_blueprints):
            raise ValueError(
                f"masks have slot shape {tuple(masks.slot.shape)} and blueprint shape {tuple(masks.blueprint.shape)}; "
                f"expected (E, {N_OPS}, {n_slots}) and (E, {n_slots}, {n_blueprints})"
            )
        subtarget_shape = (len(SUBTARGET_OPS), n_slots, self.subtarget_count)
        if tuple(masks.subtarget.shape[1:]) != subtarget_shape:
            raise ValueError(
                f"masks have subtarget shape {tuple(masks.subtarget.shape)}; expected (E, {', '.join(map(str, subtarget_shape))}) "
                f"(the run's subtarget head has {self.subtarget_count} entries)"
            )
        for observation in observations:
            if observation.subtarget_count != self.subtarget_count:
                raise ValueError(
                    f"environment {observation.env_id} observes a subtarget head of {observation.subtarget_count}; "
                    f"the policy was built for {self.subtarget_count}"
                )
            if observation.seed_families != self.seed_families:
                raise ValueError(f"environment {observation.env_id} observes seed families {observation.seed_families}; "
                                 f"the policy was built for {self.seed_families}")
            if tuple(report.slot_id for report in observation.slots) != self.slot_ids:
                raise ValueError(f"environment {observation.env_id} reports other slots than {self.slot_ids}")

    def _draw_uniform(self, n_envs: int) -> dict[str, torch.Tensor]:
        """One draw of noise for every head of every environment (the generators advance the same way
        whatever is sampled).

        ``generator`` draws the noise of the heads and ops that state version 4 had, in its layout, and
        ``subtarget_generator`` the noise of what version 5 added (the two subtarget ops' entries of the
        op head, the subtarget head): a policy widened from version 4 draws exactly the noise it drew,
        so while the subtarget ops are masked it samples exactly the actions it sampled."""
        sizes = self.network.head_sizes
        legacy = {head: LEGACY_OPS if head == "op" else sizes[head] for head in HEADS if head != "subtarget"}
        noise = torch.rand(n_envs, sum(legacy.values()), generator=self.generator)
        parts = dict(zip(legacy, torch.split(noise, list(legacy.values()), dim=-1)))
        added = [N_OPS - LEGACY_OPS, sizes["subtarget"]]
        extra_ops, subtarget = torch.split(torch.rand(n_envs, sum(added), generator=self.subtarget_generator), added, dim=-1)
        parts["op"] = torch.cat([parts["op"], extra_ops], dim=-1)
        parts["subtarget"] = subtarget
        return {head: parts[head].to(self.device) for head in HEADS}

    @staticmethod
    def _step_record(
        features: FeatureBatch, decisions: Decisions, h: torch.Tensor, c: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {
            "base": features.base,
            "slots": features.slots,
            "blueprint_ids": features.blueprint_ids,
            "op_mask": decisions.masks.op,
            "slot_mask": decisions.masks.slot,
            "blueprint_mask": decisions.masks.blueprint,
            "subtarget_mask": decisions.masks.subtarget,
            "actions": decisions.actions,
            "log_prob": decisions.log_prob,
            "value": decisions.value,
            "h": h,
            "c": c,
        }


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
