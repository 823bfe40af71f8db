"""The rollout buffer (one round of decisions per environment at a time), GAE, and sequence minibatches."""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from esper_tamiyo_ppo.network import StepMasks

#: What the policy stores per decision, each (E, ...): the normalised inputs the policy saw, the
#: masks it sampled under, the sampled heads, their joint log-probability and V(s) at rollout time, and
#: the LSTM state *before* the step (so any step can start a sequence).
STEP_KEYS: tuple[str, ...] = (
    "base",
    "slots",
    "blueprint_ids",
    "op_mask",
    "slot_mask",
    "blueprint_mask",
    "subtarget_mask",
    "actions",
    "log_prob",
    "value",
    "h",
    "c",
)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminals: torch.Tensor,
    bootstrap_value: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and λ-returns for (T, N) rewards and values.

    ``terminals[t]`` True means nothing follows step ``t`` (its reward ended the episode).
    ``bootstrap_value`` (N,) is V of the state after the last step; it is used only where
    ``terminals[-1]`` is False (a truncated sequence).
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(steps)):
        next_value = bootstrap_value if t == steps - 1 else values[t + 1]
        nonterminal = (~terminals[t]).to(rewards.dtype)
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        running = delta + gamma * gae_lambda * nonterminal * running
        advantages[t] = running
    return advantages, advantages + values


@attrs.frozen
class SequenceBatch:
    """``N`` sequences of ``L`` steps, batch first, padded at the end; ``valid`` (N, L) marks real steps.

    ``h0``/``c0`` (N, lstm_hidden) are the LSTM state at each sequence's first step, as stored at
    rollout time.
    """

    base: torch.Tensor
    slots: torch.Tensor
    blueprint_ids: torch.Tensor
    op_mask: torch.Tensor
    slot_mask: torch.Tensor
    blueprint_mask: torch.Tensor
    subtarget_mask: torch.Tensor
    actions: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    valid: torch.Tensor
    h0: torch.Tensor
    c0: torch.Tensor

    @property
    def num_sequences(self) -> int:
        return int(self.valid.shape[0])

    def select(self, indices: torch.Tensor) -> SequenceBatch:
        fields = attrs.fields(SequenceBatch)
        return SequenceBatch(**{field.name: getattr(self, field.name)[indices] for field in fields})

    def valid_masks(self) -> StepMasks:
        valid = self.valid
        return StepMasks(
            op=self.op_mask[valid], slot=self.slot_mask[valid], blueprint=self.blueprint_mask[valid],
            subtarget=self.subtarget_mask[valid],
        )


class RolloutBuffer:
    """Decisions of the current round (a list of steps) and of the rounds closed since the last update.

    A step is added at ``act``, its reward at ``record``; ``close_round`` stacks the round into
    (T, E, ...) tensors.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rounds: list[dict[str, torch.Tensor]] = []
        self.steps: list[dict[str, torch.Tensor]] = []
        self.rewards: list[torch.Tensor] = []
        self.terminals: list[bool] = []

    def add_step(self, step: dict[str, torch.Tensor]) -> None:
        if set(step) != set(STEP_KEYS):
            raise ValueError(f"a step needs exactly {list(STEP_KEYS)}, got {sorted(step)}")
        if len(self.rewards) != len(self.steps):
            raise RuntimeError("a new step was added before the previous step's reward")
        self.steps.append(step)

    def add_reward(self, rewards: torch.Tensor, terminal: bool) -> None:
        if len(self.rewards) != len(self.steps) - 1:
            raise RuntimeError("a reward arrived with no step waiting for it")
        self.rewards.append(rewards)
        self.terminals.append(terminal)

    def close_round(self) -> None:
        """Stack the current round: every step must have its reward and only the last may be terminal."""
        if not self.steps or len(self.rewards) != len(self.steps):
            raise RuntimeError(f"cannot close a round of {len(self.steps)} steps and {len(self.rewards)} rewards")
        if any(self.terminals[:-1]):
            raise RuntimeError("a terminal reward came before the last step of the round")
        stacked = {key: torch.stack([step[key] for step in self.steps]) for key in STEP_KEYS}
        stacked["rewards"] = torch.stack(self.rewards)
        flags = torch.tensor(self.terminals, dtype=torch.bool, device=self.device)
        stacked["terminals"] = flags.view(-1, 1).repeat(1, stacked["rewards"].shape[1])
        self.rounds.append(stacked)
        self.steps, self.rewards, self.terminals = [], [], []

    def clear(self) -> None:
        self.rounds, self.steps, self.rewards, self.terminals = [], [], [], []

    def sequences(self, gamma: float, gae_lambda: float, sequence_length: int) -> SequenceBatch:
        """GAE per closed round, then every (round, environment) sequence cut into chunks of
        ``sequence_length`` steps (0: one chunk per whole sequence), batch first."""
        if not self.rounds:
            raise RuntimeError("no closed round to learn from")
        if self.steps:
            raise RuntimeError("sequences() called in the middle of a round")
        columns: dict[str, list[torch.Tensor]] = {key: [] for key in (*STEP_KEYS, "advantages", "returns")}
        for data in self.rounds:
            terminals = data["terminals"]
            if not bool(terminals[-1].all()):
                raise RuntimeError(
                    "a round ended on a non-terminal reward: bootstrapping would need V of a state the "
                    "policy never observed"
                )
            advantages, returns = compute_gae(
                data["rewards"], data["value"], terminals, torch.zeros_like(data["value"][-1]), gamma, gae_lambda
            )
            for key in STEP_KEYS:
                columns[key].append(data[key])
            columns["advantages"].append(advantages)
            columns["returns"].append(returns)
        # (T, N, ...) with N = rounds x environments, then batch first: (N, T, ...)
        merged = {key: torch.cat(parts, dim=1).transpose(0, 1) for key, parts in columns.items()}
        steps = merged["actions"].shape[1]
        length = steps if sequence_length == 0 else sequence_length
        chunks = math.ceil(steps / length)
        padded_steps = chunks * length
        valid = torch.zeros(merged["actions"].shape[0], padded_steps, dtype=torch.bool, device=self.device)
        valid[:, :steps] = True
        out: dict[str, torch.Tensor] = {"valid": valid.reshape(-1, length)}
        for key, tensor in merged.items():
            if key in ("h", "c"):
                out[key + "0"] = tensor[:, ::length].reshape(-1, tensor.shape[-1])
                continue
            pad = torch.zeros(
                (tensor.shape[0], padded_steps - steps, *tensor.shape[2:]), dtype=tensor.dtype, device=tensor.device
            )
            full = torch.cat([tensor, pad], dim=1)
            out[key] = full.reshape(full.shape[0] * chunks, length, *full.shape[2:])
        return SequenceBatch(**out)

    # -- checkpointing ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        def to_cpu(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {key: value.detach().cpu().clone() for key, value in data.items()}

        return {
            "rounds": [to_cpu(data) for data in self.rounds],
            "steps": [to_cpu(step) for step in self.steps],
            "rewards": [reward.detach().cpu().clone() for reward in self.rewards],
            "terminals": list(self.terminals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def to_device(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {key: value.to(self.device) for key, value in data.items()}

        self.rounds = [to_device(data) for data in state["rounds"]]
        self.steps = [to_device(step) for step in state["steps"]]
        self.rewards = [reward.to(self.device) for reward in state["rewards"]]
        self.terminals = [bool(flag) for flag in state["terminals"]]
