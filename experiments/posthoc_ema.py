"""FID against the EMA length, chosen after training (EDM2 Fig. 5), from one run's snapshots.

    python -m experiments.posthoc_ema runs/mnist_phema                  # the default widths
    python -m experiments.posthoc_ema runs/mnist_phema --sigma_rels 0.03 0.07 --num_samples 2000

The run must have trained with config.ema.name='power' and config.ema.snapshot_every > 0
(configs/mnist_phema.py). For each width it reconstructs the post-hoc EMA (as --mode=eval
--config.ema.sigma_rel=S does) and scores FID/KID of num_samples samples with the run's own
sampler against the 5,000 embedded digits. Each finished row is kept in
experiments/results/posthoc_ema/results.json, so a rerun scores only what is missing; the
table is written to table.md beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "experiments", "results", "posthoc_ema")
SIGMA_RELS = (0.03, 0.05, 0.07, 0.10, 0.15, 0.20)


def table(rows: list[dict]) -> str:
    """The markdown table of the recorded rows, by width."""
    lines = ["| sigma_rel | FID | KID | snapshots used | profile error | sampling + FID (s) |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["sigma_rel"]):
        lines.append(f"| {r['sigma_rel']:.3f} | {r['fid']:.2f} | {r['kid']:.4f} | "
                     f"{r['snapshots']} | {r['profile_error']:.1e} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from experiments.sampler_convergence import run_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir")
    parser.add_argument("--sigma_rels", type=float, nargs="+", default=list(SIGMA_RELS))
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--out", default=OUT_DIR)
    args = parser.parse_args(argv)
    config_path = os.path.join(args.workdir, "config.json")
    if not os.path.exists(config_path):
        parser.error(f"workdir {args.workdir!r} has no config.json: train it first")
    with open(config_path) as f:
        saved = json.load(f)

    from diffjax import posthoc_ema
    from diffjax.experiment import Experiment
    from diffjax.modes.evaluate import evaluate_workdir

    os.makedirs(args.out, exist_ok=True)
    record = os.path.join(args.out, "results.json")
    rows = json.load(open(record)) if os.path.exists(record) else []
    for sigma_rel in args.sigma_rels:
        key = (round(sigma_rel, 6), args.num_samples)
        if any((round(r["sigma_rel"], 6), r["num_samples"]) == key for r in rows):
            continue
        # scored against all 5,000 digits, as the other tables (the run trained on 90%)
        overrides = {"ema.sigma_rel": sigma_rel, "eval.num_samples": args.num_samples,
                     "data.split": "train",
                     "eval.metrics": ("fid", "kid")}
        exp = Experiment(run_config(saved, overrides), args.workdir, load_data=False)
        start = time.time()
        result = evaluate_workdir(exp)
        recipe = posthoc_ema.plan(exp.workdir, sigma_rel)
        rows.append({"sigma_rel": sigma_rel, "num_samples": args.num_samples,
                     "fid": result["fid"], "kid": result["kid_mean"], "step": result["step"],
                     "snapshots": sum(1 for s in recipe["snapshots"] if s["coefficient"]),
                     "profile_error": recipe["profile_error"],
                     "seconds": time.time() - start - result["seconds_reference_statistics"],
                     "eval_file": os.path.relpath(result["path"], ROOT)})
        with open(record, "w") as f:
            json.dump(rows, f, indent=2)
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(table(rows))
        print(f"sigma_rel {sigma_rel:g}: FID {result['fid']:.2f}, KID {result['kid_mean']:.4f}",
              flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
