"""Metric plug-ins over Inception features: config.eval.metrics names the ones to compute; each
one's options are config.eval.<name>. A metric declares what it needs beyond the feature mean
and covariance (`needs_features`: the pool3 features; `needs_logits`: the 1008-way logits) and
scores generated features against the reference's."""

from __future__ import annotations

import dataclasses

import numpy as np

from diffjax.evaluation import metrics
from diffjax.options import check
from diffjax.registry import Registry

METRICS = Registry("metric", "eval.metrics", "eval")


class Metric:
    """generated: {'mu', 'sigma', 'num'} plus 'features' [N, 2048] / 'logits' [N, 1008] /
    'pixels' [N, H*W*C] (float32 in [0, 1]) as needed; reference: {'mu', 'sigma', 'features'}
    plus 'pixels' of the reference images when needed. score() returns {name: value}."""

    needs_features: bool = False
    needs_logits: bool = False
    needs_pixels: bool = False

    def score(self, generated: dict, reference: dict) -> dict:
        raise NotImplementedError


class FID(Metric):
    """Frechet distance of the pool3 Gaussians (Heusel et al. 2017), in float64."""

    def __init__(self):
        self._reference: metrics.FrechetReference | None = None
        self._reference_id = None

    def score(self, generated, reference):
        if self._reference is None or self._reference_id != id(reference["sigma"]):
            self._reference = metrics.FrechetReference(reference["mu"], reference["sigma"])
            self._reference_id = id(reference["sigma"])
        return {"fid": self._reference.distance(generated["mu"], generated["sigma"])}


@dataclasses.dataclass(frozen=True)
class KIDOptions:
    """torch-fidelity's KID: `subsets` subsets of `subset_size` (capped at the sample count)."""

    subsets: int = 100
    subset_size: int = 1000

    def __post_init__(self):
        check(self.subsets >= 1, "subsets", self.subsets, "must be >= 1")
        check(self.subset_size >= 2, "subset_size", self.subset_size, "must be >= 2")


class KID(Metric):
    needs_features = True

    def __init__(self, options: KIDOptions):
        self.options = options

    def score(self, generated, reference):
        return metrics.kernel_inception_distance(generated["features"], reference["features"],
                                                 self.options.subsets, self.options.subset_size)


@dataclasses.dataclass(frozen=True)
class InceptionScoreOptions:
    """The Inception Score over `splits` contiguous splits (needs weights with the fc head)."""

    splits: int = 10

    def __post_init__(self):
        check(self.splits >= 1, "splits", self.splits, "must be >= 1")


class InceptionScore(Metric):
    needs_logits = True

    def __init__(self, options: InceptionScoreOptions):
        self.options = options

    def score(self, generated, reference):
        return metrics.inception_score(np.asarray(generated["logits"]), self.options.splits)


@dataclasses.dataclass(frozen=True)
class PrecisionRecallOptions:
    """Kynkaanniemi et al. 2019 with k nearest neighbours (on Inception pool3 features)."""

    k: int = 3

    def __post_init__(self):
        check(self.k >= 1, "k", self.k, "must be >= 1")


class PrecisionRecall(Metric):
    needs_features = True

    def __init__(self, options: PrecisionRecallOptions):
        self.options = options

    def score(self, generated, reference):
        return metrics.precision_recall(reference["features"], generated["features"],
                                        self.options.k)


@dataclasses.dataclass(frozen=True)
class CopyRateOptions:
    """Near-copies of the training images in pixel space: samples nearer their nearest training
    image (L2) than `percentile` % of the training images are to their own nearest neighbour."""

    percentile: float = 5.0

    def __post_init__(self):
        check(0 < self.percentile < 100, "percentile", self.percentile, "must lie in (0, 100)")


class CopyRate(Metric):
    needs_pixels = True

    def __init__(self, options: CopyRateOptions):
        self.options = options

    def score(self, generated, reference):
        return metrics.copy_rate(reference["pixels"], generated["pixels"], self.options.percentile)


METRICS.register("fid")(lambda options: FID())
METRICS.register("kid", options=KIDOptions)(KID)
METRICS.register("inception_score", options=InceptionScoreOptions)(InceptionScore)
METRICS.register("precision_recall", options=PrecisionRecallOptions)(PrecisionRecall)
METRICS.register("copy_rate", options=CopyRateOptions)(CopyRate)
