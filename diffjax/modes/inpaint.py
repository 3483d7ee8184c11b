"""--mode=inpaint: complete masked dataset images with a run's EMA params (RePaint), score them.

Writes WORKDIR/inpaint/NAME.npz (uint8 `original`, `masked`, `completed` [N, H, W, C], `mask`
[N, H, W, 1], `labels`), NAME.png (rows of original | masked | completed) and NAME.json with PSNR
and SSIM of the completions against the originals (dm_pix, on [0, 1] images)."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from diffjax import data, parallel, progress, restore, writers
from diffjax.codecs import to_uint8
from diffjax.evaluation.image_quality import psnr, psnr_missing, ssim
from diffjax.experiment import Experiment
from diffjax.inpainting import Inpainter, masked_view, triplet_grid
from diffjax.samplers import repaint


def _complete_all(exp, inpainter, params) -> dict:
    """Completes inpaint.num_images images of inpaint.split: {'original', 'completed', 'mask',
    'labels'} as numpy. Conditional models get the true labels."""
    icfg, s = exp.inpaint, exp.sampling
    source, _ = data.load_source(exp.data.name, icfg.split, exp.data.data_dir)
    n_dev = exp.mesh.devices.size  # per-call batch: sampling.batch_size, or fewer if that is all
    batch = min(inpainter.gen.batch, -(-icfg.num_images // n_dev) * n_dev)
    pipeline = data.Pipeline(source, batch, s.seed, jax.process_index(), jax.process_count(),
                             exp.data.image_size, False, False, exp.num_classes)
    out = {"original": [], "completed": [], "mask": [], "labels": []}
    bar = progress.bar(icfg.num_images, "img", "inpaint")
    for i in range(-(-icfg.num_images // batch)):
        examples = pipeline.batch(i)
        seed = [s.seed, i, jax.process_index()]
        mask = repaint.make_masks(icfg.mask, examples["image"].shape, icfg.mask_fraction, seed)
        images, masks, labels = parallel.to_global((examples["image"], mask, examples["label"]),
                                                   exp.mesh)
        key = jax.random.fold_in(jax.random.PRNGKey(s.seed), i)
        completed = inpainter.complete(params, images, masks, labels, key)
        keep = min(batch, icfg.num_images - i * batch)
        out["completed"].append(completed[:keep])
        out["original"].append(parallel.to_host(to_uint8(images))[:keep])
        out["mask"].append(parallel.to_host(masks)[:keep])
        out["labels"].append(parallel.to_host(labels)[:keep])
        bar.update(keep)
    bar.close()
    return {k: np.concatenate(v) for k, v in out.items()}


def inpaint_workdir(exp) -> str:
    """Completes and scores the images; returns the path of the JSON with PSNR/SSIM."""
    exp.codec.encode_mask(np.ones((1, *exp.image_shape[:2], 1), np.float32))  # or ConfigError
    params, step = restore.sampling_params(exp, exp.workdir)  # EMA, or an ensemble
    inpainter = Inpainter(exp.generator(), exp.inpaint, exp.repaint_options)
    icfg, s = exp.inpaint, exp.sampling
    start = time.perf_counter()
    out = _complete_all(exp, inpainter, params)
    seconds = time.perf_counter() - start
    out["masked"] = masked_view(out["original"], out["mask"])
    metrics = {"psnr": psnr(out["completed"], out["original"]),
               "ssim": ssim(out["completed"], out["original"]),
               "psnr_missing": psnr_missing(out["completed"], out["original"], out["mask"])}
    result = {
        "step": int(step), "num_images": int(icfg.num_images), "mask": icfg.mask,
        "mask_fraction": icfg.mask_fraction, "jump_length": icfg.jump_length,
        "resample": icfg.resample, "num_steps": s.num_steps, "spacing": s.spacing,
        "nfe": inpainter.nfe, "seconds": round(seconds, 2),
        **{k: float(np.mean(v)) for k, v in metrics.items()},
        "per_image": {k: [round(float(x), 4) for x in v] for k, v in metrics.items()},
    }
    directory = os.path.join(exp.workdir, "inpaint")
    cfg = f"_cfg{s.guidance_scale:g}" if s.guidance_scale != 1.0 else ""
    params_tag = restore.params_tag(s, restore.posthoc_sigma_rel(exp))
    name = (f"inpaint_step{step}_{icfg.mask}_repaint{s.num_steps}_j{icfg.jump_length}"
            f"r{icfg.resample}{cfg}{params_tag}_seed{s.seed}")
    path = os.path.join(directory, name + ".json")
    if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        np.savez(os.path.join(directory, name + ".npz"), **out)
        writers.save_grid(triplet_grid(out["original"], out["masked"], out["completed"])[None],
                          os.path.join(directory, name + ".png"))
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"inpainted {icfg.num_images} images ({icfg.mask}, {inpainter.nfe} NFE each) from "
              f"step {step}: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}, PSNR on the "
              f"missing pixels {result['psnr_missing']:.2f} dB; wrote {path}")
    return path


def run(config, workdir: str, fresh: bool = False, record=None) -> None:
    inpaint_workdir(Experiment(config, workdir, load_data=False))
