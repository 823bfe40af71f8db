"""Host training throughput inside the real Tolaria engine vs a plain PyTorch loop on the same network and data."""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import _common as c

TARGET = 0.9


def process_age() -> float | None:
    """Seconds since this process was started (Linux /proc; 10 ms resolution), or None elsewhere."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22, starttime, counted after the ')' of the command name
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        import os

        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def load_config(args, manager, output_dir: Path):
    """The base config with a policy that always WAITs (hosts only, every slot dormant), no sinks."""
    from esper_core.config import parse_config, read_toml

    data = read_toml(Path(args.config))
    data.setdefault("run", {}).update(
        envs=args.envs, episode_length=args.warmup + args.epochs, output_dir=str(output_dir),
        checkpoint_every=0, seed=args.seed, rounds=1,
    )
    data["run"].pop("torch_threads", None)  # the benchmark sets threads itself, for both loops
    if args.train_size:
        data.setdefault("task", {})["train_size"] = args.train_size
    if args.batch_size:
        data.setdefault("training", {})["batch_size"] = args.batch_size
    data["policy"] = {"name": "random", "wait_probability": 1.0}
    data["sinks"] = {}
    return parse_config(data, manager, source=args.config)


def main(argv: list[str] | None = None) -> int:
    parser = c.base_parser(__doc__)
    parser.add_argument("--config", default=str(c.REPO / "examples" / "quickstart.toml"),
                        help="base run config (default examples/quickstart.toml)")
    parser.add_argument("--envs", type=int, default=1, help="environments in the engine = networks in the plain loop (default 1)")
    parser.add_argument("--epochs", type=int, default=20, help="timed epochs per side (default 20)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per side first (default 1)")
    parser.add_argument("--train-size", type=int, default=None, help="override [task] train_size")
    parser.add_argument("--batch-size", type=int, default=None, help="override [training] batch_size")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.warmup = 3, 1
        args.train_size = args.train_size or 512
    c.setup_torch(args.threads, args.seed)
    env_info = c.print_environment("throughput: host training inside the engine vs a plain PyTorch loop")

    from esper_core.runs import create_run_dir, derive_seed
    from esper_core.telemetry import TelemetryHub
    from esper_core.tolaria import engine as engine_module
    from esper_core.tolaria.engine import Engine, prepare

    manager = c.plugin_manager()
    scratch = tempfile.TemporaryDirectory(prefix="esper-bench-")
    config = load_config(args, manager, Path(scratch.name))

    # -- the engine, built the way start_run builds it, then driven one epoch at a time ---------------
    first_batch: dict[str, float] = {}
    t_start = time.perf_counter()
    setup = prepare(config, manager)  # builds the task: generation, normalisation, tensors preloaded
    t_prepared = time.perf_counter()
    run_dir = create_run_dir(Path(scratch.name), config.task.name, config.run.name, config.run.seed)
    policy, reward = engine_module.build_policy_and_reward(setup, manager)
    hub = TelemetryHub(run_dir / "events.jsonl", {})
    engine = Engine(setup, manager, run_dir, hub, policy, reward)
    engine.timing = collections.defaultdict(float)  # Engine.run sets this up per round; we drive run_epoch ourselves
    engine.envs = engine.make_envs(0)
    policy.begin_episode(0, len(engine.envs))
    t_built = time.perf_counter()

    first_env = engine.envs[0]
    original_step = first_env.train_step

    def first_step_probe(inputs, targets, *, measure_gradients):
        if "perf" not in first_batch:
            first_batch["perf"] = time.perf_counter()
            first_batch["age"] = process_age()
        return original_step(inputs, targets, measure_gradients=measure_gradients)

    first_env.train_step = first_step_probe

    train_phase: list[float] = []
    original_train_epoch = engine.train_epoch

    def timed_train_epoch(epoch: int) -> None:
        start = time.perf_counter()
        original_train_epoch(epoch)
        train_phase.append(time.perf_counter() - start)

    engine.train_epoch = timed_train_epoch
    in_step: list[float] = []
    engine_epoch_index = [0]

    def engine_epoch() -> None:
        epoch = engine_epoch_index[0]
        engine.run_epoch(0, epoch)  # train (timed), validate, governor, rewards, decide (WAIT), tick, telemetry
        in_step.append(sum(env.train_seconds for env in engine.envs))
        engine_epoch_index[0] += 1

    # -- the plain loop: same preset and initial weights, same tensors, batch size, SGD, augmentation ----
    task = setup.task
    training = config.training
    nets, optimizers, generators = [], [], []
    for env in engine.envs:
        net = engine_module.build_host(setup.host_family, config, task, seed=derive_seed(config.run.seed, 0, env.env_id))
        nets.append(net)
        optimizers.append(torch.optim.SGD(net.parameters(), lr=training.host_lr, momentum=training.momentum,
                                          weight_decay=training.weight_decay))
        generators.append(torch.Generator().manual_seed(env.env_seed))
    inputs_all, targets_all, augment = task.train_inputs, task.train_targets, task.augment
    batch_size = training.batch_size
    n_batches = task.info.train_size // batch_size
    if training.batches_per_epoch:
        n_batches = min(n_batches, training.batches_per_epoch)
    plain_times: list[float] = []

    def plain_epoch() -> None:
        start = time.perf_counter()
        for net in nets:
            net.train()
        orders = [torch.randperm(task.info.train_size, generator=g) for g in generators]
        for b in range(n_batches):
            for net, optimizer, generator, order in zip(nets, optimizers, generators, orders):
                index = order[b * batch_size:(b + 1) * batch_size]
                x = inputs_all.index_select(0, index)
                if augment is not None:
                    x = augment(x, generator)
                y = targets_all.index_select(0, index)
                loss = F.cross_entropy(net(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        plain_times.append(time.perf_counter() - start)

    samples = n_batches * batch_size * len(nets)
    print(f"   config {args.config}: task {config.task.name} ({task.info.train_size} train), host {config.host.name} "
          f"{config.host.options}, batch {batch_size}, {n_batches} batches/epoch, {len(nets)} env(s)/net(s), "
          f"SGD lr {training.host_lr} momentum {training.momentum} wd {training.weight_decay}, "
          f"augmentation {type(augment).__module__}.{type(augment).__name__}")
    print(f"   {args.warmup} warm-up + {args.epochs} timed epochs per side, engine and plain epochs alternating "
          f"(order reversed every other epoch)")

    for rep in range(args.warmup + args.epochs):
        for run in ((engine_epoch, plain_epoch) if rep % 2 == 0 else (plain_epoch, engine_epoch)):
            run()
    hub.close()

    engine_t = train_phase[args.warmup:]
    plain_t = plain_times[args.warmup:]
    step_t = in_step[args.warmup:]
    ratios = c.paired_ratios(plain_t, engine_t)  # throughput ratio engine/plain = time plain / time engine
    engine_sps = [samples / t for t in engine_t]
    plain_sps = [samples / t for t in plain_t]
    d_ratio = c.describe(ratios)
    print(f"\n   engine train phase per epoch: {c.fmt_time_stats(engine_t)}  -> {c.describe(engine_sps)['median']:,.0f} samples/s")
    print(f"   plain PyTorch loop per epoch: {c.fmt_time_stats(plain_t)}  -> {c.describe(plain_sps)['median']:,.0f} samples/s")
    print(f"   throughput ratio engine / plain: {c.fmt_ratio_stats(ratios)}, ratio of best epochs "
          f"{min(plain_t) / min(engine_t):.3f}   {c.verdict(d_ratio['median'], TARGET, at_most=False)}")
    print(f"   first (warm-up) epoch: engine train phase {train_phase[0]:.3f} s, plain loop {plain_times[0]:.3f} s")
    share = [s / t for s, t in zip(step_t, engine_t)]
    print(f"   engine: {100 * c.describe(share)['median']:.1f}% of the train phase is inside Environment.train_step "
          f"(EPOCH_COMPLETED train_seconds); the rest is batch gather + augmentation + the loop")

    to_first = first_batch["perf"] - t_start
    print(f"\n   time to first batch (no loader workers: tensors are preloaded): {to_first:.3f} s after the run starts building "
          f"= task build {t_prepared - t_start:.3f} s + engine/envs/optimizers {t_built - t_prepared:.3f} s "
          f"+ first gather/augment {first_batch['perf'] - t_built:.3f} s")
    if first_batch.get("age") is not None:
        print(f"   process age at the first batch (interpreter start, imports, plugin discovery included): {first_batch['age']:.2f} s "
              f"(the prior system spent ~23 s starting loader workers)")

    c.write_json(args.json, {
        "environment": env_info, "args": {k: str(v) for k, v in vars(args).items()},
        "samples_per_epoch": samples, "engine_train_seconds": c.describe(engine_t), "plain_seconds": c.describe(plain_t),
        "engine_samples_per_second": c.describe(engine_sps), "plain_samples_per_second": c.describe(plain_sps),
        "throughput_ratio_engine_over_plain": d_ratio, "ratio_of_best_epochs": min(plain_t) / min(engine_t),
        "train_step_share_of_train_phase": c.describe(share),
        "first_epoch_seconds": {"engine": train_phase[0], "plain": plain_times[0]},
        "time_to_first_batch_seconds": to_first, "task_build_seconds": t_prepared - t_start,
        "process_age_at_first_batch_seconds": first_batch.get("age"),
    })
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
