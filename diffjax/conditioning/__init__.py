"""Conditioning plug-ins: what the network is conditioned on besides the noise level, drawn from
the batch for training (with dropout to the null condition for classifier-free guidance) and made
from labels for sampling. config.conditioning.name picks one; options: config.conditioning.<name>.

A conditioning provides:
  num_classes                      classes the network embeds as cond['label'] (0: none)
  train(batch, rng) -> cond        per-example pytree for a training batch (with dropout)
  true(batch) -> cond              the batch's own condition (validation, inpainting)
  from_labels(labels [B]) -> cond  for sampling
  null(cond) -> cond               the unconditional input of guidance (supports_guidance)
  labels_for(n, seed, fixed)       sampling labels: `fixed` cycled, or drawn from `seed`
  text                             a TextSpec where cond carries text tokens (None otherwise)
  with_prompts(prompts)            (text) the same conditioning sampling these prompts
  bind(x_shape) -> conditioning    checked against the network's input shape [H, W, C]
  input_maps() -> ((key, ch), ...) cond entries the network takes as extra input channels
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.errors import ConfigError
from diffjax.options import check
from diffjax.registry import Registry

CONDITIONINGS = Registry("conditioning", "conditioning.name", "conditioning")


class Conditioning:
    """The contract (see the module docstring). The base is unconditional."""

    num_classes: int = 0
    text = None                      # a models.text.TextSpec where cond holds text tokens
    supports_guidance: bool = False  # whether null() exists
    guidance_trained: bool = False   # whether training ever shows the null condition

    def train(self, batch: dict, rng) -> dict:
        return {}

    def true(self, batch: dict) -> dict:
        return {}

    def from_labels(self, labels) -> dict:
        return {}

    def null(self, cond: dict) -> dict | None:
        return None

    def bind(self, x_shape) -> Conditioning:
        return self

    def input_maps(self) -> tuple[tuple[str, int], ...]:
        return ()

    def labels_for(self, num_samples: int, seed: int = 0, fixed: tuple = ()) -> np.ndarray:
        """[num_samples] int32: `fixed` cycled, else uniform over the classes from `seed`
        (zeros for an unconditional model, whose labels are ignored)."""
        if fixed:
            return np.resize(np.asarray(fixed, np.int32), num_samples)
        rng = np.random.default_rng(seed)
        return rng.integers(0, max(self.num_classes, 1), num_samples).astype(np.int32)


@CONDITIONINGS.register("none")
def unconditional(options, num_classes: int) -> Conditioning:
    del options, num_classes
    return Conditioning()


@dataclasses.dataclass(frozen=True)
class ClassLabelOptions:
    """dropout: the probability of replacing a training label by the null label, which trains
    the unconditional model of classifier-free guidance (Ho & Salimans 2022; 0.1-0.2 typical)."""

    dropout: float = 0.0

    def __post_init__(self):
        check(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class ClassLabel(Conditioning):
    """The dataset's class label as cond['label'] [B] int32; the null label is num_classes."""

    num_classes: int = 0
    dropout: float = 0.0
    supports_guidance = True

    @property
    def guidance_trained(self) -> bool:
        return self.dropout > 0

    def train(self, batch: dict, rng) -> dict:
        labels = batch["label"]
        if self.dropout > 0:
            drop = jax.random.bernoulli(rng, self.dropout, labels.shape)
            labels = jnp.where(drop, self.num_classes, labels)
        return {"label": labels}

    def true(self, batch: dict) -> dict:
        return {"label": batch["label"]}

    def from_labels(self, labels) -> dict:
        return {"label": labels}

    def null(self, cond: dict) -> dict:
        return {"label": jnp.full(jnp.shape(cond["label"]), self.num_classes, jnp.int32)}


@CONDITIONINGS.register("class_label", options=ClassLabelOptions)
def class_label(options: ClassLabelOptions, num_classes: int) -> ClassLabel:
    if num_classes <= 0:
        raise ConfigError("config.conditioning.name='class_label' needs a labelled dataset, but "
                          "config.data.name has no 'label' feature; use conditioning.name='none'")
    return ClassLabel(num_classes=num_classes, dropout=options.dropout)


@dataclasses.dataclass(frozen=True)
class AugmentLabels(Conditioning):
    """`inner` plus cond['augment'] [B, dim]: the training batch's augmentation labels
    (batch['augment'], set by the train step's augmentation), zeros (the identity) everywhere
    else, so samples are asked to be un-augmented (EDM, App. F.2)."""

    inner: Conditioning
    dim: int

    num_classes = property(lambda self: self.inner.num_classes)
    text = property(lambda self: self.inner.text)
    supports_guidance = property(lambda self: self.inner.supports_guidance)
    guidance_trained = property(lambda self: self.inner.guidance_trained)

    def __getattr__(self, name):  # the inner conditioning's other attributes (text prompts)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _zeros(self, cond: dict, batch: int) -> dict:
        return {**cond, "augment": jnp.zeros((batch, self.dim), jnp.float32)}

    def train(self, batch: dict, rng) -> dict:
        cond = self.inner.train(batch, rng)
        if "augment" in batch:
            return {**cond, "augment": batch["augment"]}
        return self._zeros(cond, next(iter(batch.values())).shape[0])

    def true(self, batch: dict) -> dict:
        return self._zeros(self.inner.true(batch), next(iter(batch.values())).shape[0])

    def from_labels(self, labels) -> dict:
        return self._zeros(self.inner.from_labels(labels), jnp.shape(labels)[0])

    def null(self, cond: dict) -> dict | None:
        null = self.inner.null(cond)
        return None if null is None else {**null, "augment": cond["augment"]}

    def labels_for(self, num_samples: int, seed: int = 0, fixed: tuple = ()) -> np.ndarray:
        return self.inner.labels_for(num_samples, seed, fixed)

    def with_prompts(self, prompts):
        return AugmentLabels(self.inner.with_prompts(prompts), self.dim)

    def with_images(self, images, labels=None):
        return AugmentLabels(self.inner.with_images(images, labels), self.dim)

    def bind(self, x_shape):
        return AugmentLabels(self.inner.bind(x_shape), self.dim)

    def input_maps(self):
        return (*self.inner.input_maps(), ("augment", self.dim))


def make_conditioning(name: str, options, num_classes: int) -> Conditioning:
    """The conditioning registered as `name` (options None: its defaults)."""
    entry = CONDITIONINGS.get(name)
    return entry.factory(options if options is not None else entry.default_options(), num_classes)


from diffjax.conditioning import low_res, text  # noqa: E402,F401  (register theirs)
