"""Prompt fidelity and FID/KID of a text-conditional digit model by guidance scale.

    python -m experiments.prompt_fidelity runs/mnist_text --scales 0,1,3 --per_prompt 20 \\
        --fid_samples 300 --sampler dpmpp_2m --num_steps 20 --spacing karras

Prompt fidelity: the share of samples that a CNN trained on 90% of the real digits (held-out
accuracy printed with the table) reads as the digit the prompt names, for one prompt per digit
written with templates of the caption set that training saw, and with unseen phrasings.
FID/KID: `fid_samples` samples with the first template of random digits against the 5,000
embedded digits (config.eval's Inception and reference statistics). Writes table.md and
results.json into --out."""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from diffjax import config_lib, restore
from diffjax.conditioning.text import DIGIT_WORDS, digit_caption
from diffjax.evaluation.digit_classifier import train_digit_classifier
from diffjax.evaluation.evaluator import Evaluator
from diffjax.experiment import Experiment, configure_backend

UNSEEN = "a picture of the digit {word}"  # a phrasing no training template uses


def prompt_sets() -> dict[str, list[str]]:
    """{name: 10 prompts, one per digit}."""
    return {"seen": [digit_caption(d, d % 12) for d in range(10)],
            "unseen": [UNSEEN.format(word=w) for w in DIGIT_WORDS]}


def run(workdir: str, scales, per_prompt: int, fid_samples: int, out: str,
        sampler: str = "", num_steps: int = 0, spacing: str = "",
        classifier_steps: int = 1500) -> dict:
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    base = config_lib.merge_saved(config_lib.load_config_file("configs/mnist_text.py"), saved,
                                  set())
    if sampler:
        base.sampling.sampler = sampler
    if num_steps:
        base.sampling.num_steps = num_steps
    if spacing:
        base.sampling.spacing = spacing
    configure_backend(base)
    start = time.time()
    classifier = train_digit_classifier(base.data.data_dir, num_steps=classifier_steps)
    print(f"digit classifier: held-out accuracy {classifier.held_out_accuracy:.4f} "
          f"({time.time() - start:.0f} s)", flush=True)
    rows = []
    for scale in scales:
        row = {"guidance_scale": scale}
        for name, prompts in prompt_sets().items():
            config = config_lib.merge_saved(base, {}, set())
            config.sampling.prompts, config.sampling.guidance_scale = tuple(prompts), scale
            exp = Experiment(config, workdir, load_data=False)
            params, step = restore.sampling_params(exp, workdir)
            images, nfe = exp.generator().sample(params, 10 * per_prompt, seed=1)
            targets = np.resize(np.arange(10), len(images))  # prompts are cycled
            row[f"fidelity_{name}"] = classifier.fidelity(images, targets)
            row["step"], row["nfe"] = step, nfe
        config = config_lib.merge_saved(base, {}, set())
        config.sampling.guidance_scale = scale
        exp = Experiment(config, workdir, load_data=False)
        params, _ = restore.sampling_params(exp, workdir)
        gen = exp.generator()
        evaluator = Evaluator(exp.eval, exp.data, exp.metrics, exp.mesh)
        scores = evaluator.score(gen.iter_samples(params, fid_samples, seed=2))
        row.update(fid=scores["fid"], kid=scores["kid_mean"])
        print(row, flush=True)
        rows.append(row)
    result = {"workdir": workdir, "sampler": f"{base.sampling.sampler}-{base.sampling.num_steps} "
                                             f"({base.sampling.spacing})",
              "per_prompt": per_prompt, "fid_samples": fid_samples,
              "classifier_held_out_accuracy": classifier.held_out_accuracy, "rows": rows,
              "prompts": prompt_sets()}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table(result))
    return result


def table(result: dict) -> str:
    lines = [f"Prompt fidelity ({10 * result['per_prompt']} samples per set; classifier held-out "
             f"accuracy {result['classifier_held_out_accuracy']:.3f}), sampler "
             f"{result['sampler']}, and FID/KID "
             f"({result['fid_samples']} samples vs the 5,000 digits)", "",
             "| guidance | fidelity, seen templates | fidelity, unseen phrasing | FID | KID |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['guidance_scale']} | {r['fidelity_seen']:.3f} | "
                     f"{r['fidelity_unseen']:.3f} | {r['fid']:.1f} | {r['kid']:.4f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--scales", default="1,2,3,5")
    parser.add_argument("--per_prompt", type=int, default=50)
    parser.add_argument("--fid_samples", type=int, default=1000)
    parser.add_argument("--out", default="experiments/results/mnist_text")
    parser.add_argument("--sampler", default="", help="default: the run's config.sampling")
    parser.add_argument("--num_steps", type=int, default=0)
    parser.add_argument("--spacing", default="")
    parser.add_argument("--classifier_steps", type=int, default=1500)
    args = parser.parse_args()
    run(args.workdir, [float(s) for s in args.scales.split(",")], args.per_prompt,
        args.fid_samples, args.out, args.sampler, args.num_steps, args.spacing,
        args.classifier_steps)


if __name__ == "__main__":
    main()
