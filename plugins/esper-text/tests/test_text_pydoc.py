"""Tests of the ``pydoc`` task: conformance, the fixed split and vocabulary, and that a tiny model learns it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from esper_core.tasks import TaskContext
from esper_core.testing import check_task_kind, registered_records
from esper_text import plugin
from esper_text.pydoc_task import PydocConfig, build_pydoc, pydoc_text, split_text
from esper_text.sequence_task import TokenWindowTask

CPU = torch.device("cpu")


PYDOC = registered_records(plugin, "tasks")["pydoc"]


@pytest.fixture(scope="module")
def task() -> TokenWindowTask:
    return build_pydoc(PydocConfig(), TaskContext(device=CPU, seed=0))


def test_pydoc_passes_the_conformance_kit() -> None:
    task = check_task_kind(PYDOC, config=PydocConfig(max_train_windows=64, max_val_windows=16))
    assert task.info.train_size == 64 and task.info.val_size == 16


def test_defaults_describe_a_bounded_character_level_task(task: TokenWindowTask) -> None:
    info = task.info
    assert info.topology == "sequence" and info.score_basis == "loss"
    assert info.input_shape == (64,)
    assert info.metric_name == "next_token_accuracy"
    assert info.num_classes == task.vocabulary.size == len(set(pydoc_text()))
    assert info.train_size == 4096 and info.val_size == 512
    assert task.train_tokens.dtype == torch.long and task.train_tokens.device == CPU


def test_text_is_the_sorted_topics_and_the_vocabulary_is_in_code_point_order(task: TokenWindowTask) -> None:
    from pydoc_data.topics import topics

    text = pydoc_text()
    assert text == "\n".join(topics[key] for key in sorted(topics))
    characters = task.vocabulary.characters
    assert list(characters) == sorted(set(text))
    assert task.vocabulary.specials == ()


def test_split_is_the_last_tenth_by_position_and_the_streams_decode_back(task: TokenWindowTask) -> None:
    text = pydoc_text()
    train_text, val_text = split_text(text, 0.1)
    assert train_text + val_text == text
    assert len(val_text) == round(len(text) * 0.1)
    assert task.vocabulary.decode(task.train_tokens) == train_text
    assert task.vocabulary.decode(task.val_tokens) == val_text


def test_split_and_windows_are_deterministic_and_independent_of_the_run_seed(task: TokenWindowTask) -> None:
    other = build_pydoc(PydocConfig(), TaskContext(device=CPU, seed=123))
    assert other.vocabulary == task.vocabulary
    assert torch.equal(other.train_tokens, task.train_tokens)
    assert torch.equal(other.train_starts, task.train_starts)
    assert torch.equal(other.val_inputs, task.val_inputs)
    wider = build_pydoc(PydocConfig(val_fraction=0.2), TaskContext(device=CPU, seed=0))
    assert wider.val_tokens.numel() > task.val_tokens.numel()
    assert torch.equal(wider.val_tokens[-task.val_tokens.numel() :], task.val_tokens)


def test_windows_are_next_token_shifted_slices_of_the_training_text(task: TokenWindowTask) -> None:
    text, _ = split_text(pydoc_text(), 0.1)
    indices = torch.tensor([0, 1, 4095])
    inputs, targets = task.train_batch(indices, torch.Generator())
    assert inputs.shape == targets.shape == (3, 64)
    for row, index in enumerate(indices.tolist()):
        start = int(task.train_starts[index])
        assert task.vocabulary.decode(inputs[row]) == text[start : start + 64]
        assert task.vocabulary.decode(targets[row]) == text[start + 1 : start + 65]


def test_training_windows_do_not_overlap_and_span_the_training_text(task: TokenWindowTask) -> None:
    starts = task.train_starts
    assert bool((starts.diff() >= 64).all())
    assert int(starts[0]) == 0
    assert int(starts[-1]) + 64 < task.train_tokens.numel() <= int(starts[-1]) + 2 * 64 + 1


def test_stride_and_window_caps_change_the_training_windows() -> None:
    strided = build_pydoc(PydocConfig(context_length=32, stride=8, max_train_windows=0), TaskContext(CPU, 0))
    assert strided.info.train_size == (strided.train_tokens.numel() - 33) // 8 + 1
    assert strided.info.input_shape == (32,)
    capped = build_pydoc(PydocConfig(max_train_windows=100, max_val_windows=10), TaskContext(CPU, 0))
    assert capped.info.train_size == 100 and capped.info.val_size == 10


def test_validation_scores_average_to_the_per_token_loss(task: TokenWindowTask) -> None:
    batches = task.validation_batches(200)
    logits = [torch.randn(*y.shape, task.info.num_classes, generator=torch.Generator().manual_seed(i))
              for i, (_, y) in enumerate(batches)]
    loss_sum = sum(float(task.metric_sums(out.unsqueeze(0), y)[0][0]) for out, (_, y) in zip(logits, batches))
    flat_logits = torch.cat(logits).reshape(-1, task.info.num_classes)
    flat_targets = torch.cat([y for _, y in batches]).reshape(-1)
    expected = float(nn.functional.cross_entropy(flat_logits, flat_targets))
    assert loss_sum / task.info.val_size == pytest.approx(expected, rel=1e-5)


def test_a_tiny_causal_model_learns_below_the_uniform_loss(task: TokenWindowTask) -> None:
    vocab = task.info.num_classes
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(vocab, 32), nn.Linear(32, vocab))  # each position sees its own token
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    generator = torch.Generator().manual_seed(0)
    order = task.epoch_order(generator)
    losses = []
    for step in range(40):
        inputs, targets = task.train_batch(order[step * 32 : (step + 1) * 32], generator)
        loss = task.loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    uniform = math.log(vocab)
    assert losses[0] > uniform - 0.5
    assert sum(losses[-5:]) / 5 < uniform - 1.5
    with torch.no_grad():
        sums = [task.metric_sums(model(x).unsqueeze(0), y) for x, y in task.validation_batches(256)]
    val_loss = sum(float(loss[0]) for loss, _ in sums) / task.info.val_size
    val_accuracy = sum(float(metric[0]) for _, metric in sums) / task.info.val_size
    assert val_loss < uniform - 1.5
    assert 0.2 < val_accuracy < 1.0
