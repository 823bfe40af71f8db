"""The ``pydoc`` task: character-level language modelling on the English help text CPython ships (no files)."""

from __future__ import annotations

import attrs

from esper_core.errors import DataError
from esper_core.tasks import TaskContext
from esper_text.options import (
    DEFAULT_MAX_TRAIN_WINDOWS,
    DEFAULT_MAX_VAL_WINDOWS,
    context_length_field,
    max_windows_field,
    stride_field,
    val_fraction_field,
)
from esper_text.sequence_task import TokenWindowTask, build_token_window_task
from esper_text.vocabulary import CharVocabulary

TASK_NAME = "pydoc"
SOURCE = "pydoc_data.topics"


@attrs.frozen
class PydocConfig:
    """Options of the ``pydoc`` task.

    The text is every value of ``pydoc_data.topics.topics`` in sorted-key order, joined with a newline;
    the last ``val_fraction`` of its characters is the validation split. ``context_length`` is the
    window length T. Training windows start every ``stride`` characters (unset: T, non-overlapping);
    validation windows never overlap. ``max_train_windows`` / ``max_val_windows`` keep that many
    windows spread evenly over each split (0: all of them).
    """

    context_length: int = context_length_field()
    val_fraction: float = val_fraction_field()
    stride: int | None = stride_field()
    max_train_windows: int = max_windows_field(DEFAULT_MAX_TRAIN_WINDOWS)
    max_val_windows: int = max_windows_field(DEFAULT_MAX_VAL_WINDOWS)


def pydoc_text() -> str:
    """The help topics CPython ships, in sorted-key order, one newline between topics."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:
        raise DataError(
            f"task '{TASK_NAME}' reads {SOURCE}, which this Python installation lacks ({exc}); "
            f"some distributions package it separately"
        ) from None
    return "\n".join(topics[key] for key in sorted(topics))


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """(training text, validation text): the validation text is the last ``val_fraction`` of characters."""
    val_chars = int(round(len(text) * val_fraction))
    cut = len(text) - val_chars
    return text[:cut], text[cut:]


def build_pydoc(config: PydocConfig, context: TaskContext) -> TokenWindowTask:
    """The ``pydoc`` task on ``context.device``; the vocabulary is every character of the whole text
    (code point order), so no validation character is unknown. The run seed does not affect the data."""
    text = pydoc_text()
    vocabulary = CharVocabulary.from_text(text)
    train_text, val_text = split_text(text, config.val_fraction)
    return build_token_window_task(
        name=TASK_NAME,
        source=SOURCE,
        vocabulary=vocabulary,
        train_tokens=vocabulary.encode(train_text),
        val_tokens=vocabulary.encode(val_text),
        context_length=config.context_length,
        stride=config.stride,
        max_train_windows=config.max_train_windows,
        max_val_windows=config.max_val_windows,
        device=context.device,
    )
