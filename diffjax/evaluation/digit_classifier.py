"""Small CNN classifiers trained on the real digits. The digit classifier reads which digit a
generated image shows: the prompt fidelity of a text- or class-conditional model is the share of
samples whose predicted digit is the one asked for. The orientation classifier reads whether a
digit is upright, mirrored or rotated: the share of samples it reads as transformed shows an
augmentation leak (EDM, App. F.2)."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax import data, progress


class DigitCNN(nn.Module):
    """[B, H, W, 1] uint8 -> [B, num_classes] logits: two conv/pool stages and an MLP
    (LeNet-like)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        for features in (32, 64):
            x = nn.relu(nn.Conv(features, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(0.3, deterministic=not train)(nn.relu(nn.Dense(128)(x)))
        return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass
class DigitClassifier:
    """Trained params and the held-out accuracy they reached."""

    params: dict
    held_out_accuracy: float
    num_classes: int = 10

    def predict(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """images: [N, H, W, 1] uint8 -> predicted classes [N] int."""
        model = DigitCNN(self.num_classes)
        apply = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1))
        out = [np.asarray(apply(self.params, images[i:i + batch_size]))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out)

    def fidelity(self, images: np.ndarray, labels: np.ndarray) -> float:
        """The share of images read as their intended digit `labels` [N]."""
        return float(np.mean(self.predict(images) == np.asarray(labels)))


def _split(name: str, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    source, _ = data.load_source(name, split, data_dir)
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(e["image"]).reshape(28, 28, 1) for e in examples])
    return images.astype(np.uint8), np.array([int(e["label"]) for e in examples])


def train_digit_classifier(data_dir: str = "", name: str = "mnist_embedded",
                           train_split: str = "train[:90%]", test_split: str = "train[90%:]",
                           num_steps: int = 1500, batch_size: int = 128,
                           seed: int = 0) -> DigitClassifier:
    """Trains DigitCNN with Adam on `train_split`; returns it with its accuracy on `test_split`
    (about 97-98% on the embedded digits)."""
    images, labels = _split(name, train_split, data_dir)
    test_images, test_labels = _split(name, test_split, data_dir)
    return fit_classifier(images, labels, test_images, test_labels, 10, num_steps, batch_size,
                          seed)


def fit_classifier(images, labels, test_images, test_labels, num_classes: int,
                   num_steps: int = 1500, batch_size: int = 128,
                   seed: int = 0) -> DigitClassifier:
    """DigitCNN(num_classes) trained with Adam on uint8 images [N, H, W, 1] and labels [N];
    returned with its accuracy on the test images."""
    model, tx = DigitCNN(num_classes), optax.adam(1e-3)
    key = jax.random.PRNGKey(seed)
    params = model.init(key, images[:1])["params"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    with progress.bar(num_steps, "step", f"{num_classes}-class digit classifier") as bar:
        for i in range(num_steps):
            idx = rng.integers(0, len(images), batch_size)
            params, opt_state = step(params, opt_state, images[idx], labels[idx],
                                     jax.random.fold_in(key, i))
            if (i + 1) % 50 == 0 or i + 1 == num_steps:  # count finished steps, not dispatched
                jax.block_until_ready(params)
                bar.update(i + 1 - bar.n)
    classifier = DigitClassifier(params, 0.0, num_classes)
    classifier.held_out_accuracy = float(np.mean(classifier.predict(test_images) == test_labels))
    return classifier


ORIENTATIONS = ("upright", "mirrored", "rotated")
MIN_ROTATION = math.pi / 4  # "rotated": by 45 to 180 degrees either way, mirrored or not
MAX_TILT = math.pi / 12     # "upright" allows a tilt of 15 degrees, within handwriting's own slant
BLURRED_SHARE = 0.5


def orient(images: np.ndarray, kinds: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 images [N, H, W, 1] transformed as kinds [N] (indices into ORIENTATIONS) say:
    as they are, mirrored left-right, or rotated by MIN_ROTATION to pi either way (and mirrored
    half the time). BLURRED_SHARE of each kind is resampled bilinearly (core.augment.warp):
    through the augmentation's scale and anisotropy, a sub-pixel shift and, for the upright and
    mirrored, a tilt of at most MAX_TILT; the rest exactly (flips and quarter turns), so the
    interpolation blur that an augmented model's samples carry says nothing about orientation."""
    from diffjax.core import augment

    rng = np.random.default_rng(seed)
    n, kinds = len(images), np.asarray(kinds)
    blurred = rng.random(n) < BLURRED_SHARE
    flip = (kinds == 1) | ((kinds == 2) & (rng.random(n) < 0.5))
    turn = rng.uniform(MIN_ROTATION, math.pi, n) * rng.choice([-1.0, 1.0], n)
    nuisance = {"xflip": flip.astype(np.float32),
                "theta": np.where(kinds == 2, turn, rng.uniform(-MAX_TILT, MAX_TILT, n)),
                "log2_scale": rng.normal(0.0, augment.SCALE_STD, n),
                "log2_aniso": rng.normal(0.0, augment.ANISO_STD, n),
                "tx": rng.uniform(-0.5, 0.5, n), "ty": rng.uniform(-0.5, 0.5, n)}
    out = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    quarters = rng.integers(1, 4, n)
    for k in (1, 2, 3):
        chosen = (kinds == 2) & (quarters == k) & ~blurred
        out[chosen] = np.rot90(out[chosen], k, axes=(1, 2))
    params = {k: jnp.asarray(v[blurred], jnp.float32) for k, v in nuisance.items()}
    warped = augment.warp(jnp.asarray(images[blurred], jnp.float32),
                          augment.inverse_matrix(params))
    out[blurred] = np.clip(np.rint(np.asarray(warped)), 0, 255).astype(np.uint8)
    return out


def _oriented(images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image in each of the three orientations, and their labels."""
    kinds = np.repeat(np.arange(len(ORIENTATIONS)), len(images))
    return orient(np.concatenate([images] * len(ORIENTATIONS)), kinds, seed), kinds


def train_orientation_classifier(data_dir: str = "", name: str = "mnist_embedded",
                                 train_split: str = "train[:90%]",
                                 test_split: str = "train[90%:]", num_steps: int = 1500,
                                 seed: int = 0) -> tuple[DigitClassifier, dict]:
    """DigitCNN over ORIENTATIONS, trained on the unaugmented digits of `train_split` shown
    upright, mirrored and rotated, half of each resampled (orient). Returns it and its read of
    the held-out `test_split` in each orientation: {'<orientation>_read_transformed': share read
    as mirrored or rotated}. Digits symmetric under a flip or a half turn (0, 1, 8) read as
    upright either way, so the upright share is the floor of what a sample set can show."""
    images, _ = _split(name, train_split, data_dir)
    test_images, _ = _split(name, test_split, data_dir)
    x, y = _oriented(images, seed)
    tx_, ty = _oriented(test_images, seed + 1)
    classifier = fit_classifier(x, y, tx_, ty, len(ORIENTATIONS), num_steps, seed=seed)
    read = classifier.predict(tx_)
    calibration = {f"{o}_read_transformed": float(np.mean(read[ty == k] != 0))
                   for k, o in enumerate(ORIENTATIONS)}
    return classifier, calibration
