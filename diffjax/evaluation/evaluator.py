"""Scores a generator against the training set with the metrics config.eval asks for."""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np

from diffjax.evaluation import features, metrics, reference, weights

NO_HEAD = (
    "not available: the default weights have no 1008-way head (set config.eval.weights to "
    f"pytorch-fid's {weights.PYTORCH_FID_FILE})"
)


class Evaluator:
    """Holds the FID Inception (config.eval.weights, .preprocessing, .batch_size) on a mesh and
    the reference statistics of config.data (computed or read from the cache on first use)."""

    def __init__(self, config, mesh):
        self.config, self.eval_cfg = config, config.eval
        params, self.weights_name = weights.load_weights(self.eval_cfg.weights)
        self.extractor = features.InceptionExtractor(
            params, mesh, self.eval_cfg.batch_size, self.eval_cfg.preprocessing
        )
        self._reference: dict | None = None
        self._frechet: metrics.FrechetReference | None = None

    @property
    def has_head(self) -> bool:
        """Whether the weights hold the 1008-way head (needed for the Inception Score)."""
        return self.extractor.has_head

    @property
    def reference(self) -> dict:
        if self._reference is None:
            self._reference = reference.reference_statistics(
                self.config, self.extractor, self.weights_name
            )
        return self._reference

    def score(self, image_batches: Iterable[np.ndarray], full: bool = True) -> dict:
        """Metrics of generated uint8 [n, H, W, C] batches against the reference.

        full=False: FID only (training-time); else also KID, IS and precision/recall as
        config.eval enables them (IS only when the weights hold the fc head)."""
        ev, ref = self.eval_cfg, self.reference
        keep = full and (ev.kid or ev.precision_recall)
        want_logits = full and ev.inception_score and self.has_head
        stats, pool3, logits = metrics.FeatureStats(), [], []
        start = time.time()
        for out in self.extractor.iter_batches(image_batches):
            stats.update(out["pool3"])
            if keep:
                pool3.append(out["pool3"])
            if want_logits:
                logits.append(out["logits_unbiased"])
        if self._frechet is None:
            self._frechet = metrics.FrechetReference(ref["mu"], ref["sigma"])
        result = {"num_samples": stats.num, "fid": self._frechet.distance(stats.mu, stats.sigma)}
        if keep:
            generated = np.concatenate(pool3)
            if ev.kid:
                result.update(
                    metrics.kernel_inception_distance(
                        generated, ref["features"], ev.kid_subsets, ev.kid_subset_size
                    )
                )
            if ev.precision_recall:
                result.update(metrics.precision_recall(ref["features"], generated, ev.pr_k))
        if want_logits:
            result.update(metrics.inception_score(np.concatenate(logits), ev.is_splits))
        result["seconds"] = time.time() - start  # sampling, features and metrics
        return result

    def describe(self) -> dict:
        """What the numbers were computed with, for the result files."""
        ref = self.reference
        return {
            "weights": self.weights_name,
            "preprocessing": self.eval_cfg.preprocessing,
            "inception_score": "computed" if self.has_head else NO_HEAD,
            "reference": {
                "dataset": self.config.data.name,
                "split": self.config.data.split,
                "image_size": self.config.data.image_size,
                "num_images": int(ref["num_images"]),
                "path": ref["path"],
            },
        }
