"""Forward+backward cost of the cnn host with memory_format channels_last against contiguous, bare and with a seed.

For each preset the same weights are built twice (contiguous and channels_last); each is timed bare and
inside a MorphogeneticModel with one TRAINING seed in its middle slot. All cases of a preset are timed
side by side (interleaved) in one run, and the ratios channels_last / contiguous are paired per repetition.
A third seeded case converts the seed's own weights to channels_last as well (the core builds seeds in
the default format), to show what that conversion would be worth.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import _common as c


def main(argv: list[str] | None = None) -> int:
    parser = c.base_parser(__doc__)
    parser.add_argument("--presets", nargs="+", default=["cifar_baseline", "cifar_scale"], help="cnn host presets")
    parser.add_argument("--layout", default="segments", choices=["segments", "lattice"], help="cnn slot layout")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions per case (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up calls per case (default 3)")
    parser.add_argument("--seed-family", default="conv_light", help="seed family germinated for the seeded rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.warmup = 32, 6, 2
    c.setup_torch(args.threads, args.seed)
    env = c.print_environment("channels_last: cnn host with memory_format channels_last vs contiguous")
    print(f"   batch {args.batch} x 3x32x32 (a contiguous batch; the channels_last host converts it at entry), "
          f"forward + cross-entropy + backward, slot_layout {args.layout}, {args.warmup} warm-up, "
          f"{args.repeats} interleaved repetitions")

    manager = c.plugin_manager()
    task_info = _image_task_info()
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, task_info.num_classes, (args.batch,), generator=generator)
    results = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "presets": {}}

    for preset in args.presets:
        hosts, models, seeds = {}, {}, {}
        for memory_format in ("contiguous", "channels_last"):
            options = {"preset": preset, "slot_layout": args.layout, "memory_format": memory_format}
            host = c.build_host(manager, "cnn", options, task_info, seed=args.seed).train()
            model = c.morphogenetic_model(host, manager, seed_families=[args.seed_family], seed=args.seed)
            middle = model.slot_ids[len(model.slot_ids) // 2]
            c.germinate(model.slots[middle], args.seed_family)
            model.tick()  # GERMINATED -> TRAINING
            hosts[memory_format], models[memory_format] = host, model.train()
            seeds[memory_format] = model.slots[middle]
        # The same channels_last host and seed weights once more, with the seed's weights converted too.
        options = {"preset": preset, "slot_layout": args.layout, "memory_format": "channels_last"}
        converted_host = c.build_host(manager, "cnn", options, task_info, seed=args.seed).train()
        converted = c.morphogenetic_model(converted_host, manager, seed_families=[args.seed_family], seed=args.seed)
        c.germinate(converted.slots[middle], args.seed_family)
        converted.tick()
        converted.slots[middle].seed.load_state_dict(seeds["channels_last"].seed.state_dict())
        converted.slots[middle].seed.to(memory_format=torch.channels_last)
        converted.train()

        with torch.no_grad():  # sanity: the two formats compute the same function
            for module in (*hosts.values(), *models.values(), converted):
                module.eval()
            if not torch.allclose(hosts["channels_last"](x), hosts["contiguous"](x), atol=1e-4):
                raise RuntimeError(f"{preset}: the channels_last host's output differs from the contiguous host's")
            if not torch.allclose(models["channels_last"](x), models["contiguous"](x), atol=1e-4):
                raise RuntimeError(f"{preset}: the channels_last seeded model differs from the contiguous one")
            for module in (*hosts.values(), *models.values(), converted):
                module.train()

        def step(module: torch.nn.Module) -> None:
            for parameter in module.parameters():
                parameter.grad = None
            F.cross_entropy(module(x), y).backward()

        cases = {
            "bare contiguous": lambda: step(hosts["contiguous"]),
            "bare channels_last": lambda: step(hosts["channels_last"]),
            "seeded contiguous": lambda: step(models["contiguous"]),
            "seeded channels_last": lambda: step(models["channels_last"]),
            "seeded channels_last, seed converted": lambda: step(converted),
        }
        times = c.interleaved(cases, warmup=args.warmup, repeats=args.repeats)
        print(f"\n-- preset {preset}: host params {sum(p.numel() for p in hosts['contiguous'].parameters()):,}, "
              f"seed {args.seed_family} @ {middle} (TRAINING)")
        for name, values in times.items():
            print(f"   {name:<38} {c.fmt_time_stats(values)}")
        rows = {}
        for label, numerator, denominator in (
            ("bare", "bare channels_last", "bare contiguous"),
            ("seeded", "seeded channels_last", "seeded contiguous"),
            ("seeded, seed converted", "seeded channels_last, seed converted", "seeded contiguous"),
        ):
            ratios = c.paired_ratios(times[numerator], times[denominator])
            min_ratio = min(times[numerator]) / min(times[denominator])
            rows[label] = {"ratio_channels_last_vs_contiguous": c.describe(ratios), "ratio_of_minima": min_ratio}
            print(f"   ratio channels_last / contiguous ({label}): {c.fmt_ratio_stats(ratios)}, ratio of minima {min_ratio:.3f}")
        results["presets"][preset] = {
            "slot_layout": args.layout,
            "seed": f"{args.seed_family} @ {middle}",
            "seconds": {name: c.describe(values) for name, values in times.items()},
            "ratios": rows,
        }

    print("\n-- summary: channels_last / contiguous (median of paired ratios; < 1 means channels_last is faster)")
    for preset, entry in results["presets"].items():
        cells = ", ".join(
            f"{label} {row['ratio_channels_last_vs_contiguous']['median']:.3f}" for label, row in entry["ratios"].items()
        )
        print(f"   {preset:<16} {cells}")
    c.write_json(args.json, results)
    return 0


def _image_task_info():
    from esper_core.tasks import TaskInfo

    return TaskInfo(
        name="bench", topology="image", input_shape=(3, 32, 32), num_classes=10, metric_name="accuracy",
        train_size=1, val_size=1,
    )


if __name__ == "__main__":
    sys.exit(main())


def markdown_table(results: dict) -> str:
    """The docs table of a ``--json`` result: channels_last ÷ contiguous forward+backward time per
    preset, bare and with one seed (median of the paired ratios, its 95 % interval)."""
    cases = ("bare", "seeded", "seeded, seed converted")
    lines = [
        "| preset | seed | " + " | ".join(f"{case} (95 % CI)" for case in cases) + " |",
        "|---|---|" + "---|" * len(cases),
    ]
    for preset, row in results["presets"].items():
        cells = []
        for case in cases:
            ratio = row["ratios"][case]["ratio_channels_last_vs_contiguous"]
            cells.append(f"**{ratio['median']:.3f}** ({ratio['median_ci95_low']:.3f}–{ratio['median_ci95_high']:.3f})")
        lines.append(f"| `{preset}` | {row['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
