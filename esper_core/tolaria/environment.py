"""One training environment: a morphogenetic model, its optimizers, its data order and its governor."""

from __future__ import annotations

import math
import time
from typing import Any, NewType

import attrs
import torch

from esper_core.config import GovernorSection, TrainingSection
from esper_core.kasmina import MorphogeneticModel
from esper_core.kasmina.model import ModelLifecycleState
from esper_core.leyline import FactoredAction, SeedStateReport
from esper_core.tasks import Task
from esper_core.telemetry.anomalies import GradientNorm
from esper_core.tolaria.governor import Governor, GovernorState


@attrs.frozen
class ValidationResult:
    """One validation pass: the full model's metric and loss plus the contribution of each seed that
    is blended in or fossilized (the task's score with the seed minus the score with its alpha forced
    to 0; see TaskInfo.score)."""

    metric: float
    loss: float
    contributions: dict[str, float]
    seconds: float


@attrs.frozen
class PendingDecision:
    """A decision whose reward is paid after the next epoch's validation."""

    action: FactoredAction
    success: bool
    metric_at_decision: float
    slots_at_decision: tuple[SeedStateReport, ...]


#: A state dict as torch (or a plugin) made it, kept exactly as it is in checkpoints (tuples stay tuples):
#: its schema belongs to its owner (``torch.optim``, the policy), which checks it when loading it.
OpaqueState = NewType("OpaqueState", dict)


@attrs.frozen
class EnvironmentState:
    """An environment's checkpoint state: the one list of what an exact resume needs
    (``Environment.state`` / ``load_state``; checkpoints hold it unstructured by the state converter).
    Optimizer states are torch's own state dicts; ``generator`` is the data-order generator's state."""

    env_id: int
    env_seed: int
    model_lifecycle: ModelLifecycleState
    model_weights: dict[str, torch.Tensor]
    host_optimizer: OpaqueState
    host_groups: list[str]
    seed_optimizers: dict[str, OpaqueState]
    lr_factor: float
    episode_steps: int
    epoch_alphas: dict[str, float]
    generator: torch.Tensor
    governor: GovernorState
    metric_history: list[float]
    score_history: list[float]
    loss_history: list[float]
    train_loss_history: list[float | None]
    last_action: FactoredAction | None
    last_action_success: bool
    last_action_reason: str
    pending: PendingDecision | None
    rolled_back: bool
    episode_return: float


class StepClock:
    """Seconds spent inside training steps: wall time on the CPU; on CUDA, timing events around each
    step, so the total is kernel time rather than launch time (read once per epoch, when the epoch's
    loss is fetched anyway)."""

    def __init__(self, device: torch.device) -> None:
        self.on_cuda = device.type == "cuda"
        self.reset()

    def reset(self) -> None:
        self._seconds = 0.0
        self._events: list[tuple[Any, Any]] = []
        self._started: Any = None

    def start(self) -> None:
        if self.on_cuda:
            self._started = torch.cuda.Event(enable_timing=True)
            self._started.record()
        else:
            self._started = time.perf_counter()

    def stop(self) -> None:
        if self._started is None:
            raise RuntimeError("StepClock.stop() without start()")
        if self.on_cuda:
            finished = torch.cuda.Event(enable_timing=True)
            finished.record()
            self._events.append((self._started, finished))
        else:
            self._seconds += time.perf_counter() - self._started
        self._started = None

    @property
    def seconds(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
            self._seconds += sum(begin.elapsed_time(end) for begin, end in self._events) / 1000.0
            self._events = []
        return self._seconds


class Environment:
    """Trains one model on its own data order; Tolaria steps every environment on each batch index."""

    def __init__(
        self,
        *,
        env_id: int,
        env_seed: int,
        model: MorphogeneticModel,
        task: Task,
        training: TrainingSection,
        governor: GovernorSection,
        episode_length: int,
        device: torch.device,
    ) -> None:
        self.env_id = env_id
        self.env_seed = env_seed
        self.model = model.to(device)
        self.task = task
        self.training = training
        self.episode_length = episode_length
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(env_seed)
        self.governor = Governor(governor)
        self.metric_history: list[float] = []
        self.score_history: list[float] = []
        self.loss_history: list[float] = []
        self.train_loss_history: list[float | None] = []
        self.last_action: FactoredAction | None = None
        self.last_action_success = True
        self.last_action_reason = ""
        self.pending: PendingDecision | None = None
        self.rolled_back = False
        self.episode_return = 0.0
        self.step_clock = StepClock(device)
        #: the last epoch's measured gradient norms (``finish_training``), judged by the engine
        self.gradient_norms: list[GradientNorm] = []
        #: every slot's alpha at this environment's previous EPOCH_COMPLETED (all 0 for a fresh host)
        self.epoch_alphas: dict[str, float] = {slot_id: 0.0 for slot_id in model.slot_ids}
        self._lr_factor = 1.0
        #: optimizer steps taken this episode (drives ``[training] warmup_steps``)
        self.episode_steps = 0
        self.build_optimizers()
        self.governor.take_snapshot(self.model, epoch=-1)

    # -- optimizers --------------------------------------------------------------------------------

    def _optimizer(self, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """``[training] optimizer``: SGD with momentum, or AdamW (decoupled weight decay; momentum unused)."""
        if self.training.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, betas=self.training.betas, weight_decay=self.training.weight_decay)
        return torch.optim.SGD(
            params, lr=lr, momentum=self.training.momentum, weight_decay=self.training.weight_decay
        )

    def build_optimizers(self) -> None:
        """Fresh optimizers: host params (+ fossilized seeds, in fossilization order) and one per live seed."""
        self.host_optimizer = self._optimizer(list(self.model.host.parameters()), self.training.host_lr * self._lr_factor)
        self.host_groups: list[str] = []
        self.seed_optimizers: dict[str, torch.optim.Optimizer] = {}
        self.sync_optimizers()

    def sync_optimizers(self) -> None:
        """Follow lifecycle changes: fossilized seeds join the host optimizer, pruned seeds' optimizers go."""
        for slot_id in self.model.fossilization_order:
            slot = self.model.slots[slot_id]
            if slot.seed_id not in self.host_groups:
                self.host_optimizer.add_param_group(
                    {"params": slot.seed_parameters(), "lr": self.training.host_lr * self._lr_factor}
                )
                self.host_groups.append(slot.seed_id)
                self.seed_optimizers.pop(slot.seed_id, None)
        live = {slot.seed_id: slot for slot in self.model.live_seed_slots()}
        for seed_id in list(self.seed_optimizers):
            if seed_id not in live:
                del self.seed_optimizers[seed_id]
        for seed_id, slot in live.items():
            if seed_id not in self.seed_optimizers:
                self.seed_optimizers[seed_id] = self._optimizer(slot.seed_parameters(), self.training.seed_lr * self._lr_factor)

    def forget_seed_moments(self, slot_id: str) -> None:
        """Drop the optimizer state (momentum, Adam moments) of the live seed in ``slot_id``. Called after
        GROW_INTERNAL and ENABLE_SUBTARGET: the capacity they enable was re-zeroed, and stale momentum from
        before an earlier shrink or disable would otherwise push it off zero at the next step."""
        seed_id = self.model.slots[slot_id].seed_id
        if seed_id in self.seed_optimizers:
            self.seed_optimizers[seed_id].state.clear()

    def set_epoch(self, epoch: int) -> None:
        """Apply the learning-rate schedule for ``epoch`` to every optimizer."""
        if self.training.lr_schedule == "cosine":
            self._lr_factor = 0.5 * (1.0 + math.cos(math.pi * epoch / self.episode_length))
        else:
            self._lr_factor = 1.0
        self._apply_lr(1.0)

    def _apply_lr(self, warmup_scale: float) -> None:
        for group in self.host_optimizer.param_groups:
            group["lr"] = self.training.host_lr * self._lr_factor * warmup_scale
        for optimizer in self.seed_optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = self.training.seed_lr * self._lr_factor * warmup_scale

    # -- training ----------------------------------------------------------------------------------

    def begin_training(self) -> None:
        self.model.train()
        self._loss_sum = torch.zeros((), device=self.device)
        self._steps = 0
        self._grad_norms: torch.Tensor | None = None
        self._grad_slots: list[str] = []
        self.gradient_norms = []
        self.step_clock.reset()

    @property
    def train_seconds(self) -> float:
        """Seconds inside this epoch's training steps (kernel time on CUDA; see StepClock)."""
        return self.step_clock.seconds

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor, *, measure_gradients: bool) -> None:
        self.step_clock.start()
        output = self.model(inputs)
        loss = self.task.loss(output, targets)
        self.host_optimizer.zero_grad(set_to_none=True)
        for optimizer in self.seed_optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if measure_gradients:
            self._measure_gradients()
        warmup = self.training.warmup_steps
        if warmup and self.episode_steps <= warmup:  # linear warm-up; at step == warmup back to the schedule
            self._apply_lr(min(1.0, (self.episode_steps + 1) / warmup))
        self.episode_steps += 1
        self.host_optimizer.step()
        for optimizer in self.seed_optimizers.values():
            optimizer.step()
        self._loss_sum += loss.detach()
        self._steps += 1
        self.step_clock.stop()

    def _measure_gradients(self) -> None:
        norms = [_grad_norm(self.model.host.parameters(), self.device)]
        self._grad_slots = []
        for slot in self.model.live_seed_slots():
            norms.append(_grad_norm(slot.seed_parameters(), self.device))
            self._grad_slots.append(slot.slot_id)
        self._grad_norms = torch.stack(norms)

    def finish_training(self) -> float:
        """The epoch's mean training loss (one device sync) and gradient health written to the slots;
        ``gradient_norms`` then holds the last step's norms (the whole host's, then each live seed's)."""
        if self._steps == 0:
            raise RuntimeError(f"environment {self.env_id} trained no batches this epoch")
        train_loss = float(self._loss_sum) / self._steps
        self.gradient_norms = []
        if self._grad_norms is not None:
            values = self._grad_norms.tolist()
            host_norm = values[0]
            self.gradient_norms.append(GradientNorm.host_segment("host", host_norm))
            for slot_id, seed_norm in zip(self._grad_slots, values[1:]):
                slot = self.model.slots[slot_id]
                slot.record_gradients(seed_norm, host_norm)
                self.gradient_norms.append(GradientNorm.seed(slot_id, seed_norm, seed_id=slot.seed_id, stage=slot.stage))
        self.train_loss_history.append(train_loss)
        return train_loss

    # -- validation --------------------------------------------------------------------------------

    def validate(self, batch_size: int) -> ValidationResult:
        """Full-model metric and loss on the fixed validation set, and the counterfactual contribution
        (metric with it minus metric with its alpha forced to 0) of every seed that is blended in
        (BLENDING, HOLDING) or fossilized: fossils stay measured every epoch, so their reports are
        current. All in one batched pass per validation batch, one ablation variant per such seed
        (``SeedSlot.is_ablatable``)."""
        started = time.perf_counter()
        self.model.eval()
        ablate = self.model.ablatable_slots()
        variants = 1 + len(ablate)
        loss_sums = torch.zeros(variants, device=self.device)
        metric_sums = torch.zeros(variants, device=self.device)
        count = 0
        # Ablation variants travel as one batch of (1 + k) x chunk samples; chunking keeps that size at
        # about eval_batch_size whatever k is, so memory per forward does not grow with the seed count.
        chunk = max(1, batch_size // variants)
        with torch.no_grad():
            for inputs, targets in self.task.validation_batches(chunk):
                if ablate:
                    outputs = self.model.forward_with_ablations(inputs, ablate)
                else:
                    outputs = self.model(inputs).unsqueeze(0)
                batch_loss, batch_metric = self.task.metric_sums(outputs, targets)
                loss_sums += batch_loss
                metric_sums += batch_metric
                count += int(targets.shape[0])
        losses = (loss_sums / count).tolist()
        metrics = (metric_sums / count).tolist()
        info = self.task.info
        scores = [info.score(metric, loss) for metric, loss in zip(metrics, losses)]
        contributions = {slot_id: scores[0] - scores[k + 1] for k, slot_id in enumerate(ablate)}
        return ValidationResult(
            metric=metrics[0], loss=losses[0], contributions=contributions, seconds=time.perf_counter() - started
        )

    def record_validation(self, result: ValidationResult) -> None:
        self.metric_history.append(result.metric)
        self.score_history.append(self.task.info.score(result.metric, result.loss))
        self.loss_history.append(result.loss)
        for slot_id in self.model.slot_ids:
            self.model.slots[slot_id].record_validation(
                self.task.info.score(result.metric, result.loss), result.contributions.get(slot_id)
            )

    # -- governor ----------------------------------------------------------------------------------

    def inject_nan(self) -> None:
        """Fault injection: fill the host's first parameter with NaN."""
        with torch.no_grad():
            next(self.model.host.parameters()).fill_(float("nan"))

    # -- telemetry -----------------------------------------------------------------------------------

    def alpha_delta_sq_sum(self) -> float:
        """Sum over slots of (alpha now - alpha at the previous call)^2; remembers alpha now."""
        alphas = {slot_id: self.model.slots[slot_id].alpha for slot_id in self.model.slot_ids}
        total = sum((alpha - self.epoch_alphas[slot_id]) ** 2 for slot_id, alpha in alphas.items())
        self.epoch_alphas = alphas
        return total

    # -- checkpointing -----------------------------------------------------------------------------

    def state(self) -> EnvironmentState:
        return EnvironmentState(
            env_id=self.env_id,
            env_seed=self.env_seed,
            model_lifecycle=self.model.lifecycle_record(),
            model_weights=self.model.state_dict(),
            host_optimizer=self.host_optimizer.state_dict(),
            host_groups=list(self.host_groups),
            seed_optimizers={seed_id: opt.state_dict() for seed_id, opt in self.seed_optimizers.items()},
            lr_factor=self._lr_factor,
            episode_steps=self.episode_steps,
            epoch_alphas=dict(self.epoch_alphas),
            generator=self.generator.get_state(),
            governor=self.governor.state(),
            metric_history=list(self.metric_history),
            score_history=list(self.score_history),
            loss_history=list(self.loss_history),
            train_loss_history=list(self.train_loss_history),
            last_action=self.last_action,
            last_action_success=self.last_action_success,
            last_action_reason=self.last_action_reason,
            pending=self.pending,
            rolled_back=self.rolled_back,
            episode_return=self.episode_return,
        )

    def load_state(self, state: EnvironmentState) -> None:
        if state.env_id != self.env_id or state.env_seed != self.env_seed:
            raise ValueError(f"checkpoint is for env {state.env_id} seed {state.env_seed}")
        self.model.load_lifecycle_record(state.model_lifecycle)
        self.model.to(self.device)
        self.model.load_state_dict(state.model_weights)
        self._lr_factor = state.lr_factor
        self.episode_steps = state.episode_steps
        self.epoch_alphas = dict(state.epoch_alphas)
        self.host_optimizer = self._optimizer(list(self.model.host.parameters()), self.training.host_lr * self._lr_factor)
        self.host_groups = []
        self.seed_optimizers = {}
        self.sync_optimizers()
        if self.host_groups != state.host_groups:
            raise ValueError(f"fossilized seeds {self.host_groups} differ from checkpoint {state.host_groups}")
        self.host_optimizer.load_state_dict(state.host_optimizer)
        if set(self.seed_optimizers) != set(state.seed_optimizers):
            raise ValueError("live seeds differ from the checkpoint's seed optimizers")
        for seed_id, optimizer_state in state.seed_optimizers.items():
            self.seed_optimizers[seed_id].load_state_dict(optimizer_state)
        self.generator.set_state(state.generator)
        self.governor.load_state(state.governor)
        self.metric_history = list(state.metric_history)
        self.score_history = list(state.score_history)
        self.loss_history = list(state.loss_history)
        self.train_loss_history = list(state.train_loss_history)
        self.last_action = state.last_action
        self.last_action_success = state.last_action_success
        self.last_action_reason = state.last_action_reason
        self.pending = state.pending
        self.rolled_back = state.rolled_back
        self.episode_return = state.episode_return


def _grad_norm(parameters: Any, device: torch.device) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
