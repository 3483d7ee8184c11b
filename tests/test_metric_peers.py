"""KID and IS against torch-fidelity's own implementation on the same feature and logit arrays.

torch-fidelity's package __init__ and its `utils` import torchvision, whose PyPI build fails on CPU
torch (`operator torchvision::nms does not exist`); the feature -> metric functions need neither,
so its `metric_kid` and `metric_isc` modules are loaded from its files under a stub package."""

import importlib
import importlib.metadata
import importlib.util
import sys
import types

import numpy as np
import pytest

from diffjax.evaluation import metrics

torch = pytest.importorskip("torch")
if importlib.util.find_spec("torch_fidelity") is None:
    pytest.skip("torch-fidelity is not installed (pip install --no-deps torch-fidelity==0.4.0)",
                allow_module_level=True)


def _load_torch_fidelity(*names: str) -> list[types.ModuleType]:
    """torch_fidelity.<name> for each name, imported without the package __init__ and with a
    stub `torch_fidelity.utils` (its torchvision-based extractors are not used); sys.modules is
    left as it was."""
    package_dir = importlib.util.find_spec("torch_fidelity").submodule_search_locations[0]
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "torch_fidelity"}
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [package_dir]
    utils = types.ModuleType("torch_fidelity.utils")
    for name in ("create_feature_extractor", "extract_featuresdict_from_input_id_cached",
                 "resolve_feature_extractor", "resolve_feature_layer_for_metric"):
        setattr(utils, name, None)
    sys.modules.update({"torch_fidelity": package, "torch_fidelity.utils": utils})
    try:
        return [importlib.import_module(f"torch_fidelity.{name}") for name in names]
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] == "torch_fidelity"]:
            del sys.modules[key]
        sys.modules.update(saved)


METRIC_KID, METRIC_ISC = _load_torch_fidelity("metric_kid", "metric_isc")


def test_torch_fidelity_is_the_pinned_version():
    assert importlib.metadata.version("torch-fidelity") == "0.4.0"


@pytest.mark.parametrize("num_subsets, subset_size, num_rows2", [(1, 200, 200), (20, 100, 300)])
def test_kid_equals_torch_fidelity(num_subsets, subset_size, num_rows2):
    """Same features, subsets drawn by np.random.RandomState(2020) in the same order (one subset of
    all 200 rows of each set: the estimator itself); kernel (x.y / d + 1)^3, float64."""
    rng = np.random.default_rng(0)
    features1 = rng.standard_normal((200, 64))
    features2 = 1.1 * rng.standard_normal((num_rows2, 64)) + 0.2
    ours = metrics.kernel_inception_distance(features1, features2, num_subsets, subset_size,
                                             seed=2020)
    theirs = METRIC_KID.kid_features_to_metric(
        torch.from_numpy(features1), torch.from_numpy(features2), kid_subsets=num_subsets,
        kid_subset_size=subset_size, rng_seed=2020, verbose=False)
    assert theirs["kernel_inception_distance_mean"] > 1e-3  # a real difference to measure
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-9)
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-7,
                                            abs=1e-12)


def test_inception_score_equals_torch_fidelity():
    """[500, 1008] logits, 10 splits. torch-fidelity shuffles the rows with
    RandomState(2020).permutation by default; ours takes contiguous splits of rows as given."""
    logits = 3.0 * np.random.default_rng(1).standard_normal((500, 1008))
    theirs = METRIC_ISC.isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    ours = metrics.inception_score(logits, num_splits=10)
    assert ours["is_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-10)
    assert ours["is_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-8)
    shuffled = METRIC_ISC.isc_features_to_metric(torch.from_numpy(logits), splits=10)
    permuted = metrics.inception_score(logits[np.random.RandomState(2020).permutation(500)], 10)
    assert permuted["is_mean"] == pytest.approx(shuffled["inception_score_mean"], rel=1e-10)
