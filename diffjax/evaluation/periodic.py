"""FID during training: every config.eval.every_steps steps, on config.eval.train_num_samples.

FID is biased upward at small sample counts (the bias falls roughly like 1/N; Chong & Forsyth
2020), so a 2k-sample FID is not comparable to a 50k-sample one: the log line says so, and the
values go to WORKDIR/eval/fid_during_training.jsonl and TensorBoard as `fid_<N>`, never
alongside paper numbers.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable

import jax


class PeriodicFID:
    """Call with (step, ema_params) after each train step; does work only every
    eval_options.every_steps. make_evaluator() -> Evaluator is called on the first evaluation,
    which loads the Inception and the reference statistics."""

    def __init__(self, eval_options, make_evaluator: Callable, generator, workdir: str):
        self.generator, self.workdir, self.make_evaluator = generator, workdir, make_evaluator
        self.every = eval_options.every_steps
        self.num_samples = eval_options.train_num_samples
        self.seed = eval_options.seed
        self._evaluator = None

    def __call__(self, step: int, ema_params) -> float | None:
        if not self.every or step % self.every:
            return None
        if self._evaluator is None:
            self._evaluator = self.make_evaluator()
        batches = self.generator.iter_samples(ema_params, self.num_samples, seed=self.seed)
        result = self._evaluator.score(batches, names=("fid",))
        fid, n = result["fid"], self.num_samples
        if jax.process_index() == 0:
            message = (
                f"step {step}: FID@{n} = {fid:.3f} (EMA, {self.generator.nfe} NFE, "
                f"{n} samples vs {self._evaluator.reference['num_images']} reference "
                f"images; biased upward against 50k-sample FID, compare only at equal N)"
            )
            print(message, flush=True)
            logging.info(message)
            path = os.path.join(self.workdir, "eval", "fid_during_training.jsonl")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "step": int(step),
                            f"fid_{n}": fid,
                            "num_samples": n,
                            "nfe": self.generator.nfe,
                        }
                    )
                    + "\n"
                )
            from tensorboardX import SummaryWriter

            with SummaryWriter(
                os.path.join(self.workdir, "tensorboard"), filename_suffix=".fid"
            ) as tb:
                tb.add_scalar(f"fid_{n}", fid, step)
        return fid
