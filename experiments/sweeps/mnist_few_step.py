"""Few-step generation on the embedded digits: one shared teacher against the few-step methods.

The teacher is configs/mnist_ddpm.py (DDPM, eps, 1,600 steps of 64), trained once and counted once;
every student gets at most 30 minutes on 2 CPU cores. Each model is scored by FID and KID of
2,000 samples (one seed) against all 5,000 digits (cached Inception statistics): the students at
1, 2 and 4 NFE with their own samplers, the teacher at 4, 10, 35 and 100 NFE with DPM-Solver++(2M)
(and its own DDPM ancestral sampler at 100). Progressive distillation is one run per round
(8 -> 4 -> 2 -> 1 DDIM steps, each round starting from the last), its three rounds together
within the 30 minutes. FID at 2k samples is biased upward: compare only within this table.

    python experiments/sweeps/mnist_few_step.py            # train + evaluate what is missing
    python experiments/sweeps/mnist_few_step.py --table    # only rewrite the table
    python experiments/sweeps/mnist_few_step.py --only ict,cd

Every finished evaluation is recorded in experiments/results/mnist_few_step/results.json (with
its grid and the model's train time), and the table is written from that record, so it grows
run by run and across clones: a run re-trains (in RUNS_DIR, runs/few_step) and re-scores only
the rows the record lacks.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS_DIR = os.path.join(ROOT, "runs", "few_step")
OUT_DIR = os.path.join(ROOT, "experiments", "results", "mnist_few_step")
NUM_SAMPLES = 2000

# name -> (config file, overrides, what it is). '{teacher}' is the teacher's workdir.
MODELS = {
    "teacher": ("configs/mnist_ddpm.py", {}, "DDPM teacher (eps, linear betas)"),
    "ict": ("configs/mnist_ict.py", {}, "iCT consistency training (no teacher)"),
    "meanflow": ("configs/mnist_meanflow.py", {}, "MeanFlow (no teacher; JVP target)"),
    "cd": ("configs/mnist_cd.py",
           {"objective.consistency_distillation.teacher": "{teacher}"},
           "consistency distillation (Heun, N=18, mu=0.95)"),
    "ddgan": ("configs/mnist_ddgan.py", {}, "denoising diffusion GAN, T = 2 (no teacher)"),
    # progressive distillation, one run per round: teacher DDIM-8 -> 4 -> 2 -> 1
    "pd4": ("configs/mnist_pd.py",
            {"objective.progressive_distillation.teacher": "{teacher}"},
            "progressive distillation, round 1 (8 -> 4)"),
    "pd2": ("configs/mnist_pd.py",
            {"objective.progressive_distillation.teacher": "{pd4}",
             "objective.progressive_distillation.student_steps": 2, "sampling.num_steps": 2},
            "progressive distillation, round 2 (4 -> 2)"),
    "pd1": ("configs/mnist_pd.py",
            {"objective.progressive_distillation.teacher": "{pd2}",
             "objective.progressive_distillation.student_steps": 1, "sampling.num_steps": 1},
            "progressive distillation, round 3 (2 -> 1)"),
}
# name -> [(sampler, num_steps)]: the evaluations, in the order they run.
EVALS = {
    "teacher": [("dpmpp_2m", 100), ("dpmpp_2m", 10), ("dpmpp_2m", 4), ("dpmpp_2m", 35),
                ("ddpm", 100)],
    "ict": [("consistency", 2), ("consistency", 1), ("consistency", 4)],
    "meanflow": [("mean_flow", 1), ("mean_flow", 2), ("mean_flow", 4)],
    "cd": [("consistency", 2), ("consistency", 1), ("consistency", 4)],
    "ddgan": [("ddgan", 2)],
    "pd4": [("ddim", 4)], "pd2": [("ddim", 2)], "pd1": [("ddim", 1)],
}
# the teacher is trained before any
ORDER = ("meanflow", "ict", "cd", "ddgan", "pd4", "pd2", "pd1", "teacher")


def _teachers(name: str) -> list[str]:
    """The models whose workdirs name's overrides refer to ('{pd4}'), nearest last."""
    refs = [ref for value in MODELS[name][1].values() if isinstance(value, str)
            for ref in MODELS if "{" + ref + "}" in value]
    return [t for ref in refs for t in (*_teachers(ref), ref)]


def workdir(name: str) -> str:
    return os.path.join(RUNS_DIR, name)


def _num_steps(name: str) -> int:
    sys.path.insert(0, ROOT)
    from diffjax import config_lib

    config = config_lib.load_config_file(os.path.join(ROOT, MODELS[name][0]))
    return int(MODELS[name][1].get("training.num_steps", config.training.num_steps))


def is_trained(name: str) -> bool:
    return os.path.isfile(os.path.join(workdir(name), "checkpoints", str(_num_steps(name)),
                                       "diffjax_manifest.json"))


def _flags(overrides: dict) -> list[str]:
    dirs = {name: workdir(name) for name in MODELS}
    return [f"--config.{k}={str(v).format(**dirs)}" for k, v in overrides.items()]


def _run(argv: list[str], log: str) -> float:
    start = time.time()
    with open(log, "a") as f:
        code = subprocess.call(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{' '.join(argv)} failed ({code}); see {log}")
    return time.time() - start


def train(name: str) -> None:
    config, overrides, _ = MODELS[name]
    os.makedirs(RUNS_DIR, exist_ok=True)
    seconds = _run([sys.executable, "launch.py", f"--config={config}",
                    f"--workdir={workdir(name)}", *_flags(overrides)],
                   os.path.join(RUNS_DIR, f"{name}.train.log"))
    with open(os.path.join(workdir(name), "sweep_train_seconds.json"), "w") as f:
        json.dump({"seconds": seconds}, f)


def find_eval(name: str, sampler: str, num_steps: int) -> dict | None:
    for path in sorted(glob.glob(os.path.join(workdir(name), "eval", "eval_step*.json"))):
        with open(path) as f:
            result = json.load(f)
        if (result.get("sampler") == sampler and result.get("num_steps") == num_steps
                and result.get("num_samples") == NUM_SAMPLES
                and result.get("step") == _num_steps(name)):
            return {**result, "path": path}
    return None


def evaluate(name: str, sampler: str, num_steps: int) -> None:
    spacing = ["--config.sampling.spacing=trailing"] if name.startswith("pd") else []
    _run([sys.executable, "launch.py", f"--workdir={workdir(name)}", "--mode=eval",
          f"--config.sampling.sampler={sampler}", f"--config.sampling.num_steps={num_steps}",
          *spacing,
          f"--config.eval.num_samples={NUM_SAMPLES}", "--config.eval.metrics=('fid','kid')",
          "--config.data.split=train"],
         os.path.join(RUNS_DIR, f"{name}.eval.log"))


def train_seconds(name: str) -> float | None:
    path = os.path.join(workdir(name), "sweep_train_seconds.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["seconds"]


RESULTS = os.path.join(OUT_DIR, "results.json")


def load_results() -> dict:
    """The checked-in record of every finished evaluation, {f"{name}_{sampler}{num_steps}": row};
    it outlives the runs, so a fresh clone keeps the table and re-runs only what is missing."""
    if not os.path.exists(RESULTS):
        return {}
    with open(RESULTS) as f:
        return json.load(f)


def record(name: str, sampler: str, num_steps: int) -> None:
    """Adds the run's evaluation to results.json and copies its grid to OUT_DIR."""
    result = find_eval(name, sampler, num_steps)
    key = f"{name}_{sampler}{num_steps}"
    os.makedirs(OUT_DIR, exist_ok=True)
    shutil.copyfile(result["path"][:-len(".json")] + ".png", os.path.join(OUT_DIR, key + ".png"))
    results = load_results()
    results[key] = {"model": name, "sampler": sampler, "num_steps": num_steps,
                    "nfe": result["nfe"], "fid": round(result["fid"], 2),
                    "kid_mean": round(result["kid_mean"], 4),
                    "kid_std": round(result["kid_std"], 4),
                    "train_seconds": train_seconds(name)}
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")


def table() -> str:
    """The markdown table of every recorded evaluation, in MODELS and EVALS order."""
    results = load_results()
    lines = ["| model | sampler | NFE | FID (2k) | KID (2k) | train (2 cores) | grid |",
             "|---|---|---|---|---|---|---|"]
    for name in MODELS:
        for sampler, num_steps in sorted(EVALS[name], key=lambda e: (e[0] != "consistency",
                                                                      e[1])):
            row = results.get(f"{name}_{sampler}{num_steps}")
            if row is None:
                continue
            seconds = row["train_seconds"]
            cost = f"{seconds / 60:.1f} min" if seconds else "-"
            lines.append(f"| {MODELS[name][2]} | {sampler} | {row['nfe']} | {row['fid']:.2f} | "
                         f"{row['kid_mean']:.4f} ± {row['kid_std']:.4f} | {cost} | "
                         f"[grid]({name}_{sampler}{num_steps}.png) |")
    return "\n".join(lines) + "\n"


def write_table() -> str:
    text = table()
    with open(os.path.join(OUT_DIR, "table.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    parser.add_argument("--only", default="", help="comma-separated models (default: all)")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(ORDER)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"--only: unknown model {unknown[0]!r}; allowed: {', '.join(MODELS)}")
    if not args.table:
        done = load_results()
        for name in names:
            missing = [(sampler, num_steps) for sampler, num_steps in EVALS[name]
                       if f"{name}_{sampler}{num_steps}" not in done]
            if not missing:
                continue
            for needed in (*_teachers(name), name):
                if not is_trained(needed):
                    train(needed)
            for sampler, num_steps in missing:
                if find_eval(name, sampler, num_steps) is None:
                    evaluate(name, sampler, num_steps)
                record(name, sampler, num_steps)
                write_table()
    print(write_table(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
