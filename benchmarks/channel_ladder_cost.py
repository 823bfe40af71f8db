"""The channel_ladder seed at each level against a fixed seed of the same width, and the cost of a level change."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable

import torch

import _common as c
from esper_cnn.channel_ladder import ChannelLadderSeed
from esper_cnn.seeds import ResidualSeed, conv_bn_relu, zero_projection

TARGET = 1.05


def step(module: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    def run() -> None:
        for parameter in module.parameters():
            parameter.grad = None
        ((module(x) - target) ** 2).mean().backward()

    return run


def rotated(cases: dict[str, Callable[[], None]], *, warmup: int, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per call of every case, side by side, as wall time and as this thread's CPU time.

    Repetition ``r`` runs the cases in the order rotated by ``r`` (A B C, B C A, C A B, ...), so every case
    takes every position equally often (with more than two cases, ``_common.interleaved``'s alternation
    would keep the middle case in the middle). CPU time (``time.thread_time``) leaves out the time the
    thread waits while other processes hold the core, so it stays comparable on a busy machine.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            start_wall, start_cpu = time.perf_counter(), time.thread_time()
            cases[name]()
            cpu[name].append(time.thread_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    return wall, cpu


def fixed_seed(channels: int, width: int) -> ResidualSeed:
    """The same structure as the ladder at hidden width ``width``, built at that width (no ladder)."""
    return ResidualSeed(torch.nn.Sequential(conv_bn_relu(channels, width, 3), zero_projection(width, channels)))


def main(argv: list[str] | None = None) -> int:
    parser = c.base_parser(__doc__)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=16, help="hidden channels per group (default 16)")
    parser.add_argument("--size", type=int, default=16, help="spatial size of the activation (default 16)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.channels, args.group_size, args.size, args.batch, args.repeats, args.warmup = 32, 8, 8, 16, 6, 2
    c.setup_torch(args.threads, args.seed)
    env = c.print_environment("channel_ladder_cost: channel_ladder at level k vs a fixed seed of width h_k")
    print(f"   activation {args.batch} x {args.channels} x {args.size} x {args.size}, group size {args.group_size}, "
          f"forward + MSE + backward, {args.repeats} rotated repetitions; verdict on CPU time")
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, args.channels, args.size, args.size, generator=generator)
    target = torch.randn(x.shape, generator=generator)
    torch.manual_seed(args.seed)
    results = {
        "environment": env,
        "setup": {"channels": args.channels, "group_size": args.group_size, "size": args.size, "batch": args.batch,
                  "repeats": args.repeats, "target": TARGET},
        "rows": {},
    }
    met = True
    step_medians = {}
    for level in range(1, 5):
        ladder = ChannelLadderSeed(args.channels, args.group_size).train()
        ladder.set_internal_level(level)
        width = ladder.active_channels
        fixed = fixed_seed(args.channels, width).train()
        twin = fixed_seed(args.channels, width).train()  # the control: identical work, so its ratio is the noise floor
        with torch.no_grad():  # a trained-looking projection on every side (zero weights are no cheaper, but be fair)
            for projection in (ladder.projection, fixed.branch[1], twin.branch[1]):
                torch.nn.init.normal_(projection.weight, std=0.02)
        assert ladder.internal_effective_params(level) == sum(p.numel() for p in fixed.parameters())
        ladder_name, fixed_name = f"ladder@{level}", f"fixed h={width}"
        wall, cpu = rotated(
            {fixed_name: step(fixed, x, target), ladder_name: step(ladder, x, target), "twin": step(twin, x, target)},
            warmup=args.warmup, repeats=args.repeats,
        )
        row = {"hidden_width": width, "params": ladder.internal_effective_params(level)}
        for clock, times in (("cpu", cpu), ("wall", wall)):
            ratios = c.paired_ratios(times[ladder_name], times[fixed_name])
            control = c.paired_ratios(times["twin"], times[fixed_name])
            median = c.describe(ratios)["median"]
            if clock == "cpu":  # the verdict: CPU time is what the ladder costs, whoever else shares the core
                met &= median <= TARGET
                step_medians[level] = c.describe(times[ladder_name])["median"]
            print(f"   {ladder_name} / {fixed_name} ({clock} time): {c.fmt_ratio_stats(ratios)}  "
                  f"{c.verdict(median, TARGET, at_most=True) if clock == 'cpu' else ''}")
            print(f"      control (an identical fixed seed / fixed): {c.fmt_ratio_stats(control)}")
            print(f"      {ladder_name}: {c.fmt_time_stats(times[ladder_name])};  {fixed_name}: {c.fmt_time_stats(times[fixed_name])}")
            row[clock] = {"ratio": c.describe(ratios), "control_ratio": c.describe(control),
                          "ladder_seconds": c.describe(times[ladder_name]), "fixed_seconds": c.describe(times[fixed_name])}
        results["rows"][f"{ladder_name}/fixed"] = row
    switcher = ChannelLadderSeed(args.channels, args.group_size)
    levels = [1, 2, 3, 4, 3, 2]  # every change a grow (zeroes the entering group's projection columns) or a shrink

    def change() -> None:
        for level in levels:
            switcher.set_internal_level(level)

    change_times = c.interleaved({"change": change}, warmup=10, repeats=args.repeats, inner=100)
    per_change = [value / len(levels) for value in change_times["change"]]
    change_median = c.describe(per_change)["median"]
    relative = change_median / step_medians[1]
    print(f"   one level change (set_internal_level, no allocation): {c.fmt_time_stats(per_change)}; "
          f"{relative:.4f} x one forward+backward at level 1 ({c.fmt_seconds(step_medians[1])})")
    results["rows"]["level_change_seconds"] = c.describe(per_change)
    results["rows"]["level_change_per_step_at_level_1"] = relative
    results["met"] = met
    c.write_json(args.json, results)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())


def markdown_table(results: dict) -> str:
    """The docs table of a ``--json`` result: per level, ladder ÷ fixed seed of the same hidden width
    (CPU time, median of the paired ratios and its 95 % interval), the identical-seed control's ratio,
    and the verdict against ``TARGET``."""
    lines = [
        "| level | hidden width | parameters (= fixed seed) | ladder ÷ fixed (median) | 95 % CI | control (fixed ÷ identical fixed) | ≤ 1.05 |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in results["rows"].items():
        if not key.startswith("ladder@"):
            continue
        level = key.split("@", 1)[1].split("/", 1)[0]
        ratio, control = row["cpu"]["ratio"], row["cpu"]["control_ratio"]
        verdict = "met" if ratio["median"] <= TARGET else "**not met**"
        lines.append(
            f"| {level} | {row['hidden_width']} | {row['params']:,} | **{ratio['median']:.3f}** | "
            f"{ratio['median_ci95_low']:.3f}–{ratio['median_ci95_high']:.3f} | {control['median']:.3f} | {verdict} |"
        )
    return "\n".join(lines)
