"""The epoch step: a (round, epoch) pair as one monotone integer, the x axis every sink, plot and report shares."""

from __future__ import annotations


def epoch_step(round_index: int, epoch: int, episode_length: int) -> int:
    """The epoch step of ``epoch`` (0-based) in round ``round_index``: ``round * episode_length + epoch``."""
    if not 0 <= epoch < episode_length:
        raise ValueError(f"epoch {epoch} is outside an episode of {episode_length} epochs (0-based)")
    if round_index < 0:
        raise ValueError(f"round {round_index} is negative")
    return round_index * episode_length + epoch
