"""FID/KID of a run under autoguidance (Karras et al. 2024) by guiding model and weight.

    python -m experiments.autoguidance --main runs/A --guides runs/A@400 runs/small \
        --weights 1 1.5 2 2.5 --num_samples 2000 [--num_seeds 1] [--set sampling.sampler=heun]

A guide is a trained run's workdir, with @STEP for one of its checkpoints (an early checkpoint of
the main run itself is the paper's "shorter training" guide); without it, its newest good one.
Each (guide, w) is evaluated as --mode=eval does (diffjax.modes.evaluate.evaluate_workdir, the
eval JSON written under the main run's eval/), with config.sampling.guidance='autoguidance';
w = 1 is the main model alone, evaluated once as the baseline row. --set KEY=VALUE overrides
a config field (dotted, as --config.KEY=VALUE) for every row. Writes
experiments/results/autoguidance/results.json (every row) and table.md (or under --out); a rerun
skips the rows results.json already holds for the same settings.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = (("fid", "FID"), ("kid_mean", "KID x 10^3"), ("precision", "precision"),
           ("recall", "recall"))


def parse_guide(text: str) -> tuple[str, int]:
    """'runs/A@400' -> ('runs/A', 400); 'runs/small' -> ('runs/small', 0: the newest)."""
    path, _, step = text.rpartition("@") if "@" in text else (text, "", "0")
    if not step.isdigit():
        raise argparse.ArgumentTypeError(f"guide {text!r}: expected WORKDIR or WORKDIR@STEP")
    return path, int(step)


def parse_override(text: str) -> tuple[str, object]:
    """'sampling.sampler=heun' -> ('sampling.sampler', 'heun'); values are Python literals
    where they parse as one (2, 0.5, (1, 2), True), else strings."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def row_key(guide: str, step: int, weight: float) -> str:
    """The row's name in results.json: 'none' for the unguided baseline."""
    if weight == 1.0:
        return "none"
    return f"{os.path.abspath(guide)}@{step}|w={weight:g}"


def experiment(main: str, overrides: dict):
    """The Experiment of the main run (its config.json over configs/default.py, as launch.py
    reads a workdir) with `overrides` (dotted keys) on top, on its mesh.cpu_devices."""
    from diffjax import config_lib
    from diffjax.experiment import Experiment, configure_backend

    with open(os.path.join(main, "config.json")) as f:
        saved = json.load(f)
    base = config_lib.load_config_file(os.path.join(ROOT, "configs", "default.py"))
    config = config_lib.merge_saved(base, saved, set())
    for key, value in overrides.items():
        config_lib.set_field(config, key, value)
    configure_backend(config)
    return Experiment(config, main, load_data=False)


def evaluate(exp) -> dict:
    from diffjax.modes.evaluate import evaluate_workdir

    return evaluate_workdir(exp)


def table(rows: list[dict], header: str) -> str:
    """The markdown table of `rows` (results.json's values), the baseline first."""
    lines = [header, "", "| guide | w | " + " | ".join(name for _, name in METRICS)
             + " | NFE | eval file |", "|---|---|" + "---|" * (len(METRICS) + 2)]
    order = sorted(rows, key=lambda r: (r["guide"] != "", r["guide"], r["guide_step"], r["w"]))
    for r in order:
        guide = "(none)" if not r["guide"] else (
            f"`{r['guide']}`" + (f" @ {r['guide_step']}" if r["guide_step"] else " (newest)"))
        values = []
        for key, _ in METRICS:
            value = r["result"].get(key)
            scale = 1e3 if key == "kid_mean" else 1.0
            values.append("-" if value is None else f"{scale * value:.4g}")
        lines.append(f"| {guide} | {r['w']:g} | " + " | ".join(values)
                     + f" | {r['result'].get('nfe')} | {os.path.basename(r['result']['path'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None, evaluate_fn=evaluate) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--main", required=True, help="the main run's workdir")
    parser.add_argument("--guides", nargs="+", type=parse_guide, required=True,
                        help="WORKDIR or WORKDIR@STEP, one per guiding model")
    parser.add_argument("--weights", nargs="+", type=float, default=[1.0, 1.5, 2.0, 2.5])
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--num_seeds", type=int, default=1)
    parser.add_argument("--set", nargs="*", type=parse_override, default=[], dest="overrides")
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                                      "autoguidance"))
    args = parser.parse_args(argv)
    for workdir in [args.main] + [g for g, _ in args.guides]:
        if not os.path.isfile(os.path.join(workdir, "config.json")):
            parser.error(f"workdir {workdir!r} has no config.json: train it first")
    common = {"eval.num_samples": args.num_samples, "eval.num_seeds": args.num_seeds,
              **dict(args.overrides)}
    settings = json.dumps(common, sort_keys=True, default=str)
    results_path = os.path.join(args.out, "results.json")
    rows: dict = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            saved = json.load(f)
        if saved.get("main") == os.path.abspath(args.main) and saved.get("settings") == settings:
            rows = saved["rows"]
    wanted = [("", 0, 1.0)] + [(g, s, w) for g, s in args.guides for w in args.weights
                               if w != 1.0]
    for guide, step, weight in wanted:
        key = row_key(guide, step, weight)
        if key in rows:
            print(f"{key}: done, skipped", flush=True)
            continue
        overrides = dict(common)
        if guide:
            overrides.update({"sampling.guidance": "autoguidance", "sampling.guide_workdir":
                              os.path.abspath(guide), "sampling.guide_checkpoint_step": step,
                              "sampling.guidance_scale": weight})
        result = evaluate_fn(experiment(args.main, overrides))
        rows[key] = {"guide": os.path.relpath(os.path.abspath(guide), ROOT) if guide else "",
                     "guide_step": step, "w": weight,
                     "result": {k: v for k, v in result.items() if k != "per_seed"}}
        os.makedirs(args.out, exist_ok=True)
        with open(results_path, "w") as f:  # after every row, so a rerun resumes
            json.dump({"main": os.path.abspath(args.main), "settings": settings, "rows": rows},
                      f, indent=2, default=str)
        print(f"{key}: fid={result.get('fid')}", flush=True)
    header = (f"Autoguidance of `{os.path.relpath(os.path.abspath(args.main), ROOT)}`: "
              f"{args.num_samples} samples x {args.num_seeds} seed(s), settings {settings}. "
              f"w = 1 is the main model alone. Reproduce: `python -m experiments.autoguidance "
              + " ".join(argv if argv is not None else sys.argv[1:]) + "`.")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table(list(rows.values()), header))
    print(table(list(rows.values()), header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
