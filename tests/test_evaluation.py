"""The metrics equal their reference computations; --mode=eval runs end to end."""

import json
import os
import re

import numpy as np
import pytest
import scipy.linalg
from test_launch import TINY, launch

from diffjax.evaluation import metrics


def _scipy_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance (scipy sqrtm), in float64."""
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _gaussian_stats(rng, n, d, scale=1.0):
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * scale / np.sqrt(d) + rng.normal(size=d)
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("n, d", [(400, 64), (200, 512)])  # full rank; rank 199 < d
def test_frechet_distance_equals_scipy_sqrtm_form_full_rank_and_rank_deficient(n, d):
    rng = np.random.default_rng(d)
    mu1, s1 = _gaussian_stats(rng, n, d)
    mu2, s2 = _gaussian_stats(rng, n, d, scale=1.5)
    ours = metrics.frechet_distance(mu1, s1, mu2, s2)
    ref = _scipy_frechet(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_closed_form_for_commuting_covariances():
    # Diagonal covariances: FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(
        expected, rel=1e-12
    )
    with pytest.raises(
        ValueError, match=r"statistics do not match: mu1 \(3,\), sigma1 \(3, 3\), mu2 \(2,\)"
    ):
        metrics.frechet_distance(mu1, np.diag(a), mu2[:2], np.diag(b))


def test_streaming_statistics_equal_numpy_mean_and_cov_in_float64():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(1000, 16)) * 0.01 + 100.0).astype(np.float32)  # large mean, small spread
    stats = metrics.FeatureStats()
    for part in np.array_split(x, 7):
        stats.update(part)
    x64 = x.astype(np.float64)
    assert stats.num == 1000
    np.testing.assert_allclose(stats.mu, x64.mean(0), rtol=1e-13)
    np.testing.assert_allclose(stats.sigma, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-16)


def _kid_numpy(f1, f2, num_subsets, subset_size, seed=2020):
    """torch-fidelity's KID: polynomial kernel (x.y/d + 1)^3, unbiased MMD^2 with explicit loops
    over the off-diagonal terms."""
    rng = np.random.RandomState(seed)
    d = f1.shape[1]
    mmds = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), subset_size, replace=False)].astype(np.float64)
        y = f2[rng.choice(len(f2), subset_size, replace=False)].astype(np.float64)
        m = subset_size
        k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
        xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
        mmds.append(xx + yy - 2 * xy)
    return np.mean(mmds), np.std(mmds)


def test_kid_equals_direct_numpy_implementation():
    rng = np.random.default_rng(0)
    f1 = rng.random((60, 32)).astype(np.float32)
    f2 = (rng.random((50, 32)) * 1.2).astype(np.float32)
    ours = metrics.kernel_inception_distance(f1, f2, num_subsets=5, subset_size=20)
    mean, std = _kid_numpy(f1, f2, 5, 20)
    assert ours["kid_mean"] == pytest.approx(mean, rel=1e-10)
    assert ours["kid_std"] == pytest.approx(std, rel=1e-8)
    capped = metrics.kernel_inception_distance(f1, f2, num_subsets=2, subset_size=1000)
    assert capped["kid_subset_size"] == 50


def test_inception_score_closed_forms():
    # Uniform predictions: p(y|x) = p(y), KL = 0, IS = 1.
    assert metrics.inception_score(np.zeros((100, 1008)))["is_mean"] == pytest.approx(
        1.0, abs=1e-12
    )
    # Confident and evenly spread over C classes in every split: IS = C.
    logits = np.full((200, 1008), -1e3)
    logits[np.arange(200), np.arange(200) % 20] = 0.0
    out = metrics.inception_score(logits, num_splits=10)
    assert out["is_mean"] == pytest.approx(20.0, rel=1e-9) and out["is_std"] == pytest.approx(
        0, abs=1e-9
    )


def test_inception_score_equals_the_original_formula():
    logits = np.random.default_rng(0).normal(size=(50, 1008)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for part in np.array_split(p, 5):  # 50 / 5: the same contiguous splits
        py = part.mean(0)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), axis=1))))
    out = metrics.inception_score(logits, num_splits=5)
    assert out["is_mean"] == pytest.approx(np.mean(scores), rel=1e-10)
    assert out["is_std"] == pytest.approx(np.std(scores), rel=1e-8)


def _pr_numpy(real, fake, k):
    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]  # index 0 is the point itself

    def inside(probes, centres, r):
        d = ((probes[:, None] - centres[None]) ** 2).sum(-1)
        return (d <= r[None]).any(1).mean()

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_equal_brute_force_and_closed_forms():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 16)).astype(np.float32)
    fake = (rng.normal(size=(90, 16)) * 1.3 + 0.4).astype(np.float32)
    ours = metrics.precision_recall(real, fake, k=3, block=32)
    precision, recall = _pr_numpy(real.astype(np.float64), fake.astype(np.float64), 3)
    assert 0 < precision < 1 and 0 < recall < 1
    assert ours == {"precision": pytest.approx(precision), "recall": pytest.approx(recall)}
    assert metrics.precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}
    assert metrics.precision_recall(real, real + 100.0) == {"precision": 0.0, "recall": 0.0}


def test_copy_rate_equals_brute_force_and_counts_near_copies():
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    train = rng.uniform(size=(400, 16)).astype(np.float32)
    fresh = rng.uniform(size=(2000, 16)).astype(np.float32)
    copies = train[:100] + rng.normal(scale=1e-3, size=(100, 16)).astype(np.float32)
    within = cdist(train, train) + np.diag(np.full(len(train), np.inf))
    threshold = np.percentile(within.min(axis=1), 5.0)
    samples = np.concatenate([copies, fresh])
    brute = np.mean(cdist(samples, train).min(axis=1) < threshold)
    ours = metrics.copy_rate(train, samples, 5.0, block=128)
    assert ours["copy_threshold"] == pytest.approx(threshold, rel=1e-5)
    assert ours["copy_rate"] == pytest.approx(brute)
    assert metrics.copy_rate(train, copies)["copy_rate"] == 1.0
    # fresh draws of the training distribution are near copies about as often as training
    # images are of each other: 5%
    assert 0.03 < metrics.copy_rate(train, fresh)["copy_rate"] < 0.08
    with pytest.raises(ValueError, match="percentile=100 must lie in"):
        metrics.copy_rate(train, fresh, 100)


def test_digit_classes_reads_the_digits_held_out_real_images_show(data_dir):
    from diffjax.evaluation import digit_classifier, scores

    images, labels = digit_classifier._split("mnist_embedded", "train[90%:]", data_dir)
    metric = scores.DigitClasses(scores.DigitClassesOptions(classifier_steps=300))

    def pixels(x):
        return {"pixels": x.reshape(len(x), -1).astype(np.float32) / 255.0}

    every = metric.score(pixels(images), {})
    assert every["classes_present"] == 10
    np.testing.assert_allclose(every["class_shares"], np.bincount(labels, minlength=10)
                               / len(labels), atol=0.04)
    zeros_and_ones = metric.score(pixels(images[labels <= 1]), {})
    assert zeros_and_ones["classes_present"] == 2
    assert zeros_and_ones["class_min_share"] == 0.0
    assert sum(zeros_and_ones["class_shares"][:2]) > 0.95
    with pytest.raises(ValueError, match=r"784 values per image\); these samples have 256"):
        metric.score({"pixels": np.zeros((4, 256), np.float32)}, {})


def test_paper_protocol_aggregates_the_best_seed_or_the_mean():
    from diffjax.modes.evaluate import aggregate

    rows = [{"seed": 0, "fid": 3.0, "kid_mean": 0.1}, {"seed": 1, "fid": 2.0, "kid_mean": 0.3},
            {"seed": 2, "fid": 4.0, "kid_mean": 0.2}]
    assert aggregate(rows, "min") == rows[1]  # every metric of the lowest-FID seed
    assert aggregate(rows, "mean") == {"fid": 3.0, "kid_mean": pytest.approx(0.2)}
    with pytest.raises(ValueError, match="aggregate='max' is unknown; allowed: min, mean"):
        aggregate(rows, "max")


def test_launch_eval_writes_fid_kid_json_and_periodic_fid_during_training(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    ref_dir = str(tmp_path / "fid_stats")
    small_eval = [
        "--config.eval.num_samples=8",
        "--config.eval.batch_size=8",
        "--config.eval.reference_num_images=8",
        f"--config.eval.reference_dir={ref_dir}",
        "--config.eval.kid.subsets=3",
        "--config.eval.metrics=('fid','kid','inception_score','precision_recall','copy_rate')",
        "--config.eval.train_num_samples=4",
    ]
    train = launch(
        "--workdir",
        workdir,
        "--config.training.num_steps=2",
        "--config.eval.every_steps=2",
        *TINY,
        *small_eval,
        data_dir=data_dir,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "step 2: FID@4 = " in train.stdout and "biased upward" in train.stdout
    # every long step shows a bar with its count (and an ETA) on stderr
    assert re.search(r"reference statistics: 100%.*\b8/8\b", train.stderr), train.stderr[-2000:]
    with open(os.path.join(workdir, "eval", "fid_during_training.jsonl")) as f:
        assert json.loads(f.readline())["step"] == 2

    out = launch(
        "--workdir",
        workdir,
        "--mode=eval",
        "--config.training.num_steps=2",
        "--config.eval.num_seeds=2",
        "--config.eval.aggregate=mean",
        "--config.sampling.sampler=ddim",
        "--config.sampling.spacing=karras",  # named in the file, as samples are (not overwritten)
        *TINY,
        *small_eval,
        data_dir=data_dir,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"eval: sample \+ features, seed 1: 100%.*\b8/8\b", out.stderr)
    assert "note: FID of 8 samples is biased upward" in out.stdout
    path = os.path.join(workdir, "eval", "eval_step2_ddim3_karras_n8_seeds0-1_mean.json")
    with open(path) as f:
        result = json.load(f)
    assert result["step"] == 2 and result["nfe"] == 3 and result["num_samples"] == 8
    assert result["seeds"] == [0, 1] and len(result["per_seed"]) == 2
    assert result["fid"] == pytest.approx(np.mean([r["fid"] for r in result["per_seed"]]))
    assert result["fid"] > 0 and result["kid_subset_size"] == 8 and result["kid_subsets"] == 3
    assert 0 <= result["precision"] <= 1 and result["reference"]["num_images"] == 8
    assert 0 <= result["copy_rate"] <= 1 and result["copy_threshold"] > 0
    assert os.path.isfile(result["reference"]["path"]) and result["reference"]["path"].startswith(
        ref_dir
    )
    from PIL import Image

    # The first sampling.grid_samples = 4 scored 16x16 images: a 2 x 2 grid, 2-pixel padding.
    grid = np.asarray(Image.open(path[: -len(".json")] + ".png"))
    assert grid.shape[:2] == (2 * (16 + 2) + 2,) * 2 and grid[2:18, 2:18].std() > 0

    bad = launch(
        "--workdir", workdir, "--mode=eval", "--config.eval.aggregate=median", data_dir=data_dir
    )
    assert bad.returncode == 2
    assert "config.eval.aggregate='median' is unknown; allowed: min, mean" in bad.stderr
