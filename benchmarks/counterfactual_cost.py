"""Cost of the validation pass with counterfactual ablations for 1-4 blended seeds: shared-prefix vs plain vs naive."""

from __future__ import annotations

import resource
import sys

import torch

import _common as c

#: Which slots of the cifar_scale host (r0c0..r0c4) carry the seeds, per placement and seed count.
PLACEMENTS: dict[str, dict[int, tuple[str, ...]]] = {
    "spread": {1: ("r0c2",), 2: ("r0c1", "r0c3"), 3: ("r0c0", "r0c2", "r0c4"), 4: ("r0c0", "r0c1", "r0c3", "r0c4")},
    "early": {1: ("r0c0",), 2: ("r0c0", "r0c1"), 3: ("r0c0", "r0c1", "r0c2"), 4: ("r0c0", "r0c1", "r0c2", "r0c3")},
    "late": {1: ("r0c4",), 2: ("r0c3", "r0c4"), 3: ("r0c2", "r0c3", "r0c4"), 4: ("r0c1", "r0c2", "r0c3", "r0c4")},
}


def build_environment(args, manager, task, slots: tuple[str, ...]):
    """An Environment (the engine's own validate) around a cifar_scale model with seeds HOLDING in ``slots``."""
    from esper_core.config import GovernorSection, TrainingSection
    from esper_core.leyline import BlendStyle
    from esper_core.tolaria.environment import Environment

    host = c.build_host(manager, "cnn", {"preset": args.preset}, task.info, seed=args.seed)
    model = c.morphogenetic_model(host, manager, seed_families=[args.seed_family], seed=args.seed)
    style = BlendStyle[args.style.upper()]
    for slot_id in slots:
        c.grow_to_holding(model.slots[slot_id], args.seed_family, style=style)
        c.perturb_zero_parameters(model.slots[slot_id])  # a seed that changes the output
    if model.ablatable_slots() != list(slots):
        raise RuntimeError(f"expected blended seeds in {slots}, got {model.ablatable_slots()}")
    return Environment(
        env_id=0, env_seed=args.seed, model=model, task=task,
        training=TrainingSection(eval_batch_size=args.eval_batch), governor=GovernorSection(),
        episode_length=1, device=torch.device("cpu"),
    )


def plain_pass(model, task, batches):
    """One ordinary validation pass: model(x) in eval mode without autograd, scored like validate()."""
    model.eval()
    loss_sum = torch.zeros(1)
    metric_sum = torch.zeros(1)
    with torch.no_grad():
        for inputs, targets in batches:
            loss, metric = task.metric_sums(model(inputs).unsqueeze(0), targets)
            loss_sum += loss
            metric_sum += metric
    return loss_sum, metric_sum


def naive_pass(model, task, batches, ablate):
    """The naive counterfactual: one full validation pass per variant (the full model, then each seed
    with its alpha forced to 0 for that pass). Returns per-variant metric sums."""
    metrics = []
    for variant in [None, *ablate]:
        slot = None if variant is None else model.slots[variant]
        if slot is not None:
            slot.alpha_tensor.fill_(0.0)
        try:
            metrics.append(plain_pass(model, task, batches)[1])
        finally:
            if slot is not None:
                slot.alpha_tensor.fill_(slot.alpha)
    return torch.cat(metrics)


def sweep_eval_batch(args, manager, task, placement: str) -> list[dict]:
    """Environment.validate at several eval batch sizes, interleaved, with minor page faults per pass."""
    sizes = args.sweep_eval_batch
    print(f"\n-- eval batch size sweep (placement {placement}): Environment.validate over the same "
          f"{args.val_size} images; time relative to batch {sizes[0]}; minor page faults per pass (getrusage)")
    print(f"   {'k':>2}  " + "  ".join(f"{'batch ' + str(b):>26}" for b in sizes))
    rows = []
    for k in [0, *args.seeds]:
        slots = PLACEMENTS[placement][k] if k else ()
        environment = build_environment(args, manager, task, slots)
        faults: dict[int, list[int]] = {b: [] for b in sizes}

        def case(batch: int):
            def run() -> None:
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                environment.validate(batch)
                faults[batch].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            return run

        times = c.interleaved({b: case(b) for b in sizes}, warmup=args.warmup, repeats=args.repeats)
        cells = []
        row = {"seeds": k, "slots": list(slots), "by_batch": {}}
        for b in sizes:
            ratio = c.describe(c.paired_ratios(times[b], times[sizes[0]]))
            timed_faults = faults[b][-args.repeats:]
            median_faults = sorted(timed_faults)[len(timed_faults) // 2]
            cells.append(f"{c.fmt_seconds(c.describe(times[b])['median']):>9} x{ratio['median']:.2f} {median_faults:>8,}pf")
            row["by_batch"][b] = {"seconds": c.describe(times[b]), "ratio_vs_first": ratio, "minor_faults_median": median_faults}
        print(f"   {k:>2}  " + "  ".join(f"{cell:>26}" for cell in cells))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = c.base_parser(__doc__)
    parser.add_argument("--preset", default="cifar_scale", help="cnn host preset (default cifar_scale, 5 slots)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4], help="blended seed counts")
    parser.add_argument("--placement", choices=[*PLACEMENTS, "all"], default="spread",
                        help="which slots carry the seeds (default spread; all = spread, early and late)")
    parser.add_argument("--seed-family", default="conv_light", help="seed family (default conv_light)")
    parser.add_argument("--style", default="add", choices=["add", "multiply", "gate"], help="blend style")
    parser.add_argument("--val-size", type=int, default=512, help="validation images (shapes task; default 512, as in the quickstart)")
    parser.add_argument("--eval-batch", type=int, default=512, help="validation batch size (engine default 512)")
    parser.add_argument("--repeats", type=int, default=9, help="timed repetitions per case (default 9)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up passes per case (default 1)")
    parser.add_argument("--sweep-eval-batch", type=int, nargs="+", default=None, metavar="B",
                        help="also time Environment.validate at these eval batch sizes (first = reference), k = 0 and --seeds")
    args = parser.parse_args(argv)
    if args.quick:
        args.val_size, args.eval_batch, args.repeats, args.warmup = 256, 128, 3, 1
    c.setup_torch(args.threads, args.seed)
    env = c.print_environment("counterfactual_cost: validation with ablations, shared prefix vs plain vs naive")

    manager = c.plugin_manager()
    task = c.build_task(manager, "shapes", {"train_size": 10, "val_size": args.val_size}, seed=args.seed)
    batches = task.validation_batches(args.eval_batch)
    placements = list(PLACEMENTS) if args.placement == "all" else [args.placement]
    print(f"   host cnn/{args.preset}, seeds {args.seed_family} ({args.style} blend) HOLDING at alpha 1, "
          f"{args.val_size} shapes validation images in batches of {args.eval_batch}; "
          f"{args.warmup} warm-up, {args.repeats} interleaved repetitions")
    print("   shared = Environment.validate (forward_with_ablations: full model + every single-seed ablation in one pass)")
    print("   plain  = one model(x) pass over the same batches (eval, no_grad), scored the same way")
    print("   naive  = 1 + k full passes, each seed's alpha forced to 0 in turn")
    results = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "rows": []}

    for placement in placements:
        print(f"\n-- placement {placement}")
        print(f"   {'k':>2} {'slots':<24} {'plain':>10} {'shared':>10} {'naive':>10} "
              f"{'shared/plain':>24} {'naive/plain':>12} {'shared/naive':>24}  check")
        for k in args.seeds:
            slots = PLACEMENTS[placement][k]
            environment = build_environment(args, manager, task, slots)
            model = environment.model
            ablate = model.ablatable_slots()

            # Correctness first: the shared pass and the naive passes must measure the same contributions.
            shared_result = environment.validate(args.eval_batch)
            naive_metrics = (naive_pass(model, task, batches, ablate) / task.info.val_size).tolist()
            naive_contrib = {slot_id: naive_metrics[0] - naive_metrics[i + 1] for i, slot_id in enumerate(ablate)}
            worst = max(abs(naive_contrib[s] - shared_result.contributions[s]) for s in ablate)
            worst = max(worst, abs(naive_metrics[0] - shared_result.metric))
            check = "ok" if worst <= 2.0 / task.info.val_size else f"MISMATCH {worst:.4f}"

            times = c.interleaved(
                {
                    "plain": lambda: plain_pass(model, task, batches),
                    "shared": lambda: environment.validate(args.eval_batch),
                    "naive": lambda: naive_pass(model, task, batches, ablate),
                },
                warmup=args.warmup, repeats=args.repeats,
            )
            shared_plain = c.paired_ratios(times["shared"], times["plain"])
            naive_plain = c.paired_ratios(times["naive"], times["plain"])
            shared_naive = c.paired_ratios(times["shared"], times["naive"])
            d = {name: c.describe(values) for name, values in times.items()}
            sp, npl, sn = c.describe(shared_plain), c.describe(naive_plain), c.describe(shared_naive)
            print(
                f"   {k:>2} {','.join(slots):<24} {c.fmt_seconds(d['plain']['median']):>10} "
                f"{c.fmt_seconds(d['shared']['median']):>10} {c.fmt_seconds(d['naive']['median']):>10} "
                f"{sp['median']:>7.3f} ({sp['median_ci95_low']:.3f}..{sp['median_ci95_high']:.3f}) {npl['median']:>12.3f} "
                f"{sn['median']:>7.3f} ({sn['median_ci95_low']:.3f}..{sn['median_ci95_high']:.3f})  {check}"
            )
            results["rows"].append({
                "placement": placement, "seeds": k, "slots": list(slots), "seconds": d,
                "shared_over_plain": sp, "naive_over_plain": npl, "shared_over_naive": sn,
                "contributions": shared_result.contributions, "max_abs_contribution_difference": worst,
            })
    print("\n   ratios are medians of per-repetition ratios (95% CI of the median in brackets); check = shared and naive "
          "contributions agree to within 2 validation images")
    if args.sweep_eval_batch:
        results["eval_batch_sweep"] = sweep_eval_batch(args, manager, task, placements[0])
    c.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
