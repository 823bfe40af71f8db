"""The ``tinystories`` task: character-level language modelling on TinyStories read from a local file (never downloaded)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import torch

from esper_core.config import path_field
from esper_core.errors import DataError
from esper_core.tasks import TaskContext, require_memory
from esper_core.validators import non_negative_int
from esper_text.options import (
    DEFAULT_MAX_TRAIN_WINDOWS,
    DEFAULT_MAX_VAL_WINDOWS,
    context_length_field,
    max_windows_field,
    stride_field,
    val_fraction_field,
)
from esper_text.sequence_task import TokenWindowTask, build_token_window_task
from esper_text.vocabulary import END_OF_TEXT, UNKNOWN, CharVocabulary

TASK_NAME = "tinystories"
#: Separates stories in a .txt file (TinyStories' own .txt files put it on a line of its own).
STORY_SEPARATOR = "<|endoftext|>"
#: Fields holding a story in a JSON object, in order of preference.
STORY_FIELDS = ("story", "text")
SPECIALS = (UNKNOWN, END_OF_TEXT)

#: A blank line (possibly holding spaces or tabs) and any whitespace after it.
_BLANK_LINES = re.compile(r"\n[^\S\n]*\n\s*")

_ACCEPTED_FORMATS = (
    f"accepted: a .txt file (UTF-8; stories separated by {STORY_SEPARATOR} or, without it, by blank lines), "
    f'a .json file (a list of objects with a "story" or "text" field) or a .jsonl file (one such object '
    f"per line). Esper never downloads datasets at run time; put the file there first and point [task] path at it"
)


@attrs.frozen
class TinyStoriesConfig:
    """Options of the ``tinystories`` task.

    ``path`` names a .txt, .json or .jsonl file (see the README for the formats). ``max_stories`` keeps
    the first N stories in file order (0: all). The last ``val_fraction`` of the stories (at least
    one) is the validation split. The window options are those of ``pydoc``.
    """

    path: str = path_field(default="data/tinystories.txt")
    max_stories: int = attrs.field(default=0, validator=non_negative_int())
    context_length: int = context_length_field()
    val_fraction: float = val_fraction_field()
    stride: int | None = stride_field()
    max_train_windows: int = max_windows_field(DEFAULT_MAX_TRAIN_WINDOWS)
    max_val_windows: int = max_windows_field(DEFAULT_MAX_VAL_WINDOWS)


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"TinyStories file '{path}' line {line}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    return text.replace("\r\n", "\n")


def _story_of(item: Any, path: Path, where: str) -> str:
    """The story of one JSON value: its "story" field, else its "text" field (a string either way)."""
    if not isinstance(item, dict):
        raise DataError(f"TinyStories file '{path}' {where}: expected an object, got {type(item).__name__}")
    for field in STORY_FIELDS:
        if field in item:
            value = item[field]
            if not isinstance(value, str):
                raise DataError(
                    f"TinyStories file '{path}' {where}: field \"{field}\" is {type(value).__name__}, expected a string"
                )
            return value
    raise DataError(
        f"TinyStories file '{path}' {where}: the object has neither a \"story\" nor a \"text\" field "
        f"(keys: {sorted(item)})"
    )


def _split_txt(text: str) -> list[str]:
    if STORY_SEPARATOR in text:
        return text.split(STORY_SEPARATOR)
    return _BLANK_LINES.split(text)


def _too_deep(path: Path, where: str = "") -> str:
    return (
        f"TinyStories file '{path}'{where}: JSON nested too deeply to read; "
        f'a story is an object with a "story" or "text" string field'
    )


def _parse_json(text: str, path: Path) -> list[str]:
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"TinyStories file '{path}' line {exc.lineno} column {exc.colno}: malformed JSON ({exc.msg})"
        ) from None
    except RecursionError:
        raise DataError(_too_deep(path)) from None
    if not isinstance(content, list):
        raise DataError(f"TinyStories file '{path}': expected a JSON list of objects, got {type(content).__name__}")
    return [_story_of(item, path, f"item {index}") for index, item in enumerate(content)]


def _parse_jsonl(text: str, path: Path, max_stories: int) -> list[str]:
    stories: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if max_stories and len(stories) >= max_stories:
            break
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"TinyStories file '{path}' line {number} column {exc.colno}: malformed JSON ({exc.msg})"
            ) from None
        except RecursionError:
            raise DataError(_too_deep(path, f" line {number}")) from None
        story = _story_of(item, path, f"line {number}").strip()
        if story:
            stories.append(story)
    return stories


#: Peak bytes per character of the file while the task is built from all its stories (text, story list,
#: token ids and windows); with ``max_stories`` only the raw bytes and the decoded text are whole-file.
BUILD_BYTES_PER_CHARACTER = 20
READ_BYTES_PER_CHARACTER = 3


def _require_memory_for(path: Path, size: int, max_stories: int) -> None:
    """A ``ConfigError`` naming the file before reading it when building the task would not fit in memory."""
    per_character = READ_BYTES_PER_CHARACTER if max_stories else BUILD_BYTES_PER_CHARACTER
    stories = f"the first {max_stories} stories" if max_stories else "all its stories"
    what = f"[task] path = '{path}' ({size / 1024**3:.1f} GiB file, {stories})"
    advice = "use a shorter file" if max_stories else "set [task] max_stories or use a shorter file"
    require_memory(size * per_character, torch.device("cpu"), what=what, advice=advice)


def read_stories(path_name: str, max_stories: int = 0) -> list[str]:
    """The stories of a .txt, .json or .jsonl file in file order, each stripped of surrounding whitespace,
    empty ones dropped, the first ``max_stories`` kept (0: all); ``DataError`` naming the file otherwise."""
    path = Path(path_name).expanduser()
    if not path.exists():
        raise DataError(f"TinyStories file '{path}' does not exist; {_ACCEPTED_FORMATS}")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".json", ".jsonl"):
        raise DataError(f"TinyStories file '{path}' has suffix '{path.suffix}'; {_ACCEPTED_FORMATS}")
    try:
        _require_memory_for(path, path.stat().st_size, max_stories)
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"TinyStories file '{path}' cannot be read: {exc.strerror or exc}") from None
    text = _decode(path, raw)
    del raw
    if suffix == ".txt":
        pieces = _split_txt(text)
    elif suffix == ".json":
        pieces = _parse_json(text, path)
    else:
        pieces = _parse_jsonl(text, path, max_stories)
    stories = [story for story in (piece.strip() for piece in pieces) if story]
    return stories[:max_stories] if max_stories else stories


def split_stories(stories: list[str], val_fraction: float, path: Path) -> tuple[list[str], list[str]]:
    """(training stories, validation stories): the last ``val_fraction`` of the stories, at least one."""
    if len(stories) < 2:
        raise DataError(
            f"TinyStories file '{path}' holds {len(stories)} stories; the task needs at least 2 "
            f"(training comes first, validation is the last stories)"
        )
    val_count = min(max(1, int(len(stories) * val_fraction + 0.5)), len(stories) - 1)
    cut = len(stories) - val_count
    return stories[:cut], stories[cut:]


def encode_stories(stories: list[str], vocabulary: CharVocabulary) -> torch.Tensor:
    """One token stream: each story's characters followed by the ``<|endoftext|>`` token."""
    ids = vocabulary.encode("".join(stories))
    ends = torch.tensor([len(story) for story in stories], dtype=torch.long).cumsum(0)
    stream = torch.full((ids.numel() + len(stories),), vocabulary.special_id(END_OF_TEXT), dtype=torch.long)
    keep = torch.ones(stream.numel(), dtype=torch.bool)
    keep[ends + torch.arange(len(stories))] = False  # story i ends before i earlier separators
    stream[keep] = ids
    return stream


def build_tinystories(config: TinyStoriesConfig, context: TaskContext) -> TokenWindowTask:
    """The ``tinystories`` task on ``context.device``. The vocabulary is ``<unk>``, ``<|endoftext|>``,
    then every character of the training stories in code point order; a validation character that
    never occurs in training encodes to ``<unk>``. The run seed does not affect the data."""
    path = Path(config.path).expanduser()
    stories = read_stories(config.path, config.max_stories)
    train_stories, val_stories = split_stories(stories, config.val_fraction, path)
    vocabulary = CharVocabulary.from_text("".join(train_stories), specials=SPECIALS)
    return build_token_window_task(
        name=TASK_NAME,
        source=f"TinyStories file '{path}'",
        vocabulary=vocabulary,
        train_tokens=encode_stories(train_stories, vocabulary),
        val_tokens=encode_stories(val_stories, vocabulary),
        context_length=config.context_length,
        stride=config.stride,
        max_train_windows=config.max_train_windows,
        max_val_windows=config.max_val_windows,
        device=context.device,
    )
