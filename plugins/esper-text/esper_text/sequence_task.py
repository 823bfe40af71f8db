"""A next-token prediction task over preloaded token tensors: fixed windows, batched gathers, per-sample scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esper_core.errors import DataError
from esper_core.tasks import Task, TaskInfo
from esper_text.vocabulary import CharVocabulary

SEQUENCE_TOPOLOGY = "sequence"
METRIC_NAME = "next_token_accuracy"


def window_starts(num_tokens: int, context_length: int, stride: int, max_windows: int) -> torch.Tensor:
    """Start positions (int64, increasing) of windows over a stream of ``num_tokens`` tokens.

    A window starting at ``s`` reads ``context_length`` input tokens ``s .. s + T - 1`` and their
    targets ``s + 1 .. s + T``, so every start satisfies ``s + T < num_tokens``. The candidates are
    ``0, stride, 2 * stride, ...`` (``stride = T``: non-overlapping inputs). When there are more than
    ``max_windows`` (> 0) of them, ``max_windows`` evenly spaced candidates are kept, the first and the
    last included, so a bounded set still spans the whole stream. ``max_windows = 0`` keeps them all.
    """
    if context_length < 1 or stride < 1 or max_windows < 0:
        raise ValueError(
            f"need context_length >= 1, stride >= 1, max_windows >= 0; got {context_length}, {stride}, {max_windows}"
        )
    last = num_tokens - context_length - 1
    if last < 0:
        raise ValueError(f"{num_tokens} tokens hold no window of {context_length} inputs plus one target")
    starts = torch.arange(0, last + 1, stride, dtype=torch.long)
    count = starts.numel()
    if max_windows and count > max_windows:
        if max_windows == 1:
            return starts[:1]
        picks = torch.arange(max_windows, dtype=torch.long) * (count - 1) // (max_windows - 1)
        starts = starts[picks]
    return starts


class TokenWindowTask(Task):
    """Next-token prediction over a training and a validation token stream.

    Sample ``i`` of a split is the window at ``starts[i]``: inputs ``tokens[s : s + T]``, targets
    ``tokens[s + 1 : s + T + 1]`` (the inputs shifted by one), both (T,) int64 token ids. Training
    windows are gathered per batch with one indexing op; the validation windows are gathered once at
    build time. ``loss`` is the mean cross-entropy over every position of a batch; ``score`` returns,
    per variant, the sum over samples of each sample's mean token loss and of its next-token
    accuracy, so that dividing by the number of samples gives the mean loss per token and the
    accuracy (every window has the same length).
    """

    def __init__(
        self,
        *,
        name: str,
        vocabulary: CharVocabulary,
        train_tokens: torch.Tensor,
        val_tokens: torch.Tensor,
        context_length: int,
        train_starts: torch.Tensor,
        val_starts: torch.Tensor,
        device: torch.device,
    ) -> None:
        for split, tokens, starts in (("train", train_tokens, train_starts), ("val", val_tokens, val_starts)):
            if tokens.dim() != 1 or starts.dim() != 1:
                raise ValueError(f"task {name}: {split} tokens and starts must be 1-D")
            if starts.numel() == 0:
                raise ValueError(f"task {name}: no {split} windows")
            if int(starts.min()) < 0 or int(starts.max()) + context_length >= tokens.numel():
                raise ValueError(f"task {name}: a {split} window runs outside its {tokens.numel()} tokens")
            if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocabulary.size):
                raise ValueError(f"task {name}: {split} token ids outside 0..{vocabulary.size - 1}")
        self.vocabulary = vocabulary
        self.context_length = context_length
        self.train_tokens = train_tokens.to(device=device, dtype=torch.long)
        self.val_tokens = val_tokens.to(device=device, dtype=torch.long)
        self.train_starts = train_starts.to(device=device, dtype=torch.long)
        self.val_starts = val_starts.to(device=device, dtype=torch.long)
        self._offsets = torch.arange(context_length + 1, device=device)
        self.val_inputs, self.val_targets = self._gather(self.val_tokens, self.val_starts)
        self.info = TaskInfo(
            name=name,
            topology=SEQUENCE_TOPOLOGY,
            input_shape=(context_length,),
            num_classes=vocabulary.size,
            metric_name=METRIC_NAME,
            train_size=int(train_starts.numel()),
            val_size=int(val_starts.numel()),
            score_basis="loss",
        )
        self._val_cache: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _gather(self, tokens: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs (B, T), targets (B, T)) of the windows at ``starts``: one gather of (B, T + 1) tokens."""
        windows = tokens[starts.unsqueeze(1) + self._offsets]
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.info.train_size, generator=generator, device=generator.device)

    def train_batch(
        self, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gather(self.train_tokens, self.train_starts.index_select(0, indices))

    def validation_batches(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size not in self._val_cache:
            self._val_cache[batch_size] = [
                (self.val_inputs[start : start + batch_size], self.val_targets[start : start + batch_size])
                for start in range(0, self.info.val_size, batch_size)
            ]
        return self._val_cache[batch_size]

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    def metric_sums(self, outputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if outputs.dim() != 4 or outputs.shape[1:3] != target.shape:
            raise ValueError(
                f"metric_sums expects outputs (V, B, T, vocab) and targets (B, T); got {tuple(outputs.shape)} "
                f"and {tuple(target.shape)}"
            )
        log_probs = outputs.log_softmax(dim=-1, dtype=torch.float32)
        index = target.unsqueeze(0).expand(outputs.shape[0], -1, -1).unsqueeze(-1)
        token_losses = -log_probs.gather(-1, index).squeeze(-1)  # (V, B, T)
        correct = (outputs.argmax(dim=-1) == target.unsqueeze(0)).to(token_losses.dtype)
        return token_losses.mean(dim=2).sum(dim=1), correct.mean(dim=2).sum(dim=1)


def build_token_window_task(
    *,
    name: str,
    source: str,
    vocabulary: CharVocabulary,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    context_length: int,
    stride: int | None,
    max_train_windows: int,
    max_val_windows: int,
    device: torch.device,
) -> TokenWindowTask:
    """The task over both streams: training windows every ``stride`` tokens (None: ``context_length``),
    validation windows non-overlapping; ``DataError`` naming ``source`` when a split is too short."""
    needed = context_length + 1
    for split, tokens in (("training", train_tokens), ("validation", val_tokens)):
        if tokens.numel() < needed:
            raise DataError(
                f"{source}: the {split} split has {tokens.numel()} tokens, fewer than context_length + 1 = "
                f"{needed}; use a shorter context_length or more text"
            )
    train_stride = context_length if stride is None else stride
    return TokenWindowTask(
        name=name,
        vocabulary=vocabulary,
        train_tokens=train_tokens,
        val_tokens=val_tokens,
        context_length=context_length,
        train_starts=window_starts(train_tokens.numel(), context_length, train_stride, max_train_windows),
        val_starts=window_starts(val_tokens.numel(), context_length, context_length, max_val_windows),
        device=device,
    )
