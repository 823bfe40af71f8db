"""Forward+backward cost of a MorphogeneticModel with every slot dormant, against the bare host called directly.

Measured for every cnn preset and slot layout asked for (default: cifar_baseline and cifar_scale, the
segment layout and the pre/post-pool lattice); every ratio compares cases timed side by side in one run.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import _common as c

TARGET = 1.02


class _ForcedRouted:
    """Mixed into a DORMANT slot's class so that it reports ``is_active``: MorphogeneticModel.forward
    then takes its real routed branch (forward_to / slot / forward_from through every slot) while
    every slot still returns its input unchanged. This isolates the price of routing itself."""

    @property
    def is_active(self) -> bool:
        return True


def force_routed(model) -> None:
    slot = model.slots[model.slot_ids[0]]
    slot.__class__ = type("ForcedRoutedSlot", (_ForcedRouted, type(slot)), {})


def main(argv: list[str] | None = None) -> int:
    parser = c.base_parser(__doc__)
    parser.add_argument("--presets", nargs="+", default=["cifar_baseline", "cifar_scale"], help="cnn host presets")
    parser.add_argument(
        "--layouts", nargs="+", default=["segments", "lattice"], choices=["segments", "lattice"],
        help="cnn slot layouts (default: both)",
    )
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--repeats", type=int, default=30, help="timed repetitions per case (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up calls per case (default 5)")
    parser.add_argument("--inner", type=int, default=1, help="calls per timed repetition (default 1)")
    parser.add_argument("--fixed-calls", type=int, default=5000, help="calls per repetition for the fixed-cost line (model around a no-op host)")
    parser.add_argument("--seed-family", default="conv_light", help="seed family for the TRAINING-seed row")
    parser.add_argument("--no-extras", action="store_true", help="only bare vs dormant (skip routed and TRAINING rows)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.warmup, args.fixed_calls = 32, 6, 2, 1000
    c.setup_torch(args.threads, args.seed)
    env = c.print_environment("dormant_overhead: MorphogeneticModel (all slots DORMANT) vs the bare host")
    print(f"   batch {args.batch} x 3x32x32, forward + cross-entropy + backward (grads set to None before each call), "
          f"{args.warmup} warm-up, {args.repeats} interleaved repetitions x {args.inner} call(s)")

    manager = c.plugin_manager()
    task_info = _image_task_info()
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, task_info.num_classes, (args.batch,), generator=generator)
    results = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "presets": {}}

    for preset, layout in [(preset, layout) for preset in args.presets for layout in args.layouts]:
        host = c.build_host(manager, "cnn", {"preset": preset, "slot_layout": layout}, task_info, seed=args.seed)
        host.train()
        # Every model below wraps the *same* host module: identical parameters and compute.
        dormant = c.morphogenetic_model(host, manager, seed_families=[args.seed_family], seed=args.seed)
        routed = c.morphogenetic_model(host, manager, seed_families=[args.seed_family], seed=args.seed)
        force_routed(routed)
        training = c.morphogenetic_model(host, manager, seed_families=[args.seed_family], seed=args.seed)
        middle = training.slot_ids[len(training.slot_ids) // 2]
        c.germinate(training.slots[middle], args.seed_family)
        training.tick()  # GERMINATED -> TRAINING
        with torch.no_grad():  # sanity: dormant and routed models compute exactly the host's function
            for model in (dormant, routed):
                model.eval()
            reference = host(x)
            if not torch.equal(dormant(x), reference) or not torch.allclose(routed(x), reference, atol=1e-6):
                raise RuntimeError("a dormant model's output differs from the bare host's")
            for model in (dormant, routed, training):
                model.train()

        seed_params = list(training.slots[middle].seed_parameters())

        def step(module: torch.nn.Module, extra_params=()) -> None:
            for parameter in host.parameters():
                parameter.grad = None
            for parameter in extra_params:
                parameter.grad = None
            F.cross_entropy(module(x), y).backward()

        cases = {"bare host": lambda: step(host), "dormant model": lambda: step(dormant)}
        if not args.no_extras:
            cases["routed (forced)"] = lambda: step(routed)
            cases[f"1 TRAINING seed ({args.seed_family} @ {middle})"] = lambda: step(training, seed_params)
        times = c.interleaved(cases, warmup=args.warmup, repeats=args.repeats, inner=args.inner)

        slots = ", ".join(f"{s}({dormant.slots[s].spec.channels}ch)" for s in dormant.slot_ids)
        print(f"\n-- preset {preset}, slot_layout {layout}: host params {sum(p.numel() for p in host.parameters()):,}, slots {slots}")
        bare = times["bare host"]
        for name, values in times.items():
            print(f"   {name:<38} {c.fmt_time_stats(values)}")
        rows = {}
        for name, values in times.items():
            if name == "bare host":
                continue
            ratios = c.paired_ratios(values, bare)
            min_ratio = min(values) / min(bare)
            rows[name] = {"ratio_vs_bare": c.describe(ratios), "ratio_of_minima": min_ratio, "seconds": c.describe(values)}
            line = f"   ratio {name} / bare host: {c.fmt_ratio_stats(ratios)}, ratio of minima {min_ratio:.3f}"
            if name == "dormant model":
                median = c.describe(ratios)["median"]
                line += f"   {c.verdict(median, TARGET, at_most=True)}"
            print(line)
        key = f"{preset}/{layout}"
        results["presets"][key] = {
            "preset": preset, "slot_layout": layout, "slots": list(dormant.slot_ids),
            "bare_seconds": c.describe(bare), "cases": rows,
        }

        # The dormant path's fixed cost, isolated from convolution noise: the same slots around a host
        # whose forward returns its input, many calls per repetition. The difference between calling
        # that model and calling the no-op host directly is all MorphogeneticModel adds per call.
        noop_host = _NoOpHost(host)
        noop_model = c.morphogenetic_model(noop_host, manager, seed_families=[args.seed_family], seed=args.seed)
        calls = {"no-op host": lambda: noop_host(x), "dormant model around it": lambda: noop_model(x)}
        small = c.interleaved(calls, warmup=100, repeats=args.repeats, inner=args.fixed_calls)
        added = [d - b for d, b in zip(small["dormant model around it"], small["no-op host"])]
        full_step = c.describe(bare)["median"]
        added_median = c.describe(added)["median"]
        print(f"   fixed cost per call ({args.fixed_calls} calls/rep around a no-op host with the same slots): "
              f"MorphogeneticModel adds {c.fmt_seconds(added_median)} per forward "
              f"= {100 * added_median / full_step:.4f}% of one batch-{args.batch} forward+backward")
        results["presets"][key]["fixed_cost_seconds_per_call"] = c.describe(added)

    print("\n-- summary: dormant model / bare host (median of paired ratios)")
    for key, entry in results["presets"].items():
        median = entry["cases"]["dormant model"]["ratio_vs_bare"]["median"]
        print(f"   {key:<28} {median:.3f}   {c.verdict(median, TARGET, at_most=True)}")
    c.write_json(args.json, results)
    return 0


class _NoOpHost(torch.nn.Module):
    """Exposes a real host's injection specs but computes nothing (returns its input)."""

    def __init__(self, host: torch.nn.Module) -> None:
        super().__init__()
        self._specs = host.injection_specs()

    def injection_specs(self):
        return list(self._specs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _image_task_info():
    from esper_core.tasks import TaskInfo

    return TaskInfo(
        name="bench", topology="image", input_shape=(3, 32, 32), num_classes=10, metric_name="accuracy",
        train_size=1, val_size=1,
    )


if __name__ == "__main__":
    sys.exit(main())


def markdown_table(results: dict) -> str:
    """The docs table of a ``--json`` result: per preset and slot layout, dormant model ÷ bare host
    (median of the paired ratios, its 95 % interval) and one TRAINING seed ÷ bare host."""
    lines = [
        "| preset | slot layout | slots | dormant ÷ bare (median) | 95 % CI | 1 TRAINING seed ÷ bare |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in results["presets"].items():
        preset, layout = key.split("/")
        dormant = row["cases"]["dormant model"]["ratio_vs_bare"]
        training = next(name for name in row["cases"] if name.startswith("1 TRAINING"))
        seed = training.split("(", 1)[1].rstrip(")")
        lines.append(
            f"| `{preset}` | `{layout}` | {len(row['slots'])} | **{dormant['median']:.3f}** | "
            f"{dormant['median_ci95_low']:.3f}–{dormant['median_ci95_high']:.3f} | "
            f"{row['cases'][training]['ratio_vs_bare']['median']:.3f} ({seed}) |"
        )
    return "\n".join(lines)
