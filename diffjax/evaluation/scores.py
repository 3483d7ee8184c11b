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


@dataclasses.dataclass(frozen=True)
class DigitClassesOptions:
    """Which digits the samples show, read by a small CNN trained on `dataset`'s train[:90%] for
    `classifier_steps` Adam steps (diffjax.evaluation.digit_classifier); a digit is present when
    at least `min_share` of the samples read as it."""

    dataset: str = "mnist_embedded"
    min_share: float = 0.02
    classifier_steps: int = 1500

    def __post_init__(self):
        check(0 < self.min_share < 0.1, "min_share", self.min_share, "must lie in (0, 0.1)")
        check(self.classifier_steps >= 1, "classifier_steps", self.classifier_steps,
              "must be >= 1")


class DigitClasses(Metric):
    """classes_present (of 10), class_min_share and class_shares [10] of 28x28 grayscale digit
    samples, plus the classifier's held-out accuracy: mode dropping shows here, not in FID."""

    needs_pixels = True

    def __init__(self, options: DigitClassesOptions):
        self.options = options
        self._classifier = None

    def score(self, generated, reference):
        from diffjax.evaluation import digit_classifier

        pixels = generated["pixels"]
        if pixels.shape[1] != 28 * 28:
            raise ValueError(f"metric 'digit_classes' reads 28x28 grayscale digits (784 values "
                             f"per image); these samples have {pixels.shape[1]}")
        if self._classifier is None:
            self._classifier = digit_classifier.train_digit_classifier(
                name=self.options.dataset, num_steps=self.options.classifier_steps)
        images = np.round(pixels * 255).astype(np.uint8).reshape(-1, 28, 28, 1)
        shares = np.bincount(self._classifier.predict(images), minlength=10) / len(images)
        return {"classes_present": int(np.sum(shares >= self.options.min_share)),
                "class_min_share": float(shares.min()),
                "class_shares": [round(float(v), 4) for v in shares],
                "digit_classifier_accuracy": self._classifier.held_out_accuracy}


METRICS.register("fid")(lambda options: FID())
METRICS.register("kid", options=KIDOptions)(KID)
METRICS.register("inception_score", options=InceptionScoreOptions)(InceptionScore)
METRICS.register("precision_recall", options=PrecisionRecallOptions)(PrecisionRecall)
METRICS.register("copy_rate", options=CopyRateOptions)(CopyRate)
METRICS.register("digit_classes", options=DigitClassesOptions)(DigitClasses)
