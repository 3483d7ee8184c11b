"""Runs a sweep: python -m experiments.run SWEEP.py [--print_commands] [--status].

Every point runs in turn on this machine through launch.py subprocesses: training (which resumes
a half-finished point), then `--mode=eval` with the sweep's EVAL settings. Each works in
RUNS_DIR/<sweep name>/<hash of its overrides> and logs to train.log / eval.log there. Finished
points are skipped (see experiments.sweep: final checkpoint committed, matching eval result), so
rerunning after an interruption or after adding points only runs what is missing.

--print_commands prints, instead, one shell line per point (train && eval) for a cluster.
--status prints each point's hash, overrides and state without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Callable

from experiments import sweep as sweep_lib

Executor = Callable[[list[str], str], int]  # (argv, log path) -> return code


def execute(argv: list[str], log_path: str) -> int:
    """Runs argv from the repo root, streaming its output to the console and to `log_path`."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        proc = subprocess.Popen(argv, cwd=sweep_lib.ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        return proc.wait()


def _record_time(point: sweep_lib.Point, key: str, seconds: float) -> None:
    path = os.path.join(point.workdir, sweep_lib.TIMES_FILE)
    times = {}
    if os.path.exists(path):
        with open(path) as f:
            times = json.load(f)
    times[key] = round(seconds, 1)
    with open(path, "w") as f:
        json.dump(times, f, indent=2)


def run_sweep(sweep: sweep_lib.Sweep, runs_dir: str, executor: Executor = execute,
              python: str = sys.executable) -> dict[str, list[str]]:
    """Trains and evaluates every unfinished point in order; returns {'trained': [hashes],
    'evaluated': [...], 'skipped': [...], 'failed': [...]}. A failed point is reported and the
    sweep goes on with the next one."""
    points = sweep_lib.expand(sweep, runs_dir)
    report: dict[str, list[str]] = {"trained": [], "evaluated": [], "skipped": [], "failed": []}
    ran_seconds, ran = 0.0, 0
    for i, point in enumerate(points, 1):
        if ran:
            eta = ran_seconds / ran * (len(points) - i + 1)
            print(f"sweep: {i - 1}/{len(points)} points done, ETA {eta / 60:.0f} min "
                  f"({ran_seconds / ran / 60:.1f} min per point run so far)", flush=True)
        state = sweep_lib.status(sweep, point)
        label = f"[{i}/{len(points)}] {point.hash} {point.varying}"
        if state["eval_path"]:
            print(f"{label}: finished ({os.path.relpath(state['eval_path'], sweep_lib.ROOT)})",
                  flush=True)
            report["skipped"].append(point.hash)
            continue
        sweep_lib.write_point_file(sweep, point)
        stages = [("evaluation", "eval", sweep_lib.eval_command, "evaluated")]
        if not state["trained"]:
            stages.insert(0, ("training", "train", sweep_lib.train_command, "trained"))
        point_start = time.time()
        for what, short, command, outcome in stages:
            print(f"{label}: {what} in {point.workdir}", flush=True)
            log = os.path.join(point.workdir, f"{short}.log")
            start = time.time()
            code = executor(command(sweep, point, python), log)
            _record_time(point, f"{short}_seconds", time.time() - start)
            if code != 0:
                print(f"{label}: {what} failed (exit {code}); see {log}", flush=True)
                report["failed"].append(point.hash)
                break
            report[outcome].append(point.hash)
        ran_seconds, ran = ran_seconds + time.time() - point_start, ran + 1
    return report


def print_commands(sweep: sweep_lib.Sweep, runs_dir: str, python: str = "python") -> list[str]:
    """One shell line per point, `train && eval`, to run from the repo root."""
    lines = [f"{shlex.join(sweep_lib.train_command(sweep, p, python))} && "
             f"{shlex.join(sweep_lib.eval_command(sweep, p, python))}"
             for p in sweep_lib.expand(sweep, runs_dir)]
    for line in lines:
        print(line)
    return lines


def print_status(sweep: sweep_lib.Sweep, runs_dir: str) -> None:
    for point in sweep_lib.expand(sweep, runs_dir):
        state = sweep_lib.status(sweep, point)
        what = ("finished" if state["eval_path"] else "trained, not evaluated" if state["trained"]
                else "to do")
        print(f"{point.hash}  {what:24s} {json.dumps(point.varying)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="the sweep file, e.g. experiments/sweeps/x.py")
    parser.add_argument("--runs_dir", default=os.path.join(sweep_lib.ROOT, "runs"),
                        help="where the sweep's workdirs go (default: runs/ in the repo)")
    parser.add_argument("--print_commands", action="store_true",
                        help="print one `train && eval` line per point instead of running")
    parser.add_argument("--status", action="store_true", help="print each point's state")
    parser.add_argument("--python", default=None,
                        help="interpreter in the commands (default: this one when running, "
                             "'python' when printing)")
    args = parser.parse_args(argv)
    try:
        sweep = sweep_lib.load_sweep(args.sweep)
        points = sweep_lib.expand(sweep, args.runs_dir)
        for point in points:  # every point's config must resolve before anything runs
            sweep_lib.expected_eval(sweep, point)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_commands:
        print_commands(sweep, args.runs_dir, args.python or "python")
        return 0
    if args.status:
        print_status(sweep, args.runs_dir)
        return 0
    start = time.time()
    report = run_sweep(sweep, args.runs_dir, python=args.python or sys.executable)
    print(f"sweep {sweep.name}: {len(points)} points; trained {len(report['trained'])}, "
          f"evaluated {len(report['evaluated'])}, already finished {len(report['skipped'])}, "
          f"failed {len(report['failed'])} ({', '.join(report['failed']) or 'none'}); "
          f"{time.time() - start:.0f} s. Tables: python -m experiments.table {args.sweep}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
