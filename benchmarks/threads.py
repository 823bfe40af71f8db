"""Threads: epoch time of a quickstart-like run with 1 and 2 torch threads, on a quiet and on a loaded machine.

Each measurement is one run (``start_run``, in this process, ``torch.set_num_threads`` set by the run) of
the quickstart config, shortened to a few epochs and a few hundred samples. The epoch time is the median over the epochs
after the first of the training and validation seconds the run records in EPOCH_COMPLETED (startup
excluded). "Loaded" runs the same with N busy-loop processes beside it (default: one per core), as other
jobs on a shared machine would. Thread counts alternate within each condition, so drifts in the machine's
background load hit both sides alike. Also checks that the thread count does not change the numbers (the
validation losses and metrics of every epoch).

    .venv/bin/python benchmarks/threads.py            # about 2-3 minutes on 2 busy cores
    .venv/bin/python benchmarks/threads.py --quick    # fewer samples (noisier)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def busy_loop() -> None:  # pragma: no cover - runs in a child process until terminated
    while True:
        pass


def run_once(threads: int, scratch: Path, manager, *, train_size: int, epochs: int) -> tuple[float, list[tuple[float, float]]]:
    """Median epoch seconds (train + validate, epochs after the first) and each epoch's (val loss, metric)."""
    from esper_core.config import parse_config, read_toml
    from esper_core.tolaria.engine import start_run

    data = read_toml(REPO / "examples" / "quickstart.toml")
    data["run"].update(torch_threads=threads, episode_length=epochs, output_dir=str(scratch), checkpoint_every=0)
    data["task"].update(train_size=train_size, val_size=train_size // 3)
    data["sinks"] = {}
    run_dir = start_run(parse_config(data, manager), manager)
    epochs_seen: dict[int, float] = {}
    numbers = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "EPOCH_COMPLETED":
            data = record["data"]
            epochs_seen[data["epoch"]] = epochs_seen.get(data["epoch"], 0.0) + data["train_seconds"] + data["validate_seconds"]
            numbers.append((data["val_loss"], data["val_metric"]))
    later = [seconds for epoch, seconds in sorted(epochs_seen.items()) if epoch > 0]
    return statistics.median(later), numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (noisier)")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1,
                        help="busy-loop processes for the loaded condition (default: one per core)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per thread count and condition (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    repeats = args.repeats or 1
    train_size = 192 if args.quick else 384
    from esper_core.plugins import PluginManager

    manager = PluginManager()
    epochs = 3
    results: dict[str, dict[int, list[float]]] = {}
    numbers: dict[int, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        for condition in ("quiet", "loaded"):
            workers = []
            if condition == "loaded":
                workers = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(args.load)]
                for worker in workers:
                    worker.start()
                time.sleep(1.0)
            try:
                results[condition] = {1: [], 2: []}
                for _ in range(repeats):
                    for threads in (1, 2):
                        seconds, seen = run_once(threads, scratch, manager, train_size=train_size, epochs=epochs)
                        results[condition][threads].append(seconds)
                        print(f"  {condition}, {threads} thread(s): {seconds:.2f} s/epoch", flush=True)
                        numbers.setdefault(threads, seen)
            finally:
                for worker in workers:
                    worker.terminate()
                for worker in workers:
                    worker.join()
    load = os.getloadavg()
    print(f"cores {os.cpu_count()}, load average before exit {load[0]:.1f}, loaded condition: {args.load} busy loops, "
          f"{repeats} run(s) per cell, quickstart with train_size {train_size}, {epochs} epochs")
    print(f"{'condition':<10}{'1 thread (s/epoch)':>20}{'2 threads (s/epoch)':>22}{'2 / 1':>8}")
    medians = {}
    for condition, by_threads in results.items():
        one, two = statistics.median(by_threads[1]), statistics.median(by_threads[2])
        medians[condition] = {"1": one, "2": two, "ratio_2_over_1": two / one}
        print(f"{condition:<10}{one:>20.2f}{two:>22.2f}{two / one:>8.2f}")
    for threads in (1, 2):
        slowdown = medians["loaded"][str(threads)] / medians["quiet"][str(threads)]
        print(f"loaded / quiet with {threads} thread(s): {slowdown:.2f}")
    identical = numbers[1] == numbers[2]
    print(f"validation losses and metrics identical with 1 and 2 threads: {'yes' if identical else 'no'}")
    if not identical:
        worst = max(abs(a[0] - b[0]) for a, b in zip(numbers[1], numbers[2]))
        print(f"  largest validation-loss difference: {worst:.3g}")
    if args.json is not None:
        args.json.write_text(json.dumps({"medians": medians, "runs": results, "identical": identical}, indent=2) + "\n")


if __name__ == "__main__":
    main()
