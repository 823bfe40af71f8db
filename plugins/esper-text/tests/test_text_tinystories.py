"""Tests of the ``tinystories`` task on small .txt, .json and .jsonl files written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from esper_core.errors import DataError
from esper_core.tasks import TaskContext
from esper_core.testing import check_task_kind, registered_records
from esper_text import plugin
from esper_text.sequence_task import TokenWindowTask
from esper_text.tinystories import TinyStoriesConfig, build_tinystories, read_stories
from esper_text.vocabulary import END_OF_TEXT, UNKNOWN

CPU = torch.device("cpu")
CONTEXT = 8
# Ten stories; only the last (validation) one holds "Z" and "!", which training never shows.
STORIES = [f"Once upon a time, story {index % 3} saw the dog and a cat.\nThe cat ran." for index in range(9)] + [
    "Zed saw the dog run!"
]


def _build(path: Path, **options: object) -> TokenWindowTask:
    config = TinyStoriesConfig(path=str(path), context_length=CONTEXT, **options)
    return build_tinystories(config, TaskContext(device=CPU, seed=0))


def _write_txt(path: Path, separator: str) -> Path:
    path.write_text(separator.join(STORIES) + "\n", encoding="utf-8")
    return path


def _write_json(path: Path) -> Path:
    items = [{"story": story, "summary": "s", "source": "GPT-4"} for story in STORIES]
    path.write_text(json.dumps(items, indent=1), encoding="utf-8")
    return path


def _write_jsonl(path: Path) -> Path:
    lines = [json.dumps({"text": story}) for story in STORIES]
    path.write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n", encoding="utf-8")
    return path


WRITERS = {
    "endoftext.txt": lambda path: _write_txt(path, f"\n{END_OF_TEXT}\n"),
    "blank-lines.txt": lambda path: _write_txt(path, "\n\n  \n"),
    "stories.json": _write_json,
    "stories.jsonl": _write_jsonl,
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_format_reads_the_same_stories(tmp_path: Path, name: str) -> None:
    path = WRITERS[name](tmp_path / name)
    assert read_stories(str(path)) == STORIES
    assert read_stories(str(path), max_stories=3) == STORIES[:3]


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_format_builds_a_conforming_task(tmp_path: Path, name: str) -> None:
    path = WRITERS[name](tmp_path / name)
    kind = registered_records(plugin, "tasks")["tinystories"]
    task = check_task_kind(kind, config=TinyStoriesConfig(path=str(path), context_length=CONTEXT), batch_size=4)
    info = task.info
    assert info.topology == "sequence" and info.score_basis == "loss"
    assert info.input_shape == (CONTEXT,)
    assert info.metric_name == "next_token_accuracy"
    assert info.num_classes == task.vocabulary.size


def test_a_blank_line_inside_an_endoftext_story_stays_in_the_story(tmp_path: Path) -> None:
    path = tmp_path / "paragraphs.txt"
    path.write_text(f"First part.\n\nSecond part.\n{END_OF_TEXT}\nAnother story.\n", encoding="utf-8")
    assert read_stories(str(path)) == ["First part.\n\nSecond part.", "Another story."]


def test_windows_are_next_token_shifted_and_stories_end_with_endoftext(tmp_path: Path) -> None:
    task = _build(WRITERS["stories.jsonl"](tmp_path / "stories.jsonl"), max_train_windows=0)
    vocabulary = task.vocabulary
    end = vocabulary.special_id(END_OF_TEXT)
    expected = f"{END_OF_TEXT}".join(STORIES[:9]) + END_OF_TEXT  # nine training stories, each then the marker
    assert vocabulary.decode(task.train_tokens) == expected
    assert int((task.train_tokens == end).sum()) == 9
    inputs, targets = task.train_batch(torch.arange(task.info.train_size), torch.Generator())
    assert inputs.dtype == targets.dtype == torch.long
    for row in range(task.info.train_size):
        start = int(task.train_starts[row])
        assert torch.equal(inputs[row], task.train_tokens[start : start + CONTEXT])
        assert torch.equal(targets[row], task.train_tokens[start + 1 : start + CONTEXT + 1])


def test_unseen_characters_map_to_unknown(tmp_path: Path) -> None:
    task = _build(WRITERS["stories.json"](tmp_path / "stories.json"))
    vocabulary = task.vocabulary
    assert vocabulary.specials == (UNKNOWN, END_OF_TEXT)
    assert "Z" not in vocabulary.characters and "!" not in vocabulary.characters
    assert list(vocabulary.characters) == sorted(set("".join(STORIES[:9])))
    assert vocabulary.decode(task.val_tokens) == f"<unk>ed saw the dog run<unk>{END_OF_TEXT}"
    assert int((task.val_tokens == vocabulary.unknown_id).sum()) == 2


def test_split_takes_the_last_stories_for_validation(tmp_path: Path) -> None:
    path = WRITERS["stories.jsonl"](tmp_path / "stories.jsonl")
    task = _build(path, val_fraction=0.3)
    assert task.vocabulary.decode(task.val_tokens).split(END_OF_TEXT)[:-1] == [
        story.replace("Z", UNKNOWN).replace("!", UNKNOWN) for story in STORIES[7:]
    ]
    again = _build(path, val_fraction=0.3)
    assert torch.equal(task.val_inputs, again.val_inputs)
    assert torch.equal(task.train_starts, again.train_starts)


def test_missing_file_is_one_line_naming_the_path_and_the_formats(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "TinyStories.txt"
    with pytest.raises(DataError) as raised:
        _build(missing)
    message = str(raised.value)
    assert str(missing) in message
    assert ".txt" in message and ".jsonl" in message and ".json " in message
    assert "never downloads" in message
    assert "\n" not in message


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stories.csv"
    path.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"stories\.csv' has suffix '\.csv'"):
        _build(path)


def test_malformed_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"story": "A cat."},\n  {"story": "A dog."\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json' line 4 column 1: malformed JSON"):
        _build(path)


def test_malformed_jsonl_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"story": "A cat."}\n\n{"story": "A dog.",}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl' line 3 column \d+: malformed JSON") as raised:
        _build(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"story": "one"}', "expected a JSON list of objects, got dict"),
        ('["one", "two"]', "item 0: expected an object, got str"),
        ('[{"story": "one"}, {"title": "two"}]', "item 1: the object has neither a \"story\" nor a \"text\" field"),
        ('[{"story": 3}]', 'item 0: field "story" is int, expected a string'),
    ],
)
def test_json_with_the_wrong_shape_is_named(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "shape.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="shape.json") as raised:
        _build(path)
    assert expected in str(raised.value)


def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("A story.\n\nAnother caf\u00e9 story.\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt' line 3: not UTF-8"):
        _build(path)


def test_a_directory_is_not_readable_data(tmp_path: Path) -> None:
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    with pytest.raises(DataError, match=r"folder\.txt' cannot be read"):
        _build(folder)


def test_too_few_stories_or_tokens_are_data_errors(tmp_path: Path) -> None:
    one = tmp_path / "one.txt"
    one.write_text("Only one story here.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"one\.txt' holds 1 stories; the task needs at least 2"):
        _build(one)
    short = tmp_path / "short.txt"
    short.write_text("A long enough training story.\n\nHi.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"short\.txt': the validation split has 4 tokens, fewer than"):
        _build(short)


def test_empty_stories_are_dropped_before_max_stories_counts(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    lines = [{"story": "One."}, {"story": "   "}, {"text": "Two."}, {"story": ""}, {"story": "Three."}, {"story": "Four."}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    assert read_stories(str(path), max_stories=3) == ["One.", "Two.", "Three."]
    assert read_stories(str(path)) == ["One.", "Two.", "Three.", "Four."]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_deeply_nested_json_is_one_line_naming_the_file(tmp_path: Path, suffix: str) -> None:
    depth = 200_000  # far beyond the interpreter's recursion limit
    nested = "[" * depth + "]" * depth
    path = tmp_path / f"stories{suffix}"
    path.write_text(nested if suffix == ".json" else '{"story": "a"}\n' + nested + "\n", encoding="utf-8")
    with pytest.raises(DataError) as raised:
        read_stories(str(path))
    message = str(raised.value)
    assert str(path) in message and "nested too deeply" in message
    assert "\n" not in message
    if suffix == ".jsonl":
        assert "line 2" in message


@pytest.mark.parametrize(("max_stories", "advice"), [(0, "set [task] max_stories"), (5, "use a shorter file")])
def test_a_file_too_large_for_memory_is_one_config_line_before_reading(tmp_path: Path, monkeypatch, max_stories,
                                                                       advice) -> None:
    import esper_core.tasks
    from esper_core.errors import ConfigError

    monkeypatch.setattr(esper_core.tasks, "available_memory", lambda device: 1000)  # bytes free
    path = tmp_path / "stories.txt"
    path.write_text("A story about a cat.\n\n" * 100, encoding="utf-8")  # 2,200 characters
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read the file"))
    with pytest.raises(ConfigError) as raised:
        read_stories(str(path), max_stories)
    message = str(raised.value)
    assert message.startswith(f"[task] path = '{path}'") and advice in message and "\n" not in message
