"""--mode=eval: FID/KID/IS/precision-recall of a run's EMA params against its training set.

For each of config.eval.num_seeds seeds (eval.seed, eval.seed + 1, ...) it draws
config.eval.num_samples images with config.sampling's sampler, sharded over all devices, and
scores them (diffjax.evaluation.evaluator). The reported metrics are those of the seed with the
lowest FID (eval.aggregate='min') or the mean over seeds ('mean'); every seed's values are kept.
Writes WORKDIR/eval/<name>.json and returns the result.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from diffjax import generate
from diffjax.evaluation.evaluator import Evaluator
from diffjax.sample import restore_state
from diffjax.train import Experiment

AGGREGATES = ("min", "mean")


def aggregate(per_seed: list[dict], how: str) -> dict:
    """The row with the lowest FID ('min') or the mean of every numeric field ('mean')."""
    if how == "min":
        return dict(min(per_seed, key=lambda r: r["fid"]))
    if how == "mean":
        keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and k != "seed"]
        return {k: float(np.mean([r[k] for r in per_seed])) for k in keys}
    raise ValueError(f"config.eval.aggregate={how!r} is unknown; allowed: {', '.join(AGGREGATES)}")


def evaluate_workdir(config, workdir: str) -> dict:
    """Evaluates the newest checkpoint of `workdir`; writes and returns the result dict."""
    ev, s = config.eval, config.sampling
    exp = Experiment(config, workdir, load_data=False)
    state, step = restore_state(exp, workdir)
    gen = generate.Generator(
        exp.model, exp.schedule, config, exp.mesh, exp.image_shape, exp.num_classes
    )
    evaluator = Evaluator(config, exp.mesh)
    start = time.time()
    reference = evaluator.describe()
    seconds_reference = time.time() - start
    seeds = [ev.seed + i for i in range(ev.num_seeds)]
    per_seed = []
    for seed in seeds:
        batches = gen.iter_samples(state.ema_params, ev.num_samples, seed=seed)
        per_seed.append({"seed": seed, **evaluator.score(batches), "nfe": gen.nfe})
        _log(
            f"step {step} seed {seed}: "
            + ", ".join(f"{k}={v:.5g}" for k, v in per_seed[-1].items() if k in METRIC_KEYS)
        )
    result = {
        "step": int(step),
        "sampler": s.sampler,
        "num_steps": s.num_steps,
        "nfe": gen.nfe,
        "num_samples": ev.num_samples,
        "seeds": seeds,
        "aggregate": ev.aggregate,
        **{k: v for k, v in aggregate(per_seed, ev.aggregate).items() if k != "seed"},
        "per_seed": per_seed,
        **reference,
        "seconds_reference_statistics": seconds_reference,
        "devices": exp.mesh.devices.size,
        "sampling_config": s.to_dict(),
    }
    name = (
        f"eval_step{step}_{s.sampler}{s.num_steps}_n{ev.num_samples}_seeds"
        f"{seeds[0]}-{seeds[-1]}_{ev.aggregate}.json"
    )
    path = os.path.join(exp.workdir, "eval", name)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        summary = ", ".join(f"{k}={result[k]:.5g}" for k in METRIC_KEYS if k in result)
        _log(
            f"step {step}, {s.sampler} {gen.nfe} NFE, {ev.num_samples} samples x {len(seeds)} "
            f"seed(s), {ev.aggregate}: {summary}\nwrote {path}"
        )
    result["path"] = path
    return result


METRIC_KEYS = ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall")


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)
