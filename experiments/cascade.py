"""A two-stage cascade on the embedded digits against the single-stage model at the same total
steps: FID/KID at the final 28x28 resolution and wall time.

    python -m experiments.cascade [--num_samples 1000] [--baseline runs/mnist_phema]

Trains configs/mnist_cascade_base.py (14x14, 800 steps) and configs/mnist_cascade_sr.py
(14 -> 28, 800 steps) through launch.py into runs/ (a rerun resumes or skips them), then scores
the cascade (--mode=eval with config.sampling.cascade) and the baseline run (configs/
mnist_phema.py, 1,600 steps; train it first) with the same sampler (DDPM, 100 steps per stage),
num_samples samples against the 5,000 embedded digits. Writes experiments/results/cascade/
results.json and table.md.
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


def train(config: str, workdir: str) -> float:
    start = time.time()
    subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                    os.path.join(ROOT, "configs", config), "--workdir", workdir], check=True,
                   cwd=ROOT)
    return time.time() - start


def evaluate(workdir: str, overrides: dict) -> dict:
    from diffjax.modes.evaluate import evaluate_workdir
    from experiments.autoguidance import experiment

    return evaluate_workdir(experiment(workdir, overrides))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--baseline", default=os.path.join(ROOT, "runs", "mnist_phema"))
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.baseline, "config.json")):
        parser.error(f"--baseline {args.baseline!r} has no config.json: train it first "
                     f"(python launch.py --config configs/mnist_phema.py --workdir ...)")
    os.makedirs(OUT_DIR, exist_ok=True)
    record = os.path.join(OUT_DIR, "results.json")
    rows = json.load(open(record)) if os.path.exists(record) else {}
    common = {"eval.num_samples": args.num_samples, "eval.metrics": ("fid", "kid"),
              "data.split": "train"}  # the reference: all 5,000 digits
    if "cascade" not in rows:
        seconds = {"base": train("mnist_cascade_base.py", BASE),
                   "sr": train("mnist_cascade_sr.py", SR)}
        result = evaluate(SR, {**common, "sampling.cascade": (BASE,)})
        rows["cascade"] = {"train_seconds": seconds, "result": {
            k: v for k, v in result.items() if k not in ("per_seed", "sampling_config")}}
        json.dump(rows, open(record, "w"), indent=2, default=str)
    if "single" not in rows:
        result = evaluate(args.baseline, common)
        rows["single"] = {"result": {k: v for k, v in result.items()
                                     if k not in ("per_seed", "sampling_config")}}
        json.dump(rows, open(record, "w"), indent=2, default=str)
    lines = [f"Embedded digits, 28x28, {args.num_samples} samples against the 5,000 digits, "
             f"DDPM 100 steps per stage, EDM2 power EMA sigma_rel 0.05, train[:90%]. "
             f"Reproduce: `python -m experiments.cascade --num_samples {args.num_samples}`.", "",
             "| model | training steps | FID | KID | NFE | sampling (s) | training (s) |",
             "|---|---|---|---|---|---|---|"]
    c, s = rows["cascade"], rows["single"]
    lines.append(f"| cascade 14x14 + 14->28 | 800 + 800 | {c['result']['fid']:.2f} | "
                 f"{c['result']['kid_mean']:.4f} | {c['result']['nfe']} | "
                 f"{c['result']['sampling_seconds']:.0f} | "
                 f"{c['train_seconds']['base']:.0f} + {c['train_seconds']['sr']:.0f} |")
    lines.append(f"| single stage 28x28 (`{os.path.relpath(args.baseline, ROOT)}`) | 1600 | "
                 f"{s['result']['fid']:.2f} | {s['result']['kid_mean']:.4f} | "
                 f"{s['result']['nfe']} | {s['result']['sampling_seconds']:.0f} | "
                 f"see its log |")
    with open(os.path.join(OUT_DIR, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
