"""How many network evaluations each deterministic sampler needs on a trained run.

    python -m experiments.sampler_convergence runs/default [--num-samples 64] [--out DIR]

Every deterministic sampler starts from the same noise (seed 0), so its samples can be compared
pixel by pixel with the probability-flow ODE solved tightly (`ode`, tsit5, rtol = atol = 1e-5).
For each sampler and step count this writes the RMSE of the uint8 samples to that reference, in
units of the [0, 1] pixel range, the NFE per sample, and the sampling throughput (compilation
excluded), to DIR/table.md (default experiments/results/sampler_convergence/). The smallest NFE
whose RMSE is at most CONVERGED (2%, about 5 grey levels) is the sampler's converged NFE.
Stochastic samplers (ddpm, pc, eta > 0) draw other images from the same noise and are scored by
FID instead (experiments/sweeps/mnist_few_step.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERGED = 0.02
# (sampler, spacing): the README's sampler table; every one at each of STEPS grid times.
SAMPLERS = (("ddim", "uniform"), ("euler", "karras"), ("heun", "karras"),
            ("dpmpp_2m", "uniform"), ("dpmpp_2m", "karras"), ("dpmpp_3m", "karras"))
STEPS = (5, 10, 20, 50)
REFERENCE = {"sampling.sampler": "ode", "sampling.ode.rtol": 1e-5, "sampling.ode.atol": 1e-5}


def run_config(saved: dict, overrides: dict):
    """configs/default.py with a run's saved config (its config.json) and `overrides` (dotted
    keys) on top, as launch.py reads a workdir."""
    from diffjax import config_lib

    base = config_lib.load_config_file(os.path.join(ROOT, "configs", "default.py"))
    config = config_lib.merge_saved(base, saved, set())
    for key, value in overrides.items():
        config_lib.set_field(config, key, value)
    return config


def draw(exp, params, num_samples: int):
    """(uint8 images [N,H,W,C], NFE per sample, samples/s) of `params` sampled as the Experiment
    `exp` says, compilation excluded."""
    gen = exp.generator()
    gen.compile(params)
    start = time.perf_counter()
    images, nfe = gen.sample(params, num_samples, seed=0)
    return np.asarray(images), nfe, num_samples / (time.perf_counter() - start)


def rmse(images, reference) -> float:
    """Root-mean-square difference of two uint8 image sets, in units of the [0, 1] range."""
    diff = images.astype(np.float64) - reference.astype(np.float64)
    return float(np.sqrt(np.mean(diff ** 2)) / 255.0)


def converged_nfe(rows) -> int | None:
    """The smallest NFE among rows [(nfe, rmse, ...)] with rmse <= CONVERGED, else None."""
    good = [nfe for nfe, error, *_ in rows if error <= CONVERGED]
    return min(good) if good else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                                      "sampler_convergence"))
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.workdir, "config.json")):
        parser.error(f"workdir {args.workdir!r} has no config.json: train it first")
    from diffjax import restore
    from diffjax.experiment import Experiment

    with open(os.path.join(args.workdir, "config.json")) as f:
        saved = json.load(f)

    def experiment(overrides):
        return Experiment(run_config(saved, overrides), args.workdir, load_data=False)

    reference_exp = experiment(REFERENCE)
    # The run's EMA params, the same tree for every sampler setting: restored once.
    params, _ = restore.sampling_params(reference_exp, args.workdir)
    reference, ref_nfe, ref_rate = draw(reference_exp, params, args.num_samples)
    print(f"reference ode rtol 1e-5: {ref_nfe} NFE, {ref_rate:.2f} samples/s", flush=True)
    lines = [f"Run `{os.path.relpath(os.path.abspath(args.workdir), ROOT)}`, "
             f"{args.num_samples} samples (seed 0) against the ODE at rtol = atol = 1e-5 "
             f"({ref_nfe} NFE). RMSE in units of the [0, 1] pixel range; converged: RMSE <= "
             f"{CONVERGED}. Reproduce: `python -m experiments.sampler_convergence "
             f"{args.workdir} --num-samples {args.num_samples}`.", "",
             "| sampler (spacing) | " + " | ".join(f"{k} steps: NFE, RMSE" for k in STEPS)
             + " | converged NFE | samples/s there |",
             "|---|" + "---|" * (len(STEPS) + 2)]
    for sampler, spacing in SAMPLERS:
        rows = []
        for steps in STEPS:
            images, nfe, rate = draw(experiment({"sampling.sampler": sampler,
                                                 "sampling.spacing": spacing,
                                                 "sampling.num_steps": steps}),
                                     params, args.num_samples)
            rows.append((nfe, rmse(images, reference), rate))
            print(f"{sampler} ({spacing}) {steps} steps: {nfe} NFE, RMSE {rows[-1][1]:.4f}, "
                  f"{rate:.2f} samples/s", flush=True)
        best = converged_nfe(rows)
        rate = next((r for nfe, _, r in rows if nfe == best), None)
        lines.append(f"| `{sampler}` ({spacing}) | "
                     + " | ".join(f"{nfe}, {error:.4f}" for nfe, error, _ in rows)
                     + f" | {best if best else f'> {rows[-1][0]}'} | "
                     + (f"{rate:.1f}" if rate else "-") + " |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
