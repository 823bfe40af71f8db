"""Global step numbering shared by the sinks: one step per epoch, counted across every round of the run."""

from __future__ import annotations


def epoch_step(round_index: int, epoch: int, episode_length: int) -> int:
    """The global index of ``epoch`` (0-based) in round ``round_index``: ``round * episode_length + epoch``."""
    if not 0 <= epoch < episode_length:
        raise ValueError(f"epoch {epoch} is outside an episode of {episode_length} epochs (0-based)")
    if round_index < 0:
        raise ValueError(f"round {round_index} is negative")
    return round_index * episode_length + epoch


def round_step(round_index: int, episode_length: int) -> int:
    """The step that round-level records (policy updates, round summaries) carry: the round's last epoch."""
    return epoch_step(round_index, episode_length - 1, episode_length)
