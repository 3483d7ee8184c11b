"""--mode=train_autoencoder: train the KL autoencoder of config.autoencoder in WORKDIR (resuming
from its newest checkpoint), export it to WORKDIR/autoencoder, and score its reconstructions of
held-out images: PSNR, SSIM and rFID, written to WORKDIR/eval/reconstruction_<step>.json."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np


def evaluate_reconstructions(stage, params, step: int) -> dict:
    """PSNR and SSIM (mean and standard error over images) and rFID (the Frechet distance of
    the reconstructions' Inception features to the originals') on autoencoder.eval_num_images
    images of the held-out split, reconstructed from the posterior mean."""
    from diffjax import parallel
    from diffjax.evaluation import features, image_quality, metrics, weights

    pipeline = stage.eval_pipeline
    n = pipeline.num_examples
    n = min(n, stage.options.eval_num_images or n)
    fn = stage.reconstruct_fn()
    originals, recons = [], []
    for start, index, local in pipeline.ordered_batches(n):
        x = parallel.to_global(local, stage.mesh)
        recons.append(parallel.to_host(fn(params, x))[:n - start])
        originals.append(pipeline.examples(index[:n - start])[0])
    originals, recons = np.concatenate(originals), np.concatenate(recons)
    psnr, ssim = image_quality.psnr(recons, originals), image_quality.ssim(recons, originals)
    weights_params, weights_name = weights.load_weights(stage.eval.weights)
    extractor = features.InceptionExtractor(weights_params, stage.mesh, stage.eval.batch_size,
                                            stage.eval.preprocessing)
    real = features.summarise(extractor.iter_batches([originals]))
    fake = features.summarise(extractor.iter_batches([recons]))
    stderr = lambda v: float(np.std(v, ddof=1) / np.sqrt(len(v)))  # noqa: E731
    return {"step": int(step), "num_images": int(n), "split": pipeline_split(stage),
            "psnr_db": float(np.mean(psnr)), "psnr_db_stderr": stderr(psnr),
            "ssim": float(np.mean(ssim)), "ssim_stderr": stderr(ssim),
            f"rfid_{n}": metrics.frechet_distance(real["mu"], real["sigma"], fake["mu"],
                                                  fake["sigma"]),
            "weights": weights_name, "params": stage.options.export,
            "note": f"rFID: {n} reconstructions against the same {n} originals (biased upward "
                    f"at small N; compare only at equal N)"}


def pipeline_split(stage) -> str:
    return stage.options.eval_split or stage.data.val_split


def run(config, workdir: str, fresh: bool = False, record=None) -> None:
    from diffjax.autoencoder_stage import AutoencoderStage
    from diffjax.modes.train import saved_config
    from diffjax.training import loop

    stage = AutoencoderStage(config, workdir)
    state = loop.train(stage, fresh=fresh, record=record, saved_config=saved_config(stage.workdir))
    start = time.time()
    folder = stage.export(state)
    if jax.process_index() == 0:
        print(f"exported the autoencoder ({stage.options.export} params, step {int(state.step)}) "
              f"to {folder}; train a latent model on it with --config.codec.name=vae "
              f"--config.codec.vae.path={stage.workdir}", flush=True)
    if stage.eval_pipeline is None:
        print("no held-out split (config.autoencoder.eval_split or config.data.val_split): "
              "reconstruction quality not measured")
        return
    result = evaluate_reconstructions(stage, stage.export_params(state), int(state.step))
    result["seconds"] = time.time() - start
    if jax.process_index() == 0:
        path = os.path.join(stage.workdir, "eval", f"reconstruction_{int(state.step):08d}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        n = result["num_images"]
        print(f"held-out reconstructions ({result['split']}, {n} images): PSNR "
              f"{result['psnr_db']:.2f} dB  SSIM {result['ssim']:.4f}  rFID@{n} "
              f"{result[f'rfid_{n}']:.2f}  -> {path}", flush=True)
