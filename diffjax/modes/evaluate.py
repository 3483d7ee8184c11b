"""--mode=eval: FID/KID/IS/precision-recall of a run's EMA params against its training set.

For each of config.eval.num_seeds seeds (eval.seed, eval.seed + 1, ...) it draws
config.eval.num_samples images with config.sampling's sampler, sharded over all devices, and
scores them (diffjax.evaluation.evaluator). The reported metrics are those of the seed with the
lowest FID (eval.aggregate='min') or the mean over seeds ('mean'); every seed's values are kept.
Writes WORKDIR/eval/<name>.json and returns the result.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Iterator

import jax
import numpy as np

from diffjax import progress, restore, writers
from diffjax.errors import ConfigError
from diffjax.evaluation.evaluator import Evaluator
from diffjax.experiment import Experiment
from diffjax.modes.sample import sampling_tag
from diffjax.settings import AGGREGATES


def aggregate(per_seed: list[dict], how: str) -> dict:
    """The row with the lowest FID ('min') or the mean of every numeric field ('mean')."""
    if how == "min":
        return dict(min(per_seed, key=lambda r: r["fid"]))
    if how == "mean":
        keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and k != "seed"]
        return {k: float(np.mean([r[k] for r in per_seed])) for k in keys}
    raise ConfigError(f"config.eval.aggregate={how!r} is unknown; allowed: "
                      f"{', '.join(AGGREGATES)}")


def evaluate_workdir(exp) -> dict:
    """Evaluates the newest checkpoint of exp.workdir; writes and returns the result dict."""
    ev, s = exp.eval, exp.sampling
    params, step = restore.sampling_params(exp, exp.workdir)
    gen = None if s.cascade else exp.generator()  # a cascade builds its stages' own
    compile_seconds = 0.0 if gen is None else gen.compile(params)
    evaluator = Evaluator(ev, exp.data, exp.metrics, exp.mesh)
    start = time.time()
    reference = evaluator.describe()
    seconds_reference = time.time() - start
    seeds = [ev.seed + i for i in range(ev.num_seeds)]
    per_seed = []
    shown: list[np.ndarray] = []  # the first scored images of the first seed, for a grid
    for seed in seeds:
        clock = [0.0]
        if s.cascade:  # FID of the last stage's images, the cascade's final resolution
            from diffjax.cascade import sample_cascade

            start = time.perf_counter()
            images, stages = sample_cascade(exp, params, ev.num_samples, seed)
            clock[0] = time.perf_counter() - start
            batches = iter(np.array_split(images, -(-len(images) // s.batch_size)))
        else:
            batches = _timed(gen.iter_samples(params, ev.num_samples, seed=seed,
                                              progress=f"eval: sample + features, seed {seed}"),
                             clock)
        if seed == seeds[0]:
            batches = _keep_first(batches, shown, s.grid_samples)
        # the cascade's images exist before their features; sampling draws its own bar
        feature_bar = (progress.bar(ev.num_samples, "img",
                                    f"eval: features of the cascade, seed {seed}")
                       if s.cascade else contextlib.nullcontext())
        with feature_bar as bar:
            scores = evaluator.score(batches, bar=bar)
        per_seed.append({"seed": seed, **scores, "sampling_seconds": clock[0],
                         "samples_per_sec": ev.num_samples / max(clock[0], 1e-9)})
        if s.cascade:
            per_seed[-1].update(nfe=sum(r["nfe"] for r in stages), cascade=stages)
        else:
            per_seed[-1]["nfe"] = gen.nfe
        _log(
            f"step {step} seed {seed}: "
            + ", ".join(f"{k}={v:.5g}" for k, v in per_seed[-1].items() if k in METRIC_KEYS)
        )
    result = {
        "step": int(step),
        "sampler": s.sampler,
        "num_steps": s.num_steps,
        "nfe": per_seed[-1]["nfe"],
        "num_samples": ev.num_samples,
        "seeds": seeds,
        "aggregate": ev.aggregate,
        **{k: v for k, v in aggregate(per_seed, ev.aggregate).items() if k != "seed"},
        "per_seed": per_seed,
        **reference,
        "seconds_reference_statistics": seconds_reference,
        "devices": exp.mesh.devices.size,
        "sampling_compile_seconds": compile_seconds,
        "sampling_config": exp.config.sampling.to_dict(),
    }
    name = (
        f"eval_step{step}_{sampling_tag(exp)}_n{ev.num_samples}_seeds"
        f"{seeds[0]}-{seeds[-1]}_{ev.aggregate}.json"
    )
    path = os.path.join(exp.workdir, "eval", name)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        writers.save_grid(np.concatenate(shown)[:s.grid_samples], path[:-len(".json")] + ".png")
        summary = ", ".join(f"{k}={result[k]:.5g}" for k in METRIC_KEYS if k in result)
        _log(
            f"step {step}, {s.sampler} {result['nfe']} NFE, {ev.num_samples} samples x "
            f"{len(seeds)} seed(s), {ev.aggregate}: {summary}\nwrote {path}"
        )
        if ev.num_samples < 50_000 and "fid" in result:
            _log(f"note: FID of {ev.num_samples} samples is biased upward against the usual "
                 f"50k-sample FID (the bias falls roughly like 1/N); compare only at equal N. "
                 f"KID is unbiased but noisy (kid_std).")
    result["path"] = path
    return result


def run(config, workdir: str, fresh: bool = False, record=None) -> None:
    evaluate_workdir(Experiment(config, workdir, load_data=False))


def _keep_first(batches: Iterator[np.ndarray], store: list, n: int) -> Iterator[np.ndarray]:
    """Yields `batches`, appending to `store` until it holds at least n images."""
    for batch in batches:
        if sum(len(b) for b in store) < n:
            store.append(np.asarray(batch))
        yield batch


def _timed(batches: Iterator[np.ndarray], clock: list[float]) -> Iterator[np.ndarray]:
    """Yields `batches`, adding the seconds spent producing them (sampling, not the Inception
    features computed by the consumer in between) to clock[0]."""
    iterator = iter(batches)
    while True:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        clock[0] += time.perf_counter() - start
        yield batch


METRIC_KEYS = ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall",
               "copy_rate", "classes_present", "class_min_share")


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)
