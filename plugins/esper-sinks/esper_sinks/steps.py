"""Step numbering shared by the sinks: the epoch step (``esper_core.leyline.epoch_step``), one per epoch
counted across every round of the run, and the step of round-level records."""

from __future__ import annotations

from esper_core.leyline import epoch_step

__all__ = ["epoch_step", "round_step"]


def round_step(round_index: int, episode_length: int) -> int:
    """The step that round-level records (policy updates, round summaries) carry: the round's last epoch."""
    return epoch_step(round_index, episode_length - 1, episode_length)
