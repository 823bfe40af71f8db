"""Masked categorical distributions as in sb3-contrib MaskablePPO, and seeded Gumbel-max sampling."""

from __future__ import annotations

import torch

#: The logit written for a forbidden entry (sb3-contrib's value): its probability is exactly 0 in float32.
MASK_VALUE = -1e8


def masked_log_probs(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Log-probabilities over the last dimension with forbidden entries (``mask`` False) at ~ -1e8.

    Every row must allow at least one entry; ``mask`` None allows everything.
    """
    if mask is not None:
        logits = logits.masked_fill(~mask, MASK_VALUE)
    return torch.log_softmax(logits, dim=-1)


def masked_entropy(log_probs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Entropy over the allowed entries only (forbidden entries contribute exactly 0)."""
    terms = log_probs.exp() * log_probs
    if mask is not None:
        terms = terms.masked_fill(~mask, 0.0)
    return -terms.sum(dim=-1)


def choose(log_probs: torch.Tensor, uniform: torch.Tensor | None) -> torch.Tensor:
    """Sample an index per row by the Gumbel-max trick from ``uniform`` noise in [0, 1), or take the
    argmax when ``uniform`` is None (deterministic mode).

    ``argmax(log p + g)`` with ``g = -log(-log u)`` is distributed as ``Categorical(p)``; forbidden
    entries (log p ~ -1e8) can never win against noise bounded by ``-log(-log(1 - 2**-24)) < 17``.
    """
    if uniform is None:
        return log_probs.argmax(dim=-1)
    tiny = torch.finfo(uniform.dtype).tiny
    gumbel = -torch.log(-torch.log(uniform.clamp_min(tiny)))
    return (log_probs + gumbel).argmax(dim=-1)
