"""Simic's PPO update: clipped surrogate over minibatches of LSTM sequences, read top to bottom."""

from __future__ import annotations

import copy

import attrs
import torch
from torch import nn

from esper_core.leyline import HEADS

from esper_tamiyo_ppo.buffer import SequenceBatch
from esper_tamiyo_ppo.config import PPOConfig
from esper_tamiyo_ppo.network import HEAD_INDEX, PolicyNetwork, StepMasks

#: SB3's rule: stop the update before a minibatch step once its approximate KL exceeds 1.5 x target_kl.
KL_STOP_FACTOR = 1.5


def normalize_advantages(advantages: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (population) standard deviation; a single advantage becomes 0."""
    return (advantages - advantages.mean()) / (advantages.std(correction=0) + 1e-8)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns); NaN when the returns do not vary (CleanRL)."""
    variance = returns.var(correction=0)
    if float(variance) == 0.0:
        return float("nan")
    return float(1.0 - (returns - values).var(correction=0) / variance)


def eligible_steps(network: PolicyNetwork, actions: torch.Tensor, masks: StepMasks, dtype: torch.dtype) -> torch.Tensor:
    """(N, n_heads) bool: where a head is causally relevant to the step's op and has at least 2 valid
    choices (op, slot, blueprint and subtarget count the choices their masks allow; the other heads are
    unmasked)."""
    relevant = network.relevance[actions[:, HEAD_INDEX["op"]]]
    return relevant & (_choices(network, masks, dtype, actions.shape[0]) > 1)


def _choices(network: PolicyNetwork, masks: StepMasks, dtype: torch.dtype, steps: int) -> torch.Tensor:
    """(N, n_heads): the number of valid choices of every head at every step."""
    masked = {head: masks.head_mask(head) for head in HEADS}
    return torch.stack(
        [
            masked[head].sum(dim=-1).to(dtype)
            if masked[head] is not None
            else torch.full((steps,), float(network.head_sizes[head]), dtype=dtype, device=masks.op.device)
            for head in HEADS
        ],
        dim=-1,
    )


def normalized_entropy(
    network: PolicyNetwork, actions: torch.Tensor, masks: StepMasks, entropies: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head, the sum over steps of H / ln(valid choices) and the number of steps summed (both
    (n_heads,)). A step counts for a head only where it is eligible (see ``eligible_steps``); a head
    with no such step has count 0."""
    choices = _choices(network, masks, entropies.dtype, entropies.shape[0])
    eligible = eligible_steps(network, actions, masks, entropies.dtype)
    normalized = torch.where(eligible, entropies / choices.clamp_min(2.0).log(), 0.0)
    return normalized.sum(dim=0), eligible.sum(dim=0).to(entropies.dtype)


def entropy_boosts(norm_sum: torch.Tensor, norm_count: torch.Tensor, config: PPOConfig) -> torch.Tensor:
    """(n_heads,): ``entropy_floor_boost`` for a head whose mean normalised entropy is below its floor
    (``entropy_floor``; ``subtarget_entropy_floor`` for the subtarget head when set) over at least one
    eligible step, 1 for every other head."""
    floors = torch.tensor([config.head_entropy_floor(head) for head in HEADS], dtype=norm_sum.dtype, device=norm_sum.device)
    below = (norm_count > 0) & (norm_sum < floors * norm_count)
    return torch.where(below, config.entropy_floor_boost, 1.0).to(norm_sum.dtype)


#: Heads whose entropy bonus is scaled by ``entropy_coef`` (the subtarget head has its own coefficient).
_SHARED_COEF = torch.tensor([head != "subtarget" for head in HEADS])


@attrs.frozen
class LossTerms:
    """The losses of one minibatch (``loss`` carries the graph) and its diagnostics (detached)."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    q_value_loss: torch.Tensor
    entropy: torch.Tensor  # (n_heads,), mean over steps, 0 where a head is irrelevant
    entropy_eligible_sum: torch.Tensor  # (n_heads,), sum in nats over the steps counted in entropy_norm_count
    entropy_norm_sum: torch.Tensor  # (n_heads,), see normalized_entropy
    entropy_norm_count: torch.Tensor  # (n_heads,)
    entropy_below_floor: torch.Tensor  # (n_heads,), 1.0 where the floor boosted the head's bonus, else 0.0
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor


def ppo_losses(network: PolicyNetwork, batch: SequenceBatch, config: PPOConfig) -> LossTerms:
    """Re-run the network over ``batch``'s sequences from their stored LSTM states and form the losses."""
    state = (batch.h0.unsqueeze(0).contiguous(), batch.c0.unsqueeze(0).contiguous())
    z, _ = network.encode(batch.base, batch.slots, batch.blueprint_ids, state)
    valid = batch.valid
    z = z[valid]
    actions = batch.actions[valid]
    masks = batch.valid_masks()
    log_prob, entropies = network.evaluate(z, actions, masks)
    value = network.value(z)
    q_taken = network.q_values(z).gather(-1, actions[:, HEAD_INDEX["op"]].unsqueeze(-1)).squeeze(-1)
    old_log_prob = batch.log_prob[valid]
    old_value = batch.value[valid]
    advantages = batch.advantages[valid]
    returns = batch.returns[valid]

    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1.0) - log_ratio).mean()  # the k3 estimator (CleanRL, SB3)
        clipfrac = ((ratio - 1.0).abs() > config.clip_coef).float().mean()

    if config.normalize_advantages:
        advantages = normalize_advantages(advantages)
    surrogate = -advantages * ratio
    clipped_surrogate = -advantages * ratio.clamp(1.0 - config.clip_coef, 1.0 + config.clip_coef)
    policy_loss = torch.max(surrogate, clipped_surrogate).mean()

    if config.value_clip is None:
        value_loss = 0.5 * (value - returns).square().mean()
    else:
        clipped_value = old_value + (value - old_value).clamp(-config.value_clip, config.value_clip)
        value_loss = 0.5 * torch.max((value - returns).square(), (clipped_value - returns).square()).mean()

    q_value_loss = 0.5 * (q_taken - returns).square().mean()

    entropy = entropies.mean(dim=0)
    weights = torch.tensor([config.head_weight(head) for head in HEADS], dtype=entropy.dtype, device=entropy.device)
    with torch.no_grad():
        norm_sum, norm_count = normalized_entropy(network, actions, masks, entropies)
        eligible = eligible_steps(network, actions, masks, entropies.dtype)
        eligible_sum = torch.where(eligible, entropies.detach(), 0.0).sum(dim=0)
        boost = entropy_boosts(norm_sum, norm_count, config)
    weighted = entropy * weights * boost
    shared = _SHARED_COEF.to(entropy.device)
    # the subtarget head's bonus has its own coefficient; where it is never relevant its entropy is 0
    entropy_bonus = torch.where(shared, weighted, 0.0).sum()
    subtarget_bonus = torch.where(shared, 0.0, weighted).sum()

    loss = (
        policy_loss
        - config.entropy_coef * entropy_bonus
        - config.head_entropy_coef("subtarget") * subtarget_bonus
        + config.vf_coef * value_loss
        + config.q_coef * q_value_loss
    )
    return LossTerms(
        loss=loss,
        policy_loss=policy_loss.detach(),
        value_loss=value_loss.detach(),
        q_value_loss=q_value_loss.detach(),
        entropy=entropy.detach(),
        entropy_eligible_sum=eligible_sum,
        entropy_norm_sum=norm_sum,
        entropy_norm_count=norm_count,
        entropy_below_floor=(boost > 1.0).to(boost.dtype),
        approx_kl=approx_kl,
        clipfrac=clipfrac,
    )


#: LossTerms fields summed over the minibatches an update evaluates (their means become the metrics).
_SUMMED_TERMS: tuple[str, ...] = (
    "policy_loss", "value_loss", "q_value_loss", "entropy", "entropy_eligible_sum", "approx_kl",
    "clipfrac", "entropy_norm_sum", "entropy_norm_count", "entropy_below_floor",
)


def batch_is_finite(batch: SequenceBatch) -> bool:
    """True when every real step's inputs, log-probability, value, advantage and return is finite."""
    valid = batch.valid
    checks = [
        torch.isfinite(getattr(batch, name)[valid]).all()
        for name in ("base", "slots", "log_prob", "value", "advantages", "returns")
    ]
    return bool(torch.stack(checks).all())


def parameters_are_finite(network: nn.Module) -> bool:
    return bool(torch.stack([torch.isfinite(parameter).all() for parameter in network.parameters()]).all())


def _all_finite(*values: torch.Tensor) -> bool:
    return bool(torch.isfinite(torch.stack([value.detach().reshape(()) for value in values])).all())


def ppo_update(
    network: PolicyNetwork,
    optimizer: torch.optim.Optimizer,
    batch: SequenceBatch,
    config: PPOConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """``update_epochs`` passes over shuffled minibatches of whole sequences; returns the metrics.

    Gradients are clipped to ``max_grad_norm`` separately for the Q head and for everything else, so
    the diagnostic Q loss cannot shrink the policy's step through a shared clip.

    Nothing non-finite reaches the optimiser: a batch with a non-finite input, advantage or return is
    not learned from at all; a minibatch whose loss, approximate KL or gradient norm is non-finite is
    skipped (no optimiser step, left out of the loss metrics); and should a step still leave a
    non-finite parameter, the network and optimiser go back to their state before the update. Each
    case is counted under ``anomalies/`` in the returned metrics.
    """
    if config.num_minibatches > batch.num_sequences:
        raise ValueError(f"{config.num_minibatches} minibatches cannot be cut from {batch.num_sequences} sequences")
    anomalies = {
        "anomalies/non_finite_batches": 0.0,
        "anomalies/non_finite_minibatches": 0.0,
        "anomalies/non_finite_updates_reverted": 0.0,
    }
    if not batch_is_finite(batch):
        anomalies["anomalies/non_finite_batches"] = 1.0
        return {**anomalies, "charts/update_epochs_run": 0.0, "charts/minibatch_steps": 0.0}
    with torch.no_grad():
        valid = batch.valid
        explained = explained_variance(batch.value[valid], batch.returns[valid])
    before = (copy.deepcopy(network.state_dict()), copy.deepcopy(optimizer.state_dict()))
    trunk_parameters = network.trunk_parameters()
    q_parameters = network.q_parameters()
    sums: dict[str, torch.Tensor] = {}
    evaluated = 0
    optimizer_steps = 0
    epochs_run = 0
    stopped = False
    for _epoch in range(config.update_epochs):
        order = torch.randperm(batch.num_sequences, generator=generator)
        stepped_this_epoch = False
        for indices in torch.tensor_split(order, config.num_minibatches):
            terms = ppo_losses(network, batch.select(indices.to(batch.valid.device)), config)
            if config.target_kl is not None and float(terms.approx_kl) > KL_STOP_FACTOR * config.target_kl:
                if _all_finite(terms.loss, terms.approx_kl):
                    _accumulate(sums, terms)
                    evaluated += 1
                else:
                    anomalies["anomalies/non_finite_minibatches"] += 1.0
                stopped = True
                break
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            trunk_norm = nn.utils.clip_grad_norm_(trunk_parameters, config.max_grad_norm)
            q_norm = nn.utils.clip_grad_norm_(q_parameters, config.max_grad_norm)
            if not _all_finite(terms.loss, terms.approx_kl, trunk_norm, q_norm):
                optimizer.zero_grad(set_to_none=True)
                anomalies["anomalies/non_finite_minibatches"] += 1.0
                continue
            _accumulate(sums, terms)
            evaluated += 1
            optimizer.step()
            optimizer_steps += 1
            stepped_this_epoch = True
        epochs_run += int(stepped_this_epoch)
        if stopped:
            break
    if optimizer_steps and not parameters_are_finite(network):
        network.load_state_dict(before[0])
        optimizer.load_state_dict(before[1])
        anomalies["anomalies/non_finite_updates_reverted"] = 1.0
    metrics = {
        **anomalies,
        "ppo/kl_early_stop": float(stopped),
        "charts/update_epochs_run": float(epochs_run),
        "charts/minibatch_steps": float(optimizer_steps),
    }
    if evaluated:
        metrics.update(_loss_metrics(sums, evaluated, explained))
    return metrics


def _accumulate(sums: dict[str, torch.Tensor], terms: LossTerms) -> None:
    for name in _SUMMED_TERMS:
        value = getattr(terms, name).detach()
        sums[name] = sums[name] + value if name in sums else value


def _loss_metrics(sums: dict[str, torch.Tensor], evaluated: int, explained: float) -> dict[str, float]:
    """The metric-key contract the core reads (``policy_loss``, ``value_loss``, ``entropy``,
    ``entropy/<head>``, ``approx_kl``, ``clip_fraction``) and this plugin's own diagnostics."""
    means = {name: total / evaluated for name, total in sums.items()}
    eligible_sum = sums["entropy_eligible_sum"].tolist()
    norm_sum, norm_count = sums["entropy_norm_sum"].tolist(), sums["entropy_norm_count"].tolist()
    below_floor = (sums["entropy_below_floor"] / evaluated).tolist()
    return {
        "policy_loss": float(means["policy_loss"]),
        "value_loss": float(means["value_loss"]),
        # mean over decisions of the sampled action's entropy (the heads relevant to its op), in nats
        "entropy": float(means["entropy"].sum()),
        # per head, in nats, mean over the decisions where the head is relevant to the op and has at
        # least 2 valid choices (a head with no such decision is left out rather than reported as 0)
        **{
            f"entropy/{head}": eligible_sum[index] / norm_count[index]
            for head, index in HEAD_INDEX.items()
            if norm_count[index]
        },
        "approx_kl": float(means["approx_kl"]),
        "clip_fraction": float(means["clipfrac"]),
        "ppo/q_value_loss": float(means["q_value_loss"]),
        "ppo/explained_variance": explained,
        # mean over the steps where the head is relevant and has >= 2 choices (NaN: no such step)
        **{
            f"charts/entropy_norm/{head}": norm_sum[index] / norm_count[index] if norm_count[index] else float("nan")
            for head, index in HEAD_INDEX.items()
        },
        # share of the minibatches evaluated in which the entropy floor boosted the head's bonus
        **{f"charts/entropy_floor_boosted/{head}": below_floor[index] for head, index in HEAD_INDEX.items()},
    }
