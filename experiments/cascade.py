"""A two-stage cascade on the embedded digits against the single-stage main job at the same total
steps and at about the same training time: FID/KID, copy rate and digit classes at the final
28x28 resolution, and wall time.

    python -m experiments.cascade [--num_samples 2000] [--base_steps 2200]
                                  [--baseline EVAL_JSON | WORKDIR]

Trains configs/mnist_cascade_base.py (14x14, 550 steps) and configs/mnist_cascade_sr.py
(14 -> 28, 550 steps) through launch.py into runs/ (a rerun resumes or skips them) and scores
the cascade (--mode=eval with config.sampling.cascade); then again with the base trained for
--base_steps (runs/mnist_cascade_base_long), about the single stage's training time in all.
Each is scored as `bash run.sh train` scores the main job (configs/default.py, 1,100 steps):
DDPM 100 steps per stage, num_samples samples against the 5,000 embedded digits. The baseline
is the main job's committed eval JSON by default, or a trained workdir to score here. Writes
experiments/results/cascade/results.json and table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "experiments", "results", "cascade")
BASE, SR = os.path.join(ROOT, "runs", "mnist_cascade_base"), os.path.join(ROOT, "runs",
                                                                          "mnist_cascade_sr")
BASE_LONG = os.path.join(ROOT, "runs", "mnist_cascade_base_long")
MAIN_JOB = os.path.join(ROOT, "experiments", "results", "mnist_main_job", "main_job")
MAIN_JOB_EVAL = os.path.join(MAIN_JOB, "eval_step1100_ddpm100_n2000_seeds0-0_min.json")
METRICS = ("fid", "kid", "copy_rate", "digit_classes")  # run.sh's final evaluation


def main_job_training_seconds() -> float | None:
    """The training time run.sh recorded with the committed main-job eval, if any."""
    path = os.path.join(MAIN_JOB, "run_sh_times.txt")
    if not os.path.exists(path):
        return None
    for line in open(path):
        if line.startswith("training:"):
            return float(line.split()[1])
    return None


def train(config: str, workdir: str, *flags: str) -> float:
    start = time.time()
    subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                    os.path.join(ROOT, "configs", config), "--workdir", workdir, *flags],
                   check=True, cwd=ROOT)
    return time.time() - start


def summary(result: dict) -> dict:
    """An eval result without its per-seed rows and sampling config, as results.json keeps it."""
    return {k: v for k, v in result.items() if k not in ("per_seed", "sampling_config")}


def evaluate(workdir: str, overrides: dict) -> dict:
    from diffjax.modes.evaluate import evaluate_workdir
    from experiments.autoguidance import experiment

    return evaluate_workdir(experiment(workdir, overrides))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--base_steps", type=int, default=2200,
                        help="the longer base's steps, about the single stage's wall time with "
                             "the SR stage's (0: skip that arm)")
    parser.add_argument("--baseline", default=MAIN_JOB_EVAL,
                        help="the single stage: an eval JSON, or a trained workdir to score")
    args = parser.parse_args(argv)
    from_json = args.baseline.endswith(".json")
    if from_json and not os.path.isfile(args.baseline):
        parser.error(f"--baseline {args.baseline!r} does not exist")
    if not from_json and not os.path.isfile(os.path.join(args.baseline, "config.json")):
        parser.error(f"--baseline {args.baseline!r} is neither an eval JSON nor a trained "
                     f"workdir (no config.json): train it first (bash run.sh train)")
    os.makedirs(OUT_DIR, exist_ok=True)
    record = os.path.join(OUT_DIR, "results.json")
    rows = json.load(open(record)) if os.path.exists(record) else {}
    common = {"eval.num_samples": args.num_samples, "eval.metrics": METRICS,
              "data.split": "train"}  # the reference: all 5,000 digits
    if "cascade" not in rows:
        seconds = {"base": train("mnist_cascade_base.py", BASE),
                   "sr": train("mnist_cascade_sr.py", SR)}
        result = evaluate(SR, {**common, "sampling.cascade": (BASE,)})
        rows["cascade"] = {"train_seconds": seconds, "result": summary(result)}
        json.dump(rows, open(record, "w"), indent=2, default=str)
    if args.base_steps and "cascade_long" not in rows:
        steps = [f"--config.training.{key}={args.base_steps}"
                 for key in ("num_steps", "checkpoint_every_steps")]
        train("mnist_cascade_sr.py", SR)  # resumes or skips; its time is the first arm's
        seconds = {"base": train("mnist_cascade_base.py", BASE_LONG, *steps),
                   "sr": rows["cascade"]["train_seconds"]["sr"]}
        result = evaluate(SR, {**common, "sampling.cascade": (BASE_LONG,)})
        rows["cascade_long"] = {"train_seconds": seconds, "base_steps": args.base_steps,
                                "result": summary(result)}
        json.dump(rows, open(record, "w"), indent=2, default=str)
    if "single" not in rows:
        if from_json:
            result = json.load(open(args.baseline))
            rows["single"] = {"source": os.path.relpath(args.baseline, ROOT),
                              "train_seconds": main_job_training_seconds()}
        else:
            result = evaluate(args.baseline, common)
            rows["single"] = {"source": os.path.relpath(args.baseline, ROOT),
                              "train_seconds": None}
        if result["num_samples"] != args.num_samples:
            parser.error(f"--baseline {args.baseline!r} scored {result['num_samples']} samples, "
                         f"not --num_samples {args.num_samples}")
        rows["single"]["result"] = summary(result)
        json.dump(rows, open(record, "w"), indent=2, default=str)
    from diffjax import config_lib

    steps = {name: config_lib.load_config_file(os.path.join(ROOT, "configs", name))
             .training.num_steps for name in ("mnist_cascade_base.py", "mnist_cascade_sr.py")}
    c, s = rows["cascade"], rows["single"]
    lines = [f"Embedded digits, 28x28, {args.num_samples} samples against the 5,000 digits, "
             f"DDPM 100 steps per stage, the main job's recipe (configs/default.py: cosine, v, "
             f"batch 32, EMA 0.999, all 5,000 digits). Reproduce: `python -m experiments.cascade "
             f"--num_samples {args.num_samples}`.", "",
             "| model | training steps | FID | KID | copy rate | classes | NFE | sampling (s) "
             "| training (s) |", "|---|---|---|---|---|---|---|---|---|"]

    def row(name, steps_text, r, train_text):
        return (f"| {name} | {steps_text} | {r['fid']:.2f} | {r['kid_mean']:.4f} | "
                f"{r.get('copy_rate', float('nan')):.4f} | {r.get('classes_present', '-')} | "
                f"{r['nfe']} | {r['sampling_seconds']:.0f} | {train_text} |")

    base_steps, sr_steps = steps["mnist_cascade_base.py"], steps["mnist_cascade_sr.py"]
    lines.append(row("cascade 14x14 + 14->28", f"{base_steps} + {sr_steps}", c["result"],
                     f"{c['train_seconds']['base']:.0f} + {c['train_seconds']['sr']:.0f}"))
    if "cascade_long" in rows:
        c = rows["cascade_long"]
        lines.append(row("cascade, longer base (cascade_long; about the single stage's time)",
                         f"{c['base_steps']} + {sr_steps}", c["result"],
                         f"{c['train_seconds']['base']:.0f} + {c['train_seconds']['sr']:.0f}"))
    main_job = s["source"] == os.path.relpath(MAIN_JOB_EVAL, ROOT)
    lines.append(row("single stage 28x28, " + ("the main job (`configs/default.py`)" if main_job
                                               else f"`{s['source']}`"),
                     str(s["result"]["step"]),
                     s["result"], "-" if s["train_seconds"] is None
                     else f"{s['train_seconds']:.0f}"))
    notes = [f"{name}: {r['note']}" for name, r in rows.items() if r.get("note")]
    lines += [""] + notes if notes else []
    with open(os.path.join(OUT_DIR, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
