"""The conv_ladder seed at each level against the fixed seeds of the same capacity, and the cost of a level change."""

from __future__ import annotations

import sys

import torch

import _common as c
from esper_cnn.ladder import ConvLadderSeed
from esper_cnn.seeds import build_conv_heavy, build_conv_light
from esper_core.registry import NoOptions

TARGET = 1.05


def step(module: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    def run() -> None:
        for parameter in module.parameters():
            parameter.grad = None
        ((module(x) - target) ** 2).mean().backward()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = c.base_parser(__doc__)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=16, help="spatial size of the activation (default 16)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.channels, args.size, args.batch, args.repeats, args.warmup = 32, 8, 16, 6, 2
    c.setup_torch(args.threads, args.seed)
    env = c.print_environment("ladder_cost: conv_ladder vs fixed conv seeds of the same capacity")
    print(f"   activation {args.batch} x {args.channels} x {args.size} x {args.size}, forward + MSE + backward, "
          f"{args.repeats} interleaved repetitions")
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, args.channels, args.size, args.size, generator=generator)
    target = torch.randn(x.shape, generator=generator)
    torch.manual_seed(args.seed)
    light = build_conv_light(args.channels, "image", NoOptions()).train()
    heavy = build_conv_heavy(args.channels, "image", NoOptions()).train()
    ladder_1 = ConvLadderSeed(args.channels).train()
    ladder_2 = ConvLadderSeed(args.channels).train()
    ladder_2.set_internal_level(2)
    times = c.interleaved(
        {
            "conv_light": step(light, x, target),
            "ladder@1": step(ladder_1, x, target),
            "conv_heavy": step(heavy, x, target),
            "ladder@2": step(ladder_2, x, target),
        },
        warmup=args.warmup,
        repeats=args.repeats,
    )
    results = {"environment": env, "rows": {}}
    met = True
    for ladder_name, fixed_name in (("ladder@1", "conv_light"), ("ladder@2", "conv_heavy")):
        ratios = c.paired_ratios(times[ladder_name], times[fixed_name])
        median = c.describe(ratios)["median"]
        met &= median <= TARGET
        print(f"   {ladder_name} / {fixed_name}: {c.fmt_ratio_stats(ratios)}  {c.verdict(median, TARGET, at_most=True)}")
        print(f"      {ladder_name}: {c.fmt_time_stats(times[ladder_name])};  {fixed_name}: {c.fmt_time_stats(times[fixed_name])}")
        results["rows"][f"{ladder_name}/{fixed_name}"] = c.describe(ratios)
    counts = {level: ladder_1.internal_effective_params(level) for level in range(5)}
    print(f"   parameters in use per level: {counts}; conv_light {sum(p.numel() for p in light.parameters())}, "
          f"conv_heavy {sum(p.numel() for p in heavy.parameters())}")
    for level in range(3, 5):
        deeper = ConvLadderSeed(args.channels).train()
        deeper.set_internal_level(level)
        level_times = c.interleaved({"deeper": step(deeper, x, target)}, warmup=2, repeats=max(args.repeats // 3, 3))
        print(f"   ladder@{level}: {c.fmt_time_stats(level_times['deeper'])}")
        results["rows"][f"ladder@{level}"] = c.describe(level_times["deeper"])
    switcher = ConvLadderSeed(args.channels)
    levels = [1, 2, 3, 4, 3, 2]

    def change() -> None:
        for level in levels:
            switcher.set_internal_level(level)

    change_times = c.interleaved({"change": change}, warmup=10, repeats=args.repeats, inner=100)
    per_change = [value / len(levels) for value in change_times["change"]]
    print(f"   one level change (set_internal_level, no allocation): {c.fmt_time_stats(per_change)}")
    results["rows"]["level_change_seconds"] = c.describe(per_change)
    c.write_json(args.json, results)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
