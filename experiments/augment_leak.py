"""Augmentation on a small training set: FID/KID, copy rate and the augmentation leak of the
default recipe trained on the first 500 embedded digits without augmentation, with EDM's
augmentation told to the network (leak-free) and with it untold (leaky).

    python -m experiments.augment_leak                       # 500 digits, 1,600 steps, p = 0.2
    python -m experiments.augment_leak --num_train 500 --steps 1600 --p 0.2 --num_samples 500

Each arm trains the main job's recipe (configs/default.py, batch 32) through launch.py into
runs/augment_leak/<arm> (a rerun resumes or skips it), then draws num_samples samples with the
recipe's sampler and scores them: FID and KID against the 5,000 embedded digits (the cached
reference statistics), the copy rate against the arm's own training digits, and the leak: the
share of samples that an orientation classifier trained on unaugmented digits
(diffjax.evaluation.digit_classifier) reads as mirrored or rotated. That classifier sees
interpolation blur in every orientation, so the blur of an augmented model's samples does not
read as a rotation. Its read of the real training digits is the floor (symmetric digits such as
0, 1 and 8 read either way). Writes experiments/results/augment_leak/results.json, table.md and
one sample grid per arm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "experiments", "results", "augment_leak")
RUNS = os.path.join(ROOT, "runs", "augment_leak")


def arms(p: float) -> dict[str, dict]:
    """{arm: config overrides}: no augmentation, leak-free (labels told), leaky (untold)."""
    return {"none": {},
            "leak_free": {"data.augment_p": p},
            "leaky": {"data.augment_p": p, "data.augment_labels": False}}


def train(workdir: str, overrides: dict) -> float:
    """Trains configs/default.py with `overrides` into workdir through launch.py; seconds."""
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    start = time.time()
    subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                    os.path.join(ROOT, "configs", "default.py"), "--workdir", workdir, *flags],
                   check=True, cwd=ROOT)
    return time.time() - start


def score(workdir: str, num_samples: int, train_images: np.ndarray, classifier) -> dict:
    """Samples the newest checkpoint of workdir and scores them (see the module docstring)."""
    from diffjax import restore, writers
    from diffjax.evaluation import metrics
    from diffjax.evaluation.digit_classifier import ORIENTATIONS
    from diffjax.evaluation.evaluator import Evaluator
    from diffjax.experiment import Experiment
    from experiments.sampler_convergence import run_config

    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    # the reference of FID/KID is the whole embedded set, not the arm's small training split
    config = run_config(saved, {"data.split": "train", "eval.metrics": ("fid", "kid")})
    exp = Experiment(config, workdir, load_data=False)
    params, step = restore.sampling_params(exp, workdir)
    gen = exp.generator()
    gen.compile(params)
    start = time.time()
    images = np.concatenate(list(gen.iter_samples(params, num_samples, seed=0,
                                                  progress="augment_leak: sampling")))
    seconds = time.time() - start
    evaluator = Evaluator(exp.eval, exp.data, exp.metrics, exp.mesh)
    scores = evaluator.score(iter(np.array_split(images, max(1, len(images) // 100))))
    pixels = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # noqa: E731
    copies = metrics.copy_rate(pixels(train_images), pixels(images))
    read = classifier.predict(images)
    os.makedirs(OUT_DIR, exist_ok=True)
    grid = os.path.join(OUT_DIR, os.path.basename(workdir) + ".png")
    writers.save_grid(images[:64], grid)
    return {"step": int(step), "fid": scores["fid"], "kid": scores["kid_mean"],
            "kid_std": scores["kid_std"], "copy_rate": copies["copy_rate"],
            "leak": float(np.mean(read != 0)),
            **{f"read_{o}": float(np.mean(read == k)) for k, o in enumerate(ORIENTATIONS)},
            "sampling_seconds": seconds, "nfe": gen.nfe, "grid": os.path.relpath(grid, ROOT)}


def table(results: dict) -> str:
    s = results["settings"]
    lines = [f"Default recipe on `train[:{s['num_train']}]` of the embedded digits, "
             f"{s['steps']} steps at batch {s['batch_size']}, augmentation p = {s['p']} per "
             f"transform ({', '.join(s['transforms'])}); {s['num_samples']} samples, "
             f"{s['sampler']}. FID/KID against the 5,000 digits; copy rate against the "
             f"{s['num_train']} training digits; leak: share read as mirrored or rotated by the "
             f"orientation classifier (held-out accuracy {s['classifier_accuracy']:.3f}; the "
             f"real training digits read as transformed: {s['real_leak']:.3f}).", "",
             "| arm | FID | KID | copy rate | leak | mirrored | rotated | train (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, r in results["arms"].items():
        lines.append(f"| {arm} | {r['fid']:.2f} | {r['kid']:.4f} | {r['copy_rate']:.3f} | "
                     f"{r['leak']:.3f} | {r['read_mirrored']:.3f} | {r['read_rotated']:.3f} | "
                     f"{r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_train", type=int, default=500)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--p", type=float, default=0.2)
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--arms", nargs="+", default=["none", "leak_free", "leaky"])
    args = parser.parse_args(argv)
    from configs import default
    from diffjax.core import augment
    from diffjax.evaluation import digit_classifier

    every = arms(args.p)
    unknown = [a for a in args.arms if a not in every]
    if unknown:
        parser.error(f"--arms {unknown}: allowed {', '.join(every)}")
    record = os.path.join(OUT_DIR, "results.json")
    settings = {"num_train": args.num_train, "steps": args.steps, "p": args.p,
                "num_samples": args.num_samples, "transforms": list(augment.TRANSFORMS),
                "sampler": "ddpm, 100 steps (configs/default.py)",
                "batch_size": default.get_config().training.batch_size,
                "meter": "orientation classifier trained with blur in every orientation"}
    results = {"settings": settings, "arms": {}}
    if os.path.exists(record):
        with open(record) as f:
            saved = json.load(f)
        if {k: v for k, v in saved["settings"].items() if k in settings} == settings:
            results = saved
    split = f"train[:{args.num_train}]"
    train_images, _ = digit_classifier._split("mnist_embedded", split, "")
    classifier, calibration = digit_classifier.train_orientation_classifier()
    real = classifier.predict(train_images)
    settings.update(classifier_accuracy=classifier.held_out_accuracy,
                    real_leak=float(np.mean(real != 0)), calibration=calibration)
    results["settings"] = settings
    for arm in args.arms:
        if arm in results["arms"]:
            print(f"{arm}: done, skipped", flush=True)
            continue
        overrides = {"data.split": split, "training.num_steps": args.steps,
                     "training.checkpoint_every_steps": args.steps,
                     "training.sample_every_steps": 0, **every[arm]}
        workdir = os.path.join(RUNS, arm)
        seconds = train(workdir, overrides)
        row = score(workdir, args.num_samples, train_images, classifier)
        results["arms"][arm] = {**row, "train_seconds": seconds, "overrides": overrides}
        os.makedirs(OUT_DIR, exist_ok=True)
        with open(record, "w") as f:  # after every arm, so a rerun resumes
            json.dump(results, f, indent=2)
        print(f"{arm}: {row}", flush=True)
    with open(os.path.join(OUT_DIR, "table.md"), "w") as f:
        f.write(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
