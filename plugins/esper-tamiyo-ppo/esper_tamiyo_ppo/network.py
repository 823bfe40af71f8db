"""Policy V2: Obs V3 feature network, an LSTM, one head per action factor, V(s) and a detached Q(s, op)."""

from __future__ import annotations

import math

import attrs
import torch
from torch import nn

from esper_core.leyline import ENUM_HEAD_SIZES, HEADS, LifecycleOp, is_relevant
from esper_core.tamiyo import BASE_SIZE, slot_size

from esper_tamiyo_ppo.config import NetworkSizes
from esper_tamiyo_ppo.distributions import choose, masked_entropy, masked_log_probs

N_OPS = ENUM_HEAD_SIZES["op"]
HEAD_INDEX: dict[str, int] = {head: index for index, head in enumerate(HEADS)}
#: Heads sampled after op and slot, conditioned on both.
DETAIL_HEADS: tuple[str, ...] = HEADS[2:]
#: The ops that pick a subtarget, in the order of ``ActionMasks.subtarget``'s second axis (enable, disable).
SUBTARGET_OPS: tuple[LifecycleOp, LifecycleOp] = (LifecycleOp.ENABLE_SUBTARGET, LifecycleOp.DISABLE_SUBTARGET)
#: Heads whose sizes depend on the run (the others are enum vocabularies).
RUN_SIZED_HEADS: frozenset[str] = frozenset({"op", "slot", "blueprint", "subtarget"})
#: Gain of the last layer of each policy head: small, so the initial policy is near uniform (CleanRL).
POLICY_HEAD_GAIN = 0.01
HIDDEN_GAIN = math.sqrt(2.0)


def relevance_table() -> torch.Tensor:
    """(n_ops, n_heads) bool: ``table[op, h]`` says whether head ``h`` matters for ``op`` (CAUSAL_RELEVANCE)."""
    table = torch.zeros(N_OPS, len(HEADS), dtype=torch.bool)
    for op in LifecycleOp:
        for head, index in HEAD_INDEX.items():
            table[int(op), index] = is_relevant(op, head)
    return table


def layer_init(layer: nn.Linear, gain: float = HIDDEN_GAIN) -> nn.Linear:
    """Orthogonal weights with ``gain`` and zero bias (CleanRL's ``layer_init``)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def mlp_head(in_dim: int, hidden: int, out_dim: int, out_gain: float) -> nn.Sequential:
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden)), nn.ReLU(), layer_init(nn.Linear(hidden, out_dim), gain=out_gain)
    )


@attrs.frozen
class StepMasks:
    """The masks that applied to one batch of decisions, conditioned on the sampled op and slot.

    - ``op``: (N, n_ops)
    - ``slot``: (N, n_slots), the slots valid for the chosen op (all True when slot is irrelevant)
    - ``blueprint``: (N, n_blueprints), allowed in the chosen slot (all True when irrelevant)
    - ``subtarget``: (N, K), the group indices the chosen ENABLE/DISABLE_SUBTARGET may pick in the chosen
      slot (all True when irrelevant); None allows every index (as for a run without inventories)
    """

    op: torch.Tensor
    slot: torch.Tensor
    blueprint: torch.Tensor
    subtarget: torch.Tensor | None = None

    def head_mask(self, head: str) -> torch.Tensor | None:
        """The mask of ``head`` (None: every entry allowed)."""
        return {"op": self.op, "slot": self.slot, "blueprint": self.blueprint, "subtarget": self.subtarget}.get(head)


@attrs.frozen
class Decisions:
    """Sampled heads for a batch: ``actions`` (N, n_heads) long in HEADS order (irrelevant heads 0),
    their joint log-probability (N,), the masks used and V(s) (N,)."""

    actions: torch.Tensor
    log_prob: torch.Tensor
    masks: StepMasks
    value: torch.Tensor


class PolicyNetwork(nn.Module):
    """Feature network over Obs V3 -> LSTM -> factored policy heads, V(s) and Q(s, op).

    The op head reads the LSTM output ``z``; the slot head reads ``z`` and an embedding of the chosen
    op; every other head reads ``z`` and embeddings of the chosen op and slot (autoregressive
    factorisation). The Q head reads ``z.detach()``: its loss trains only itself.
    """

    def __init__(self, sizes: NetworkSizes, n_slots: int, n_blueprints: int, n_subtargets: int = 1) -> None:
        super().__init__()
        if n_slots < 1 or n_blueprints < 1 or n_subtargets < 1:
            raise ValueError(
                f"need at least one slot, one blueprint and one subtarget index, got {n_slots}, {n_blueprints} "
                f"and {n_subtargets}"
            )
        self.sizes = sizes
        self.n_slots = n_slots
        self.n_blueprints = n_blueprints
        self.n_subtargets = n_subtargets
        self.head_sizes: dict[str, int] = {
            "op": N_OPS,
            "slot": n_slots,
            "blueprint": n_blueprints,
            **{head: ENUM_HEAD_SIZES[head] for head in DETAIL_HEADS if head not in RUN_SIZED_HEADS},
            "subtarget": n_subtargets,
        }
        hidden = sizes.lstm_hidden
        act = sizes.action_embed_dim
        # -- feature network ----------------------------------------------------------------------
        self.blueprint_embedding = nn.Embedding(n_blueprints + 1, sizes.blueprint_embed_dim)
        self.slot_encoder = nn.Sequential(
            layer_init(nn.Linear(slot_size(n_subtargets) + sizes.blueprint_embed_dim, sizes.slot_dim)), nn.ReLU()
        )
        self.trunk = nn.Sequential(
            layer_init(nn.Linear(BASE_SIZE + n_slots * sizes.slot_dim, sizes.feature_dim)),
            nn.LayerNorm(sizes.feature_dim),
            nn.ReLU(),
            layer_init(nn.Linear(sizes.feature_dim, sizes.feature_dim)),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(sizes.feature_dim, hidden, batch_first=True)
        for name, parameter in self.lstm.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(parameter, 1.0)
            else:
                nn.init.zeros_(parameter)
        # -- policy heads -------------------------------------------------------------------------
        self.op_embedding = nn.Embedding(N_OPS, act)
        self.slot_embedding = nn.Embedding(n_slots, act)
        inputs = {"op": hidden, "slot": hidden + act, **{head: hidden + 2 * act for head in DETAIL_HEADS}}
        self.policy_heads = nn.ModuleDict(
            {head: mlp_head(inputs[head], sizes.head_hidden, self.head_sizes[head], POLICY_HEAD_GAIN) for head in HEADS}
        )
        # -- critics ------------------------------------------------------------------------------
        self.value_head = mlp_head(hidden, sizes.head_hidden, 1, 1.0)
        self.q_head = mlp_head(hidden, sizes.head_hidden, N_OPS, 1.0)
        self.register_buffer("relevance", relevance_table(), persistent=False)

    # -- pieces -----------------------------------------------------------------------------------

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero LSTM state for ``batch`` sequences: (h, c), each (1, batch, lstm_hidden)."""
        device = self.relevance.device
        zeros = torch.zeros(1, batch, self.sizes.lstm_hidden, device=device)
        return zeros, zeros.clone()

    def encode(
        self,
        base: torch.Tensor,
        slots: torch.Tensor,
        blueprint_ids: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(B, T, BASE_SIZE), (B, T, n_slots, slot_size(K)), (B, T, n_slots) -> z (B, T, lstm_hidden), new state."""
        embedded = self.blueprint_embedding(blueprint_ids)
        per_slot = self.slot_encoder(torch.cat([slots, embedded], dim=-1))
        features = self.trunk(torch.cat([base, per_slot.flatten(start_dim=-2)], dim=-1))
        z, (h, c) = self.lstm(features, state)
        return z, (h, c)

    def op_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.policy_heads["op"](z)

    def slot_logits(self, z: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        return self.policy_heads["slot"](torch.cat([z, self.op_embedding(op)], dim=-1))

    def detail_logits(self, z: torch.Tensor, op: torch.Tensor, slot: torch.Tensor) -> dict[str, torch.Tensor]:
        context = torch.cat([z, self.op_embedding(op), self.slot_embedding(slot)], dim=-1)
        return {head: self.policy_heads[head](context) for head in DETAIL_HEADS}

    def value(self, z: torch.Tensor) -> torch.Tensor:
        return self.value_head(z).squeeze(-1)

    def q_values(self, z: torch.Tensor) -> torch.Tensor:
        """Q(s, op) for every op, from a detached ``z``: a diagnostic critic that never moves the trunk."""
        return self.q_head(z.detach())

    def q_parameters(self) -> list[nn.Parameter]:
        return list(self.q_head.parameters())

    def trunk_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the Q head's (feature network, LSTM, policy heads, V head)."""
        q_ids = {id(parameter) for parameter in self.q_head.parameters()}
        return [parameter for parameter in self.parameters() if id(parameter) not in q_ids]

    # -- sampling and evaluation ------------------------------------------------------------------

    def sample(
        self,
        z: torch.Tensor,
        op_mask: torch.Tensor,
        slot_mask: torch.Tensor,
        blueprint_mask: torch.Tensor,
        uniform: dict[str, torch.Tensor] | None,
        subtarget_mask: torch.Tensor | None = None,
    ) -> Decisions:
        """Sample every head for a batch of states ``z`` (N, H): op first, then a slot valid for it, then
        a seed family (blueprint head) allowed in that slot and a subtarget index the op may pick there,
        then the remaining heads unmasked. Heads irrelevant to the sampled op are pinned to 0 and add
        nothing to the log-probability.

        Masks: ``op_mask`` (N, n_ops), ``slot_mask`` (N, n_ops, n_slots), ``blueprint_mask``
        (N, n_slots, n_blueprints), ``subtarget_mask`` (N, 2, n_slots, K): ``ActionMasks.subtarget``,
        None for a batch where no slot has an inventory (the subtarget ops must then be masked off).
        ``uniform`` maps each head to (N, head size) noise in [0, 1); None takes the argmax of every head.
        """
        rows = torch.arange(z.shape[0], device=z.device)
        if not bool(op_mask.any(dim=-1).all()):
            raise ValueError("an op mask allows no op at all (WAIT must always be allowed)")
        log_probs: dict[str, torch.Tensor] = {}
        chosen: dict[str, torch.Tensor] = {}

        def noise(head: str) -> torch.Tensor | None:
            return None if uniform is None else uniform[head]

        log_probs["op"] = masked_log_probs(self.op_logits(z), op_mask)
        op = choose(log_probs["op"], noise("op"))
        chosen["op"] = op
        relevant = self.relevance[op]

        slot_relevant = relevant[:, HEAD_INDEX["slot"]]
        step_slot_mask = slot_mask[rows, op] | ~slot_relevant.unsqueeze(-1)
        if not bool(step_slot_mask.any(dim=-1).all()):
            raise ValueError("the masks allow an op for which no slot is valid")
        log_probs["slot"] = masked_log_probs(self.slot_logits(z, op), step_slot_mask)
        slot = torch.where(slot_relevant, choose(log_probs["slot"], noise("slot")), 0)
        chosen["slot"] = slot

        blueprint_relevant = relevant[:, HEAD_INDEX["blueprint"]]
        step_blueprint_mask = blueprint_mask[rows, slot] | ~blueprint_relevant.unsqueeze(-1)
        if not bool(step_blueprint_mask.any(dim=-1).all()):
            raise ValueError("the masks allow GERMINATE in a slot where no seed family is allowed")
        step_subtarget_mask = self.step_subtarget_mask(op, slot, relevant, subtarget_mask)
        step_masks = {"blueprint": step_blueprint_mask, "subtarget": step_subtarget_mask}
        details = self.detail_logits(z, op, slot)
        for head in DETAIL_HEADS:
            log_probs[head] = masked_log_probs(details[head], step_masks.get(head))
            chosen[head] = torch.where(relevant[:, HEAD_INDEX[head]], choose(log_probs[head], noise(head)), 0)

        actions = torch.stack([chosen[head] for head in HEADS], dim=-1)
        picked = torch.stack(
            [log_probs[head].gather(-1, chosen[head].unsqueeze(-1)).squeeze(-1) for head in HEADS], dim=-1
        )
        log_prob = torch.where(relevant, picked, 0.0).sum(dim=-1)
        return Decisions(
            actions=actions,
            log_prob=log_prob,
            masks=StepMasks(
                op=op_mask, slot=step_slot_mask, blueprint=step_blueprint_mask, subtarget=step_subtarget_mask
            ),
            value=self.value(z),
        )

    def step_subtarget_mask(
        self, op: torch.Tensor, slot: torch.Tensor, relevant: torch.Tensor, subtarget_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """(N, K): the indices the sampled op may pick in the sampled slot (``subtarget_mask[:, 0]`` for
        ENABLE_SUBTARGET, ``[:, 1]`` for DISABLE_SUBTARGET); all True where the head is irrelevant."""
        subtarget_relevant = relevant[:, HEAD_INDEX["subtarget"]]
        rows = torch.arange(op.shape[0], device=op.device)
        if subtarget_mask is None:
            if bool(subtarget_relevant.any()):
                raise ValueError("a subtarget op was sampled without a subtarget mask (ActionMasks.subtarget)")
            return torch.ones(op.shape[0], self.n_subtargets, dtype=torch.bool, device=op.device)
        direction = (op == int(SUBTARGET_OPS[1])).long()
        step_mask = subtarget_mask[rows, direction, slot] | ~subtarget_relevant.unsqueeze(-1)
        if not bool(step_mask.any(dim=-1).all()):
            raise ValueError("the masks allow a subtarget op in a slot where no subtarget index is allowed")
        return step_mask

    def evaluate(
        self, z: torch.Tensor, actions: torch.Tensor, masks: StepMasks
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability (N,) of stored ``actions`` (N, n_heads) and per-head entropies (N, n_heads).

        Heads irrelevant to each action's op contribute 0 to both; masked entries contribute nothing
        to an entropy. Op and slot are teacher-forced into the conditioned heads.
        """
        op = actions[:, HEAD_INDEX["op"]]
        slot = actions[:, HEAD_INDEX["slot"]]
        relevant = self.relevance[op]
        log_probs = {
            "op": masked_log_probs(self.op_logits(z), masks.op),
            "slot": masked_log_probs(self.slot_logits(z, op), masks.slot),
        }
        details = self.detail_logits(z, op, slot)
        for head in DETAIL_HEADS:
            log_probs[head] = masked_log_probs(details[head], masks.head_mask(head))
        picked = torch.stack(
            [log_probs[head].gather(-1, actions[:, i : i + 1]).squeeze(-1) for head, i in HEAD_INDEX.items()], dim=-1
        )
        entropies = torch.stack([masked_entropy(log_probs[head], masks.head_mask(head)) for head in HEADS], dim=-1)
        log_prob = torch.where(relevant, picked, 0.0).sum(dim=-1)
        return log_prob, torch.where(relevant, entropies, 0.0)


def parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
