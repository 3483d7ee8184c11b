"""Scores generated images against the training set with the metric plug-ins config.eval.metrics
names (diffjax.evaluation.scores)."""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import numpy as np

from diffjax.evaluation import features, reference, weights

NO_HEAD = (
    "not available: the default weights have no 1008-way head (set config.eval.weights to "
    f"pytorch-fid's {weights.PYTORCH_FID_FILE})"
)


class Evaluator:
    """Holds the FID Inception (eval_options.weights, .preprocessing, .batch_size) on a mesh, the
    metric plug-ins {name: Metric} and the reference statistics of the data (computed or read
    from the cache on first use)."""

    def __init__(self, eval_options, data_options, metric_plugins: dict, mesh):
        self.eval_options, self.data_options = eval_options, data_options
        self.metrics = dict(metric_plugins)
        params, self.weights_name = weights.load_weights(eval_options.weights)
        self.extractor = features.InceptionExtractor(
            params, mesh, eval_options.batch_size, eval_options.preprocessing
        )
        self._reference: dict | None = None
        self._pixels: np.ndarray | None = None

    @property
    def has_head(self) -> bool:
        """Whether the weights hold the 1008-way head (needed for the Inception Score)."""
        return self.extractor.has_head

    @property
    def reference(self) -> dict:
        if self._reference is None:
            self._reference = reference.reference_statistics(
                self.data_options, self.eval_options, self.extractor, self.weights_name
            )
        return self._reference

    @property
    def reference_pixels(self) -> np.ndarray:
        """[N, H*W*C] float32 in [0, 1]: the reference images, for pixel-space metrics."""
        if self._pixels is None:
            self._pixels = reference.reference_pixels(self.data_options, self.eval_options)
        return self._pixels

    def _usable(self, names) -> dict:
        """The metrics of `names` that these weights can compute (IS needs the fc head)."""
        return {n: self.metrics[n] for n in names
                if not (self.metrics[n].needs_logits and not self.has_head)}

    def score(self, image_batches: Iterable[np.ndarray], names=None, bar=None) -> dict:
        """Metrics of generated uint8 [n, H, W, C] batches against the reference. names: the
        metrics to compute (None: all of config.eval.metrics), e.g. ('fid',) during training.
        bar: a progress bar advanced by each batch's extracted images (features.summarise)."""
        chosen = self._usable(self.metrics if names is None else names)
        keep = any(m.needs_features for m in chosen.values())
        want_logits = any(m.needs_logits for m in chosen.values())
        want_pixels = any(m.needs_pixels for m in chosen.values())
        start = time.time()
        pixels: list[np.ndarray] = []
        if want_pixels:
            image_batches = _kept(image_batches, pixels)
        generated = features.summarise(self.extractor.iter_batches(image_batches), keep,
                                       want_logits, bar)
        ref = self.reference
        if want_pixels:
            generated["pixels"] = np.concatenate(pixels)
            ref = {**ref, "pixels": self.reference_pixels}
        result = {"num_samples": generated["num"]}
        for metric in chosen.values():
            result.update(metric.score(generated, ref))
        result["seconds"] = time.time() - start  # sampling, features and metrics
        return result

    def describe(self) -> dict:
        """What the numbers were computed with, for the result files."""
        ref, d = self.reference, self.data_options
        wants_is = any(m.needs_logits for m in self.metrics.values())
        return {
            "weights": self.weights_name,
            "preprocessing": self.eval_options.preprocessing,
            "metrics": list(self.metrics),
            "inception_score": ("computed" if self.has_head else NO_HEAD) if wants_is
            else "not requested",
            "reference": {
                "dataset": d.name,
                "split": d.split,
                "image_size": d.image_size,
                "num_images": int(ref["num_images"]),
                "path": ref["path"],
            },
        }


def _kept(batches: Iterable[np.ndarray], store: list) -> Iterator[np.ndarray]:
    """Yields uint8 [n, H, W, C] `batches`, appending each as float32 [n, H*W*C] in [0, 1] to
    `store`."""
    for batch in batches:
        store.append(np.asarray(batch, np.float32).reshape(len(batch), -1) / 255.0)
        yield batch
