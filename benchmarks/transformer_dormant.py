"""Forward+backward cost of a MorphogeneticModel around the `transformer` host with every slot dormant, against the bare host, per slot layout."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import _common as c

TARGET = 1.03
LAYOUTS = ("segments", "layers", "lattice")


class _ForcedRouted:
    """Mixed into a DORMANT slot's class so that it reports ``is_active``: MorphogeneticModel.forward
    then takes its routed branch (forward_to / slot / forward_from through every slot) while every
    slot still returns its input unchanged. This isolates the price of cutting the host at its slots."""

    @property
    def is_active(self) -> bool:
        return True


def force_routed(model) -> None:
    slot = model.slots[model.slot_ids[0]]
    slot.__class__ = type("ForcedRoutedSlot", (_ForcedRouted, type(slot)), {})


class _NoOpHost(torch.nn.Module):
    """Exposes a real host's injection specs but computes nothing (returns its input)."""

    def __init__(self, host: torch.nn.Module) -> None:
        super().__init__()
        self._specs = host.injection_specs()

    def injection_specs(self):
        return list(self._specs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def main(argv: list[str] | None = None) -> int:
    parser = c.base_parser(__doc__)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS, help="slot layouts (default all three)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per batch (default 16)")
    parser.add_argument("--context", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--vocab", type=int, default=256, help="vocabulary size (default 256)")
    parser.add_argument("--n-layer", type=int, default=6, help="host layers (default 6: 3 / 6 / 12 slots)")
    parser.add_argument("--d-model", type=int, default=128, help="host width (default 128)")
    parser.add_argument("--repeats", type=int, default=30, help="timed repetitions per case (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up calls per case (default 5)")
    parser.add_argument("--fixed-calls", type=int, default=5000, help="calls per repetition for the fixed-cost line (model around a no-op host)")
    parser.add_argument("--seed-family", default="lora", help="seed family for the TRAINING-seed row (default lora)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu; on cuda every timed call ends with a synchronize)")
    parser.add_argument("--no-extras", action="store_true", help="only bare vs dormant (skip routed and TRAINING rows)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.context, args.repeats, args.warmup, args.fixed_calls = 4, 32, 6, 2, 1000
    c.setup_torch(args.threads, args.seed)
    env = c.print_environment("transformer_dormant: MorphogeneticModel (all slots DORMANT) vs the bare transformer host")
    print(f"   batch {args.batch} x {args.context} tokens, vocab {args.vocab}, n_layer {args.n_layer}, d_model {args.d_model}; "
          f"forward + cross-entropy + backward (grads set to None before each call), "
          f"{args.warmup} warm-up, {args.repeats} interleaved repetitions")

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    manager = c.plugin_manager()
    task_info = _sequence_task_info(args.context, args.vocab)
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randint(0, args.vocab, (args.batch, args.context), generator=generator)
    y = torch.randint(0, args.vocab, (args.batch, args.context), generator=generator)
    x, y = x.to(device), y.to(device)
    results = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "layouts": {}}
    summary = []

    for layout in args.layouts:
        options = {"slot_layout": layout, "n_layer": args.n_layer, "d_model": args.d_model}
        host = c.build_host(manager, "transformer", options, task_info, seed=args.seed).to(device)
        host.train()
        # Every model below wraps the *same* host module: identical parameters and compute.
        build = lambda: c.morphogenetic_model(  # noqa: E731
            host, manager, seed_families=[args.seed_family], seed=args.seed, topology="sequence"
        )
        dormant = build()
        routed = build()
        force_routed(routed)
        training = build()
        middle = training.slot_ids[len(training.slot_ids) // 2]
        c.germinate(training.slots[middle], args.seed_family)
        training.tick()  # GERMINATED -> TRAINING
        for model in (dormant, routed, training):
            model.to(device)
        with torch.no_grad():  # sanity: dormant and routed models compute exactly the host's function
            for model in (dormant, routed):
                model.eval()
            reference = host.eval()(x)
            if not torch.equal(dormant(x), reference) or not torch.allclose(routed(x), reference, atol=1e-6):
                raise RuntimeError("a dormant model's output differs from the bare host's")
            for model in (host, dormant, routed, training):
                model.train()

        seed_params = list(training.slots[middle].seed_parameters())

        def step(module: torch.nn.Module, extra_params=()) -> None:
            for parameter in host.parameters():
                parameter.grad = None
            for parameter in extra_params:
                parameter.grad = None
            F.cross_entropy(module(x).flatten(0, 1), y.flatten()).backward()
            sync()

        cases = {"bare host": lambda: step(host), "dormant model": lambda: step(dormant)}
        if not args.no_extras:
            cases["routed (forced)"] = lambda: step(routed)
            cases[f"1 TRAINING seed ({args.seed_family} @ {middle})"] = lambda: step(training, seed_params)
        times = c.interleaved(cases, warmup=args.warmup, repeats=args.repeats)

        slots = ", ".join(dormant.slot_ids)
        print(f"\n-- slot_layout {layout}: host params {sum(p.numel() for p in host.parameters()):,}, "
              f"{len(dormant.slot_ids)} slots ({slots})")
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
                summary.append((layout, len(dormant.slot_ids), median, min_ratio))
            print(line)
        results["layouts"][layout] = {"slots": list(dormant.slot_ids), "bare_seconds": c.describe(bare), "cases": rows}

        # The dormant path's fixed cost, isolated from the host's compute: the same slots around a host
        # whose forward returns its input, many calls per repetition.
        noop_host = _NoOpHost(host)
        noop_model = c.morphogenetic_model(noop_host, manager, seed_families=[args.seed_family], seed=args.seed, topology="sequence").to(device)
        calls = {"no-op host": lambda: noop_host(x), "dormant model around it": lambda: noop_model(x)}
        small = c.interleaved(calls, warmup=100, repeats=args.repeats, inner=args.fixed_calls)
        added = [d - b for d, b in zip(small["dormant model around it"], small["no-op host"])]
        added_median = c.describe(added)["median"]
        print(f"   fixed cost per call ({args.fixed_calls} calls/rep around a no-op host with the same {len(dormant.slot_ids)} slots): "
              f"MorphogeneticModel adds {c.fmt_seconds(added_median)} per forward "
              f"= {100 * added_median / c.describe(bare)['median']:.4f}% of one forward+backward")
        results["layouts"][layout]["fixed_cost_seconds_per_call"] = c.describe(added)

    print("\n== dormant model / bare host (median of paired ratios; ratio of minima)")
    for layout, count, median, min_ratio in summary:
        print(f"   {layout:<9} {count:>2} slots: {median:.3f}  ({min_ratio:.3f})   {c.verdict(median, TARGET, at_most=True)}")
    c.write_json(args.json, results)
    return 0


def _sequence_task_info(context: int, vocab: int):
    from esper_core.tasks import TaskInfo

    return TaskInfo(
        name="bench", topology="sequence", input_shape=(context,), num_classes=vocab, metric_name="accuracy",
        train_size=1, val_size=1, score_basis="loss",
    )


if __name__ == "__main__":
    sys.exit(main())
