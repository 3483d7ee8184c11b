"""Bit-identity check for refactors: record the numbers a refactor must not change, then compare.

    python -m experiments.bitcheck record OUT_DIR [--cases all|CASE,...]   # one process per case
    python -m experiments.bitcheck compare BASELINE_DIR NEW_DIR

A case trains a config for a few steps and records the exact losses (float hex), hashes of the
final params and EMA, and for `default50` the sample grid of the default sampler, eight samplers
at 10 steps and one RePaint completion. Recipes whose dataset is not on the machine train on
synthetic batches of the dataset's shape (seeded by the step). Numbers are bit-identical only on
the same machine and stack; compare runs made here with each other, not across machines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ("default", "cifar10_ddpm", "cifar10_iddpm", "cifar10_vp_continuous", "cifar10_edm",
           "cifar10_v_minsnr", "imagenet64_adm")
VARIANTS = {  # the default config at batch 8 with one knob turned
    "accum2": {"training.grad_accum_steps": 2},
    "multi_ema": {"ema.fixed.decays": (0.999, 0.9, 0.99)},
    "cond_cfg": {"conditioning.name": "class_label", "conditioning.class_label.dropout": 0.2},
    "curriculum": {"objective.denoising.curriculum_steps": 10,
                   "objective.denoising.curriculum_t_max_start": 0.5},
    "edm_lognormal_curr": {"diffusion.schedule": "edm", "diffusion.parameterization": "edm",
                           "objective.denoising.weighting": "edm",
                           "objective.denoising.time_sampling": "lognormal",
                           "objective.denoising.curriculum_steps": 10},
    "x0_minsnr_vpcos": {"diffusion.schedule": "vp_cosine", "diffusion.parameterization": "x0",
                        "objective.denoising.weighting": "min_snr"},
    "dropout_adamw": {"model.unet.dropout": 0.1, "optim.name": "adamw",
                      "optim.weight_decay": 0.01},
}
CASES = ("default50", *(f"recipe:{r}" for r in RECIPES), *(f"variant:{v}" for v in VARIANTS))
SAMPLERS = [("ddpm", {}), ("ddim", {"ddim.eta": 0.5}),
            ("euler", {"spacing": "karras", "euler.s_churn": 1.0}),
            ("heun", {"spacing": "karras"}), ("dpmpp_2m", {"spacing": "karras"}),
            ("dpmpp_3m", {}), ("pc", {}), ("ode", {"ode.rtol": 1e-3, "ode.atol": 1e-3})]


def _sha(array) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _tree_sha(tree) -> str:
    import jax
    import numpy as np

    return _sha(np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)]))


def _config(case: str):
    """(config, number of steps, whether batches are synthetic) of a case."""
    from diffjax import config_lib

    load = lambda name: config_lib.load_config_file(os.path.join(ROOT, "configs", name + ".py"))  # noqa: E731
    kind, _, name = case.partition(":")
    if case == "default50":
        return load("default"), 50, False
    if kind == "recipe":
        config = load(name)
        config.training.batch_size = 4
        return config, 20, name != "default"
    config = load("default")
    config.training.batch_size = 8
    for key, value in VARIANTS[name].items():
        config_lib.set_field(config, key, value)
    return config, 20, False


def _sample_checks(exp, config, state) -> dict:
    """Hashes of the default grid, eight samplers at 10 steps and one RePaint completion."""
    import jax

    from diffjax import config_lib, inpainting, parallel
    from diffjax.experiment import Experiment
    from diffjax.samplers import repaint

    ema = state.ema[0]
    images, nfe = exp.generator().sample(ema, config.sampling.grid_samples,
                                         seed=config.sampling.seed)
    out = {"grid_sha": _sha(images), "grid_nfe": int(nfe), "samplers": {}}
    for sampler, extra in SAMPLERS:
        cfg = config.copy_and_resolve_references()
        cfg.sampling.sampler, cfg.sampling.num_steps, cfg.sampling.batch_size = sampler, 10, 8
        for key, value in extra.items():
            config_lib.set_field(cfg.sampling, key, value)
        images, nfe = Experiment(cfg, load_data=False).generator().sample(ema, 8, seed=3)
        out["samplers"][sampler] = {"sha": _sha(images), "nfe": float(nfe)}
    cfg = config.copy_and_resolve_references()
    cfg.sampling.num_steps, cfg.sampling.batch_size = 10, 8
    cfg.inpaint.jump_length, cfg.inpaint.resample = 3, 2
    small = Experiment(cfg, load_data=False)
    inpainter = inpainting.Inpainter(small.generator(), small.inpaint, small.repaint_options)
    host = exp.pipeline.batch(0)
    mask = repaint.make_masks("center_box", host["image"][:8].shape, 0.25, [0, 0, 0])
    batch = parallel.to_global((host["image"][:8], mask, host["label"][:8]), exp.mesh)
    out["inpaint_sha"] = _sha(inpainter.complete(ema, *batch, jax.random.PRNGKey(5)))
    return out


def _guidance_checks(config, state) -> dict:
    """Hashes of classifier-free guided samples (w = 2), without and with an interval (heun)."""
    from diffjax.experiment import Experiment

    cfg = config.copy_and_resolve_references()
    cfg.sampling.num_steps, cfg.sampling.batch_size, cfg.sampling.guidance_scale = 10, 8, 2.0
    out = {"cfg_sha": _sha(Experiment(cfg, load_data=False).generator().sample(
        state.ema[0], 8, seed=1)[0])}
    cfg.sampling.guidance_sigma_min, cfg.sampling.guidance_sigma_max = 0.5, 5.0
    cfg.sampling.sampler = "heun"
    out["cfg_interval_sha"] = _sha(Experiment(cfg, load_data=False).generator().sample(
        state.ema[0], 8, seed=1)[0])
    return out


def record_case(case: str, path: str) -> dict:
    """Runs one case in this process (it sets the device count, so one case per process)."""
    import numpy as np

    from diffjax import experiment, parallel

    config, num_steps, synthetic = _config(case)
    experiment.configure_backend(config)
    exp = experiment.Experiment(config, load_data=not synthetic)
    state, step_fn = exp.init_state(), exp.train_step_fn()

    def batch(step: int):
        if not synthetic:
            return exp.global_batch(step)
        rng = np.random.default_rng([1234, step])
        b = config.training.batch_size
        return parallel.to_global({
            "image": rng.uniform(-1, 1, (b, *exp.image_shape)).astype(np.float32),
            "label": rng.integers(0, max(exp.num_classes, 1), b).astype(np.int32)}, exp.mesh)

    losses = []
    for k in range(num_steps):
        state, metrics = step_fn(state, batch(k))
        losses.append(float(metrics["loss"]))
    out = {"case": case, "losses": losses, "losses_hex": [float.hex(x) for x in losses],
           "params_sha": _tree_sha(state.params), "ema_sha": _tree_sha(state.ema[0])}
    if len(state.ema) > 1:
        out["extra_ema_sha"] = [_tree_sha(e) for e in state.ema[1:]]
    if case == "default50":
        out.update(_sample_checks(exp, config, state))
    if case == "variant:cond_cfg":
        out.update(_guidance_checks(config, state))
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(case, "done", flush=True)
    return out


def compare(baseline: str, new: str) -> bool:
    """Prints one line per case; True when every recorded number is identical."""
    ok = True
    for name in sorted(f for f in os.listdir(baseline) if f.endswith(".json")):
        with open(os.path.join(baseline, name)) as f:
            a = json.load(f)
        if not os.path.exists(os.path.join(new, name)):
            print(f"{name:36s} MISSING")
            ok = False
            continue
        with open(os.path.join(new, name)) as f:
            b = json.load(f)
        diffs = [k for k in a if k not in ("case", "losses") and a[k] != b.get(k)]
        ok &= not diffs
        print(f"{name:36s} {'identical' if not diffs else 'DIFFERS: ' + ', '.join(diffs)}  "
              f"({len(a['losses'])} losses, first {a['losses'][0]:.6f}, "
              f"last {a['losses'][-1]:.6f})")
    print("ALL IDENTICAL" if ok else "SOME DIFFER")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bitcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out_dir")
    rec.add_argument("--cases", default="all")
    rec.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    cmp = sub.add_parser("compare")
    cmp.add_argument("baseline")
    cmp.add_argument("new")
    args = parser.parse_args(argv)
    if args.command == "compare":
        return 0 if compare(args.baseline, args.new) else 1
    os.makedirs(args.out_dir, exist_ok=True)
    if args.case:
        record_case(args.case, os.path.join(args.out_dir, args.case.replace(":", "_") + ".json"))
        return 0
    cases = CASES if args.cases == "all" else tuple(args.cases.split(","))
    for case in cases:
        subprocess.run([sys.executable, "-m", "experiments.bitcheck", "record", args.out_dir,
                        "--case", case], cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
