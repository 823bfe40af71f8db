"""The lora_ladder seed at each level against the fixed LoRA seed of the same rank, and the cost of a level change."""

from __future__ import annotations

import sys

import attrs
import torch

import _common as c

#: level -> (fixed family, rank); every fixed seed gets alpha = rank (scale 1, the ladder's fixed scale).
FIXED = {1: ("lora", 4), 2: ("lora", 8), 3: ("lora", 16), 4: ("lora_large", 32)}
VOCABULARY = 103  # the pydoc task's character vocabulary (CPython 3.11)


def step(module: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    def run() -> None:
        for parameter in module.parameters():
            parameter.grad = None
        ((module(x) - target) ** 2).mean().backward()

    return run


def host_step(host: torch.nn.Module, tokens: torch.Tensor):
    def run() -> None:
        for parameter in host.parameters():
            parameter.grad = None
        logits = host(tokens)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()

    return run


def build_seed(manager, family: str, channels: int, **options) -> torch.nn.Module:
    entry = manager.lookup("seed_families", family)
    config = attrs.evolve(entry.config_class(), **options) if options else entry.config_class()
    return entry.build(channels, "sequence", config).train()


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = c.base_parser(__doc__)
    parser.add_argument("--d-model", type=int, default=128, help="channels of the activation (default 128, the transformer host's)")
    parser.add_argument("--time", type=int, default=64, help="sequence length (default 64, the pydoc task's context)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n-layer", type=int, default=6, help="layers of the transformer host timed for scale (default 6)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.d_model, args.time, args.batch, args.n_layer, args.repeats, args.warmup = 64, 32, 8, 2, 6, 2
    c.setup_torch(args.threads, args.seed)
    env = c.print_environment("lora_ladder_cost: lora_ladder at each level vs the fixed LoRA seed of the same rank")
    print(f"   activation {args.batch} x {args.time} x {args.d_model}, forward + MSE + backward of the seed alone, "
          f"{args.repeats} interleaved repetitions")
    manager = c.plugin_manager()
    missing = [name for name in ("lora_ladder", "lora", "lora_large") if name not in manager.registry.names("seed_families")]
    if missing:
        raise SystemExit(f"seed families {missing} are not installed (they come from contrib/esper-lora-ladder and "
                         f"plugins/esper-transformer){manager.failure_note()}")
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, args.time, args.d_model, generator=generator)
    target = torch.randn(x.shape, generator=generator)
    torch.manual_seed(args.seed)
    cases = {}
    ladders: dict[int, torch.nn.Module] = {}
    fixed: dict[int, torch.nn.Module] = {}
    for level, (family, rank) in FIXED.items():
        fixed[level] = build_seed(manager, family, args.d_model, rank=rank, alpha=float(rank))
        ladders[level] = build_seed(manager, "lora_ladder", args.d_model)
        ladders[level].set_internal_level(level)
        cases[f"{family} r{rank}"] = step(fixed[level], x, target)
        cases[f"ladder@{level}"] = step(ladders[level], x, target)
    times = c.interleaved(cases, warmup=args.warmup, repeats=args.repeats)

    results: dict = {"environment": env, "rows": {}}
    print()
    print(f"   {'level':>5} {'rank':>4} {'params':>7} {'ladder':>9}   {'fixed seed':<15} {'params':>7} {'fixed':>9}   "
          f"{'ratio':>5}  {'95% CI':<13} {'extra':>8}")
    extras = {}
    for level, (family, rank) in FIXED.items():
        ladder_name, fixed_name = f"ladder@{level}", f"{family} r{rank}"
        ratios = c.paired_ratios(times[ladder_name], times[fixed_name])
        stats = c.describe(ratios)
        ladder_time = c.describe(times[ladder_name])["median"]
        fixed_time = c.describe(times[fixed_name])["median"]
        extras[level] = ladder_time - fixed_time
        ladder_params = ladders[level].internal_effective_params(level)
        print(f"   {level:>5} {rank:>4} {ladder_params:>7,} {c.fmt_seconds(ladder_time):>9}   {fixed_name:<15} "
              f"{count(fixed[level]):>7,} {c.fmt_seconds(fixed_time):>9}   {stats['median']:>5.3f}  "
              f"{stats['median_ci95_low']:.3f}..{stats['median_ci95_high']:.3f}  {c.fmt_seconds(extras[level]):>8}")
        results["rows"][f"{ladder_name}/{fixed_name}"] = {
            "ratio": stats,
            "ladder_seconds": c.describe(times[ladder_name]),
            "fixed_seconds": c.describe(times[fixed_name]),
            "ladder_params_in_use": ladder_params,
            "fixed_params": count(fixed[level]),
        }
    print("   times: medians per step; ratio: ladder / fixed, paired per repetition (median, 95% CI of the median);")
    print("   extra: ladder minus fixed median (levels >= 2 concatenate the active blocks' weights, one autograd leaf per block)")

    switcher = build_seed(manager, "lora_ladder", args.d_model)
    levels = [1, 2, 3, 4, 3, 2]

    def change() -> None:
        for level in levels:
            switcher.set_internal_level(level)

    change_times = c.interleaved({"change": change}, warmup=10, repeats=args.repeats, inner=100)
    per_change = [value / len(levels) for value in change_times["change"]]
    print(f"   one level change (set_internal_level; a growth re-zeroes one B block; no allocation): "
          f"{c.fmt_time_stats(per_change)}")
    results["rows"]["level_change_seconds"] = c.describe(per_change)

    from esper_core.tasks import TaskInfo

    info = TaskInfo(name="bench", topology="sequence", input_shape=(args.time,), num_classes=VOCABULARY,
                    metric_name="accuracy", train_size=1, val_size=1, score_basis="loss")
    host = c.build_host(manager, "transformer", {"d_model": args.d_model, "n_layer": args.n_layer, "n_head": 4, "slot_layout": "layers"}, info, args.seed)
    tokens = torch.randint(0, VOCABULARY, (args.batch, args.time), generator=generator)
    host_times = c.interleaved({"host": host_step(host, tokens)}, warmup=2, repeats=max(args.repeats // 3, 3))
    host_time = c.describe(host_times["host"])["median"]
    worst = max(extras, key=lambda level: extras[level])
    print(f"   for scale: one transformer host step (n_layer {args.n_layer}, d_model {args.d_model}, same batch, "
          f"cross-entropy + backward): {c.fmt_time_stats(host_times['host'])}; the largest extra (level {worst}, "
          f"{c.fmt_seconds(extras[worst])}) is {extras[worst] / host_time:.2%} of it")
    results["rows"]["host_step_seconds"] = c.describe(host_times["host"])
    c.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
