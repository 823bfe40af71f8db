"""Mutation check of the known-fault guards: re-introduce each fault and show that its guard tests fail.

For every mutation in ``tests/test_design_guards.py``'s ``MUTATIONS`` this runs that file's guard tests
for the mutation in a fresh pytest process with ``ESPER_MUTATION=<name>`` (the test module monkeypatches
the fault in; the working tree is never modified). A mutation is caught when each of its guard tests,
on each host it applies to, fails on an assertion; a test that passes (the fault survives) or fails on
another exception (the mutation no longer fits the code) is not. First the guard tests must pass without
any mutation. Prints the table fault -> guard test -> caught and exits 1 if any mutation is not caught.

    .venv/bin/python tests/mutation_check.py [--only NAME ...] [--no-baseline]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_design_guards import MUTATION_ENV, MUTATIONS  # noqa: E402  (needs the repository on the path)

TEST_FILE = "tests/test_design_guards.py"
#: one mutated run of the guard tests; far above what it takes on two busy cores
RUN_TIMEOUT_S = 600


def node_ids(names: list[str]) -> list[str]:
    """pytest node ids of the guard tests ``(test name, host)`` pairs."""
    return [f"{TEST_FILE}::{test}[{host}]" for test, host in names]


def run_tests(pairs: list[tuple[str, str]], mutation: str | None) -> dict[tuple[str, str], tuple[str, str]]:
    """Run the tests of ``pairs`` (with ``mutation`` applied); (test, host) -> (outcome, first message line)."""
    env = {key: value for key, value in os.environ.items() if key != MUTATION_ENV}
    if mutation is not None:
        env[MUTATION_ENV] = mutation
    with tempfile.TemporaryDirectory(prefix="esper-mutation-") as scratch:
        junit = Path(scratch) / "junit.xml"
        command = [
            sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
            f"--junitxml={junit}", f"--basetemp={Path(scratch) / 'tmp'}", *node_ids(pairs),
        ]
        completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        if not junit.exists():
            raise SystemExit(f"pytest wrote no report for mutation {mutation}:\n{completed.stdout}\n{completed.stderr}")
        outcomes = {}
        for case in ET.parse(junit).getroot().iter("testcase"):
            test, _, host = case.attrib["name"].partition("[")
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome, message = child.tag, (child.attrib.get("message") or "").strip().splitlines()[:1]
                    message = message[0] if message else ""
                    break
            outcomes[test, host.rstrip("]")] = (outcome, message)
    missing = [pair for pair in pairs if pair not in outcomes]
    if missing:
        raise SystemExit(f"tests not run for mutation {mutation}: {missing}\n{completed.stdout}\n{completed.stderr}")
    return outcomes


def caught(outcome: str, message: str) -> bool:
    """Failed on an assertion (not a crash of the mutated code, a skip or a setup error)."""
    return outcome == "failure" and (message.startswith("AssertionError") or message.startswith("assert"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(MUTATIONS), help="check only these mutations")
    parser.add_argument("--why", action="store_true", help="also print each failing test's first message line")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unmutated run of the guard tests (the test suite runs them itself)")
    args = parser.parse_args(argv)
    names = args.only or list(MUTATIONS)
    guards = {name: [(test, host) for test in MUTATIONS[name].tests for host in MUTATIONS[name].hosts] for name in names}

    if not args.no_baseline:
        everything = sorted({pair for pairs in guards.values() for pair in pairs})
        baseline = run_tests(everything, None)
        broken = [f"{test}[{host}]: {outcome} {message}" for (test, host), (outcome, message) in baseline.items()
                  if outcome != "passed"]
        if broken:
            print("the guard tests must pass without a mutation first:\n  " + "\n  ".join(broken))
            return 1

    rows = []
    for name in names:
        outcomes = run_tests(guards[name], name)
        for test, host in guards[name]:
            outcome, message = outcomes[test, host]
            verdict = "yes" if caught(outcome, message) else f"NO ({outcome}{': ' + message if message else ''})"
            rows.append((name, MUTATIONS[name].fault, f"{test}[{host}]", verdict, message))
        print(f"checked {name}", file=sys.stderr, flush=True)

    headers = ("mutation", "fault re-introduced", "guard test", "caught")
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(3)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " | caught")
    print("-|-".join("-" * w for w in widths) + "-|-------")
    for row in rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + f" | {row[3]}")
    if args.why:
        print("\nwhy each guard test failed:")
        for row in rows:
            print(f"  {row[0]} / {row[2]}: {row[4]}")
    survivors = sorted({row[0] for row in rows if row[3] != "yes"})
    print(f"\n{len(names) - len(survivors)} of {len(names)} mutations caught" +
          (f"; not caught: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
