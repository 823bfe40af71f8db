"""Launch `esper run` on a config (the quickstart by default) and time it to the first EPOCH_COMPLETED, epochs/s and peak memory."""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as c

TARGET_FIRST_EPOCH = 5.0

try:  # psutil is optional; without it the process tree is read from /proc
    import psutil  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None


# -- process-tree memory ---------------------------------------------------------------------------


def _proc_status_kib(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return values


def _descendants_proc(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier.extend(children.get(pid, []))
    return tree


class TreeMemory:
    """Polls the memory of a process and all its descendants.

    ``peak_tree_rss``: the largest sum of resident set sizes over the tree seen at any poll (a lower
    bound on the true peak: it can miss a spike between polls). ``hwm``: each process's own peak RSS
    (VmHWM, kept by the kernel, so no spike is missed); their sum is an upper bound on the tree's peak.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak_tree_rss = 0
        self.hwm: dict[int, int] = {}
        self.method = "psutil" if psutil is not None else "/proc/<pid>/status (VmRSS, VmHWM) over the process tree"

    def poll(self) -> None:
        if psutil is not None:
            try:
                root = psutil.Process(self.root)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss // 1024
                except psutil.Error:
                    continue
                status = _proc_status_kib(proc.pid)  # psutil has no portable peak RSS; read VmHWM where there is one
                if "VmHWM" in status:
                    self.hwm[proc.pid] = max(self.hwm.get(proc.pid, 0), status["VmHWM"])
            self.peak_tree_rss = max(self.peak_tree_rss, total)
            return
        total = 0
        for pid in _descendants_proc(self.root):
            status = _proc_status_kib(pid)
            total += status.get("VmRSS", 0)
            if "VmHWM" in status:
                self.hwm[pid] = max(self.hwm.get(pid, 0), status["VmHWM"])
        self.peak_tree_rss = max(self.peak_tree_rss, total)


# -- one launch ------------------------------------------------------------------------------------


def esper_executable() -> str:
    candidate = Path(sys.executable).parent / "esper"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("esper")
    if found is None:
        raise SystemExit("cannot find the `esper` command next to this Python or on PATH")
    return found


def launch(args, extra: list[str], output_dir: Path, log_path: Path) -> dict:
    """Run `esper run` once, polling its events.jsonl and its process tree's memory until it exits
    (or, with --first-epoch-only, until the first EPOCH_COMPLETED, then stop it with SIGTERM)."""
    command = [esper_executable(), "run", args.config, "-s", f'run.output_dir="{output_dir}"']
    child_env = dict(os.environ)
    env_note = []
    for override in [*args.set, *extra]:
        if override.startswith("env:"):  # an environment variable for the run, e.g. env:OMP_WAIT_POLICY=PASSIVE
            name, _, value = override[4:].partition("=")
            child_env[name] = value
            env_note.append(f"{name}={value}")
        else:
            command += ["-s", override]
    seen: dict[str, float] = {}
    events_path: Path | None = None
    offset = 0
    pending = ""
    stopped = False
    with open(log_path, "w") as log:
        wall_launch = time.time()
        t_launch = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=c.REPO, env=child_env)
        memory = TreeMemory(proc.pid)
        while True:
            finished = proc.poll() is not None
            memory.poll()
            now = time.perf_counter() - t_launch
            if events_path is None:
                found = sorted(output_dir.glob("*/events.jsonl"))
                if found:
                    events_path = found[0]
                    seen.setdefault("events_file", now)
            if events_path is not None and "EPOCH_COMPLETED" not in seen:
                with open(events_path) as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                    offset = handle.tell()
                pending += chunk
                lines = pending.split("\n")
                pending = lines.pop()  # an incomplete last line waits for the next poll
                for line in lines:
                    if line.strip():
                        seen.setdefault(json.loads(line)["event"], now)
            if finished:
                break
            if args.first_epoch_only and "EPOCH_COMPLETED" in seen:
                proc.terminate()  # our own child, by pid
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                stopped = True
                break
            time.sleep(args.poll)
        t_exit = time.perf_counter() - t_launch
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 and not stopped:
        raise SystemExit(f"`{' '.join(command)}` exited with {proc.returncode}; see {log_path}:\n"
                         + log_path.read_text()[-3000:])
    if events_path is None:
        raise SystemExit(f"`{' '.join(command)}` wrote no events.jsonl; see {log_path}")

    records = []
    for line in events_path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by SIGTERM
            continue
    epochs = [r for r in records if r["event"] == "EPOCH_COMPLETED"]
    started = next(r for r in records if r["event"] == "RUN_STARTED")
    first_epoch = epochs[0]
    first_epoch_all = [r for r in epochs if (r["data"]["round"], r["data"]["epoch"]) == (0, 0)]
    result = {
        "command": " ".join([*env_note, *command]),
        "variant": " ".join(extra) or "base",
        "first_epoch_completed_polled_s": seen.get("EPOCH_COMPLETED"),
        "first_epoch_completed_stamp_s": first_epoch["time"] - wall_launch,
        "run_started_stamp_s": started["time"] - wall_launch,
        "epoch0_train_seconds": sum(r["data"]["train_seconds"] for r in first_epoch_all),
        "epoch0_validate_seconds": sum(r["data"]["validate_seconds"] for r in first_epoch_all),
        "exit_s": t_exit,
        "stopped_after_first_epoch": stopped,
        "peak_tree_rss_mib": memory.peak_tree_rss / 1024,
        "sum_vmhwm_mib": sum(memory.hwm.values()) / 1024,
        "max_vmhwm_mib": max(memory.hwm.values(), default=0) / 1024,
        "processes_seen": len(memory.hwm),
        "ru_maxrss_children_mib": usage.ru_maxrss / 1024,
        "memory_method": memory.method,
        "run_dir": str(events_path.parent),
    }
    if stopped:
        return result
    finished_record = next(r for r in records if r["event"] == "RUN_FINISHED")
    epoch_ends: dict[tuple[int, int], float] = {}
    for r in epochs:  # one EPOCH_COMPLETED per environment; an epoch ends with its last one
        key = (r["data"]["round"], r["data"]["epoch"])
        epoch_ends[key] = max(epoch_ends.get(key, 0.0), r["time"])
    epoch_times = sorted(epoch_ends.values())
    result.update({
        "env_epochs": len(epochs),
        "episode_epochs": len(epoch_ends),
        "run_wall_s": finished_record["data"]["wall_seconds"],
        "run_span_s": finished_record["time"] - started["time"],
        "run_finished_stamp_s": finished_record["time"] - wall_launch,
        "epoch_interval_median_s": statistics.median(b - a for a, b in zip(epoch_times, epoch_times[1:]))
        if len(epoch_times) > 1 else None,
        "train_seconds_sum": sum(r["data"]["train_seconds"] for r in epochs),
        "validate_seconds_sum": sum(r["data"]["validate_seconds"] for r in epochs),
        "status": finished_record["data"]["status"],
    })
    return result


def report(index: int, total: int, result: dict, keep: bool) -> None:
    print(f"\n-- launch {index}/{total}: {result['command']}")
    print(f"   launch -> RUN_STARTED event:          {result['run_started_stamp_s']:.2f} s  "
          f"(interpreter, imports, plugin discovery, config, task build, probe host)")
    print(f"   launch -> first EPOCH_COMPLETED:      {result['first_epoch_completed_stamp_s']:.2f} s by its event "
          f"timestamp, {result['first_epoch_completed_polled_s']:.2f} s seen by the poller   "
          f"{c.verdict(result['first_epoch_completed_stamp_s'], TARGET_FIRST_EPOCH, at_most=True)}")
    print(f"   of which epoch 0 itself: train_seconds {result['epoch0_train_seconds']:.2f} s + validate_seconds "
          f"{result['epoch0_validate_seconds']:.2f} s (summed over envs); the rest of RUN_STARTED -> epoch 0 is "
          f"building envs and optimizers, data gather/augment")
    if result["stopped_after_first_epoch"]:
        print(f"   stopped with SIGTERM after the first EPOCH_COMPLETED ({result['exit_s']:.2f} s)")
    else:
        print(f"   launch -> RUN_FINISHED event:         {result['run_finished_stamp_s']:.2f} s; process exit "
              f"{result['exit_s']:.2f} s (status {result['status']})")
        print(f"   host epochs: {result['episode_epochs']} epochs x envs = {result['env_epochs']} host epochs; "
              f"{result['env_epochs'] / result['exit_s']:.3f} host epochs/s launch to exit, "
              f"{result['env_epochs'] / result['run_span_s']:.3f} RUN_STARTED to RUN_FINISHED; "
              f"median time between epoch ends (all envs) {result['epoch_interval_median_s'] or float('nan'):.2f} s")
        print(f"   in-epoch time (sum over host epochs): train_seconds {result['train_seconds_sum']:.1f} s, "
              f"validate_seconds {result['validate_seconds_sum']:.1f} s")
    print(f"   peak memory ({result['memory_method']}, {result['processes_seen']} process(es) seen): "
          f"polled tree RSS peak {result['peak_tree_rss_mib']:.0f} MiB, sum of VmHWM {result['sum_vmhwm_mib']:.0f} MiB; "
          f"getrusage(RUSAGE_CHILDREN).ru_maxrss {result['ru_maxrss_children_mib']:.0f} MiB (largest child so far)")
    if keep:
        print(f"   kept: {result['run_dir']}")


def time_command(command: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=c.REPO)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = c.base_parser(__doc__, default_threads=None)
    parser.add_argument("--config", default="examples/quickstart.toml", help="run config (default examples/quickstart.toml)")
    parser.add_argument("-s", "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="passed to `esper run -s` (e.g. -s run.torch_threads=1), or env:NAME=VALUE to set an "
                             "environment variable for the run; repeatable")
    parser.add_argument("--alternate", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="B variant (same syntax as --set): launches alternate between the base command and the "
                             "base plus these overrides, e.g. --alternate env:OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--repeats", type=int, default=1, help="launches per variant (default 1)")
    parser.add_argument("--first-epoch-only", action="store_true",
                        help="stop each run after its first EPOCH_COMPLETED (startup only; cheap to repeat)")
    parser.add_argument("--poll", type=float, default=0.02, help="poll interval in seconds (default 0.02)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip timing `import torch` and `esper plugins`")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (default: deleted)")
    args = parser.parse_args(argv)
    if Path(args.config).exists():  # relative to the caller's directory; the run itself starts in the repo root
        args.config = str(Path(args.config).resolve())
    args.set.insert(0, f"run.seed={args.seed}")
    if args.threads:
        args.set.append(f"run.torch_threads={args.threads}")
    if args.quick:
        args.set += ["run.episode_length=2", "task.train_size=256", "task.val_size=128"]
    env = c.print_environment("startup: `esper run` from launch to the first EPOCH_COMPLETED, epochs/s, peak memory")
    print("   (--threads here is passed to the run as run.torch_threads; this process does no torch work)")

    variants = [[]] + ([args.alternate] if args.alternate else [])
    runs = []
    total = args.repeats * len(variants)
    for index in range(args.repeats):
        order = variants if index % 2 == 0 else variants[::-1]
        for extra in order:
            output_dir = Path(tempfile.mkdtemp(prefix="esper-startup-"))
            result = launch(args, extra, output_dir, output_dir / "esper-run.log")
            runs.append(result)
            report(len(runs), total, result, args.keep)
            if not args.keep:
                shutil.rmtree(output_dir, ignore_errors=True)

    if total > 1:
        print(f"\n-- summary (median over launches per variant)")
        for extra in variants:
            name = " ".join(extra) or "base"
            mine = [r for r in runs if r["variant"] == name]
            first = statistics.median(r["first_epoch_completed_stamp_s"] for r in mine)
            line = (f"   {name:<28} launch -> first EPOCH_COMPLETED {first:.2f} s "
                    f"(range {min(r['first_epoch_completed_stamp_s'] for r in mine):.2f} .. "
                    f"{max(r['first_epoch_completed_stamp_s'] for r in mine):.2f}), RUN_STARTED "
                    f"{statistics.median(r['run_started_stamp_s'] for r in mine):.2f} s, "
                    f"peak VmHWM {max(r['max_vmhwm_mib'] for r in mine):.0f} MiB   "
                    f"{c.verdict(first, TARGET_FIRST_EPOCH, at_most=True)}")
            full = [r for r in mine if not r["stopped_after_first_epoch"]]
            if full:
                line += f"; {statistics.median(r['env_epochs'] / r['exit_s'] for r in full):.3f} host epochs/s"
            print(line)

    breakdown = {}
    if not args.no_breakdown:
        repeats = 3
        python = sys.executable
        commands = {
            "python -c 'import torch'": [python, "-c", "import torch"],
            "python -c 'import torch, sklearn.datasets, sklearn.model_selection'":
                [python, "-c", "import torch, sklearn.datasets, sklearn.model_selection"],
            "python -c 'import torch, torch._dynamo'": [python, "-c", "import torch, torch._dynamo"],
            "esper plugins --json": [esper_executable(), "plugins", "--json"],
        }
        times = {name: [] for name in commands}
        for _ in range(repeats):  # interleaved
            for name, command in commands.items():
                times[name].extend(time_command(command, 1))
        breakdown = times
        print(f"\n-- fixed costs inside the startup (median of {repeats} interleaved launches each)")
        for name, values in times.items():
            print(f"   {name:<70} {statistics.median(values):.2f} s")
        print("   (esper_vision.digits imports scikit-learn at module level; torch.optim's first optimizer imports "
              "torch._dynamo; `esper plugins` = imports + entry-point discovery)")

    c.write_json(args.json, {"environment": env, "args": {k: str(v) for k, v in vars(args).items()},
                             "launches": runs, "breakdown_seconds": breakdown})
    return 0


if __name__ == "__main__":
    sys.exit(main())
