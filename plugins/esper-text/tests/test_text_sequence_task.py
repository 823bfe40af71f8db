"""Tests of the window arithmetic and the Task contract of ``TokenWindowTask`` on a hand-made token stream."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from esper_text.sequence_task import TokenWindowTask, build_token_window_task, window_starts
from esper_text.vocabulary import CharVocabulary

CPU = torch.device("cpu")
VOCAB = CharVocabulary(characters=tuple("abcdefghij"))


def _task(train_length: int = 40, val_length: int = 23, context_length: int = 4, **options: int) -> TokenWindowTask:
    # token i of the training stream is i % 10, of the validation stream (9 - i) % 10: each target is
    # predictable from its input, and the two streams differ
    train = torch.arange(train_length) % VOCAB.size
    val = (9 - torch.arange(val_length)) % VOCAB.size
    settings = {"stride": None, "max_train_windows": 0, "max_val_windows": 0} | options
    return build_token_window_task(
        name="toy", source="toy stream", vocabulary=VOCAB, train_tokens=train, val_tokens=val,
        context_length=context_length, device=CPU, **settings,
    )


def test_window_starts_are_strided_and_stay_inside_the_stream() -> None:
    assert window_starts(20, 4, 4, 0).tolist() == [0, 4, 8, 12]  # 12 + 4 < 20; 16 + 4 = 20 has no target
    assert window_starts(21, 4, 4, 0).tolist() == [0, 4, 8, 12, 16]
    assert window_starts(20, 4, 3, 0).tolist() == [0, 3, 6, 9, 12, 15]
    assert window_starts(5, 4, 4, 0).tolist() == [0]
    with pytest.raises(ValueError, match="no window"):
        window_starts(4, 4, 4, 0)


def test_a_window_cap_keeps_evenly_spaced_starts_including_both_ends() -> None:
    starts = window_starts(1001, 10, 10, 0)  # 0, 10, ..., 990: 100 candidates
    capped = window_starts(1001, 10, 10, 12)
    assert capped.numel() == 12
    assert capped[0] == 0 and capped[-1] == 990
    assert set(capped.tolist()) <= set(starts.tolist())
    gaps = capped.diff()
    assert bool((gaps > 0).all()) and int(gaps.max()) - int(gaps.min()) <= 10
    assert window_starts(1001, 10, 10, 1).tolist() == [0]
    assert torch.equal(window_starts(1001, 10, 10, 500), starts)


def test_info_describes_a_loss_scored_sequence_task() -> None:
    task = _task()
    info = task.info
    assert info.topology == "sequence"
    assert info.input_shape == (4,)
    assert info.num_classes == 10
    assert info.metric_name == "next_token_accuracy"
    assert info.score_basis == "loss"
    assert info.train_size == 9  # starts 0, 4, ..., 32 (32 + 4 < 40)
    assert info.val_size == 5  # starts 0, 4, 8, 12, 16 (16 + 4 < 23)


def test_validation_windows_never_overlap_whatever_the_stride() -> None:
    task = _task(val_length=23, stride=1)
    assert task.info.train_size == 36  # every start 0..35
    assert task.val_starts.tolist() == [0, 4, 8, 12, 16]
    assert task.info.val_size == 5


def test_epoch_order_is_a_seeded_permutation_of_the_training_windows() -> None:
    task = _task()
    order = task.epoch_order(torch.Generator().manual_seed(3))
    assert sorted(order.tolist()) == list(range(task.info.train_size))
    assert torch.equal(order, task.epoch_order(torch.Generator().manual_seed(3)))
    assert not torch.equal(order, task.epoch_order(torch.Generator().manual_seed(4)))


def test_train_batch_gathers_next_token_shifted_windows() -> None:
    task = _task()
    inputs, targets = task.train_batch(torch.tensor([2, 0, 8]), torch.Generator())
    assert inputs.shape == targets.shape == (3, 4)
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.tolist() == [[8, 9, 0, 1], [0, 1, 2, 3], [2, 3, 4, 5]]  # starts 8, 0, 32
    assert targets.tolist() == [[9, 0, 1, 2], [1, 2, 3, 4], [3, 4, 5, 6]]
    stream = task.train_tokens
    for row, start in enumerate((8, 0, 32)):
        assert torch.equal(inputs[row], stream[start : start + 4])
        assert torch.equal(targets[row], stream[start + 1 : start + 5])


def test_validation_batches_are_fixed_cover_the_set_and_are_shifted() -> None:
    task = _task()
    batches = task.validation_batches(3)
    assert [int(x.shape[0]) for x, _ in batches] == [3, 2]
    again = task.validation_batches(3)
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(batches, again))
    inputs = torch.cat([x for x, _ in batches])
    targets = torch.cat([y for _, y in batches])
    assert torch.equal(inputs, torch.cat([x for x, _ in task.validation_batches(2)]))
    assert inputs[1].tolist() == [5, 4, 3, 2]  # val stream 9, 8, 7, ... from start 4
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(targets[:, -1], (inputs[:, -1] - 1) % 10)


def test_loss_is_the_mean_cross_entropy_over_every_position() -> None:
    task = _task()
    logits = torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 10, (3, 4), generator=torch.Generator().manual_seed(1))
    expected = torch.stack([F.cross_entropy(logits[b], targets[b], reduction="sum") for b in range(3)]).sum() / 12
    assert torch.allclose(task.loss(logits, targets), expected)


def test_metric_sums_of_perfect_and_uniform_logits() -> None:
    task = _task()
    _inputs, targets = task.train_batch(torch.arange(5), torch.Generator())
    perfect = F.one_hot(targets, 10).float() * 30.0  # (B, T, vocab)
    uniform = torch.zeros(5, 4, 10)
    losses, accuracies = task.metric_sums(torch.stack([perfect, uniform]), targets)
    assert losses.shape == accuracies.shape == (2,)
    assert float(losses[0]) < 1e-6
    assert float(accuracies[0]) == pytest.approx(5.0)  # every token right: the sample count
    assert float(losses[1]) == pytest.approx(5 * math.log(10), rel=1e-5)


def test_metric_sums_are_per_sample_mean_token_loss_and_accuracy() -> None:
    task = _task()
    _inputs, targets = task.train_batch(torch.arange(6), torch.Generator())
    logits = torch.randn(3, 6, 4, 10, generator=torch.Generator().manual_seed(2))
    # make exactly one of the four positions of sample 0 right in variant 2
    logits[2, 0] = -10.0
    logits[2, 0, 1, targets[0, 1]] = 10.0
    losses, accuracies = task.metric_sums(logits, targets)
    for variant in range(3):
        token_losses = F.cross_entropy(logits[variant].reshape(-1, 10), targets.reshape(-1), reduction="none")
        assert float(losses[variant]) == pytest.approx(float(token_losses.view(6, 4).mean(1).sum()), rel=1e-5)
        right = (logits[variant].argmax(-1) == targets).float().mean(1)
        assert float(accuracies[variant]) == pytest.approx(float(right.sum()))
    assert float((logits[2, 0].argmax(-1) == targets[0]).float().mean()) == 0.25


def test_metric_sums_reject_outputs_without_a_variant_dimension() -> None:
    task = _task()
    _inputs, targets = task.train_batch(torch.arange(2), torch.Generator())
    with pytest.raises(ValueError, match=r"\(V, B, T, vocab\)"):
        task.metric_sums(torch.zeros(2, 4, 10), targets)
