#!/usr/bin/env python3
"""Pools the rounds of several bench/fs.sh runs and judges the goals of bench/goals on them.

    bench/pool.py RUN.log [RUN.log ...]

Each RUN.log is what bench/fs.sh printed on stderr (one line per measurement, "[hh:mm:ss] fs:
description (round/rounds): value"). On this host one run's medians still move by more than the
10% the goals leave (bench/RESULTS.md, runs 30-32), and each run misses a different row; pooling
the rounds of several runs of the same build gives each median more samples. Prints, per test,
the pooled median of every filesystem, then every ratio that has a goal in bench/goals (the
goals fs.sh judges by), each ratio also per run, so a pooled verdict can be checked against
the runs.
"""
import os
import re
import statistics
import sys

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] ([\w-]+): (.+) \((\d+)/(\d+)\): ([\d.]+)$")
# fs.sh's descriptions, by their fixed beginnings.
TESTS = [
    ("seq-write-nosync", re.compile(r"sequential write \(.*\), no fsync$")),
    ("seq-write", re.compile(r"sequential write \(.*\), fsync at the end$")),
    ("seq-read", re.compile(r"sequential read, cold$")),
    ("rand-read", re.compile(r"random 4 KiB reads ")),
    ("rand-write", re.compile(r"random 4 KiB writes ")),
    ("create", re.compile(r"creating \d+ files ")),
]
GOALS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goals")


def read_goals(path=GOALS_FILE):
    """{(subject, anchor, test): least ratio} from bench/goals, the file fs.sh judges by too."""
    tests = [t for t, _ in TESTS]
    goals = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            try:
                subject, anchor, test, least = words
                least = float(least)
            except ValueError:
                sys.exit(f"{path}:{n}: want 'subject anchor test least': {line.strip()}")
            if test != "*" and test not in tests:
                sys.exit(f"{path}:{n}: unknown test {test}")
            for t in tests if test == "*" else [test]:
                goals[(subject, anchor, t)] = least
    return goals


def parse(path):
    """{(test, fs): [values]} of one run's log."""
    values = {}
    with open(path, encoding="utf-8") as log:
        for line in log:
            m = LINE.match(line.strip())
            if not m:
                continue
            fs, desc, value = m.group(1), m.group(2), float(m.group(5))
            test = next((t for t, pattern in TESTS if pattern.search(desc)), None)
            if test is None:
                sys.exit(f"{path}: unknown measurement: {line.strip()}")
            values.setdefault((test, fs), []).append(value)
    if not values:
        sys.exit(f"{path}: no measurements (is it bench/fs.sh's stderr?)")
    return values


def main(paths):
    if not paths:
        sys.exit(__doc__)
    runs = [parse(p) for p in paths]
    pooled = {}
    for run in runs:
        for key, vals in run.items():
            pooled.setdefault(key, []).extend(vals)
    filesystems = sorted({fs for _, fs in pooled}, key=lambda f: (f != "cowcrypt-enc", f))
    median = lambda vals: statistics.median(vals) if vals else None  # noqa: E731
    print(f"rounds of {len(runs)} run(s): " + ", ".join(paths))
    print()
    print("| test | " + " | ".join(f"{fs} (n)" for fs in filesystems) + " |")
    print("|---|" + "---:|" * len(filesystems))
    for test, _ in TESTS:
        cells = []
        for fs in filesystems:
            vals = pooled.get((test, fs), [])
            cells.append(f"{median(vals):.1f} ({len(vals)})" if vals else "-")
        print(f"| {test} | " + " | ".join(cells) + " |")
    print()
    print("| test | ratio | pooled | goal | per run |")
    print("|---|---|---:|---|---|")
    missed = 0
    for (subject, anchor, test), goal in read_goals().items():
        top, base = pooled.get((test, subject)), pooled.get((test, anchor))
        if not top or not base:
            continue
        ratio = median(top) / median(base)
        per_run = []
        for run in runs:
            t, b = run.get((test, subject)), run.get((test, anchor))
            per_run.append(f"{median(t) / median(b):.2f}" if t and b else "-")
        verdict = "met" if ratio >= goal else "MISSED"
        missed += verdict == "MISSED"
        print(f"| {test} | {subject}/{anchor} | {ratio:.2f} | {verdict} (>= {goal}) "
              f"| {', '.join(per_run)} |")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
