"""A small CNN digit classifier trained on the real digits, to read which digit a generated image
shows: the prompt fidelity of a text- or class-conditional model is the share of samples whose
predicted digit is the one asked for."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax import data


class DigitCNN(nn.Module):
    """[B, H, W, 1] uint8 -> [B, 10] logits: two conv/pool stages and an MLP (LeNet-like)."""

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        for features in (32, 64):
            x = nn.relu(nn.Conv(features, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(0.3, deterministic=not train)(nn.relu(nn.Dense(128)(x)))
        return nn.Dense(10)(x)


@dataclasses.dataclass
class DigitClassifier:
    """Trained params and the held-out accuracy they reached."""

    params: dict
    held_out_accuracy: float

    def predict(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """images: [N, H, W, 1] uint8 -> predicted digits [N] int."""
        apply = jax.jit(lambda p, x: jnp.argmax(DigitCNN().apply({"params": p}, x), -1))
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
    model, tx = DigitCNN(), optax.adam(1e-3)
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
    for i in range(num_steps):
        idx = rng.integers(0, len(images), batch_size)
        params, opt_state = step(params, opt_state, images[idx], labels[idx],
                                 jax.random.fold_in(key, i))
    classifier = DigitClassifier(params, 0.0)
    classifier.held_out_accuracy = float(np.mean(classifier.predict(test_images) == test_labels))
    return classifier
