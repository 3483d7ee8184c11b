"""Text prompts as conditioning (config.conditioning.name='text'): a caption per training image,
tokenized by the text encoder's tokenizer, dropped to the empty prompt with probability `dropout`
for classifier-free guidance; the empty prompt is the null condition.

Captions come from the embedded caption set: every digit label has varied templates
("a handwritten seven", "the digit 7", "7, drawn thin", ...; DIGIT_TEMPLATES), one drawn per
image and step from the training key, so the pairs are a pure function of (seed, step) like the
data order. Sampling uses config.sampling.prompts, or without them the first template of each
label. cond = {'tokens': [B, L] int32, 'mask': [B, L] bool}; sampling ids index a prompt table."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.conditioning import CONDITIONINGS, Conditioning
from diffjax.errors import ConfigError
from diffjax.models.text import TEXT_ENCODERS, TextSpec, text_encoder
from diffjax.options import check

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = (
    "a handwritten {word}", "the digit {digit}", "{digit}, drawn thin", "the number {word}",
    "a {word}", "handwritten digit {digit}", "{word}", "a drawing of the number {word}",
    "{digit}, written by hand", "an image of a {word}", "the numeral {digit}", "digit {word}",
)


def digit_caption(label: int, template: int = 0) -> str:
    """The caption of digit `label` with template `template` of DIGIT_TEMPLATES."""
    return DIGIT_TEMPLATES[template].format(word=DIGIT_WORDS[label], digit=label)


@dataclasses.dataclass(frozen=True)
class TextOptions:
    """encoder: a TEXT_ENCODERS name ('bytes': byte tokens + a small transformer trained with the
    network); context_length: tokens per prompt including the start token; width, depth,
    num_heads: the encoder's; dropout: the share of captions replaced by the empty prompt."""

    encoder: str = "bytes"
    context_length: int = 32
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    dropout: float = 0.1

    def __post_init__(self):
        check(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        check(self.context_length >= 2, "context_length", self.context_length, "must be >= 2")
        for key in ("width", "depth", "num_heads"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        check(self.width % self.num_heads == 0, "width", self.width,
              f"must be divisible by num_heads={self.num_heads}")
        if self.encoder not in TEXT_ENCODERS:
            check(False, "encoder", self.encoder,
                  f"is not a registered text encoder; allowed: {', '.join(TEXT_ENCODERS.names())}")

    @property
    def spec(self) -> TextSpec:
        return TextSpec(self.encoder, self.context_length, self.width, self.depth,
                        self.num_heads)


@dataclasses.dataclass(frozen=True, eq=False)
class TextPrompt(Conditioning):
    """See the module docstring. captions: [templates, classes, L] tokens and masks of the
    caption set; prompts: the sampling table [P, L]."""

    options: TextOptions = TextOptions()
    caption_tokens: np.ndarray = None
    caption_mask: np.ndarray = None
    prompt_tokens: np.ndarray = None
    prompt_mask: np.ndarray = None
    prompts: tuple[str, ...] = ()
    num_classes = 0
    supports_guidance = True

    @property
    def guidance_trained(self) -> bool:
        return self.options.dropout > 0

    @property
    def text(self) -> TextSpec:
        return self.options.spec

    def _null_tokens(self, batch: int):
        null, null_mask = text_encoder(self.options.encoder).tokenize(
            [""], self.options.context_length)
        return (jnp.broadcast_to(jnp.asarray(null), (batch, null.shape[1])),
                jnp.broadcast_to(jnp.asarray(null_mask), (batch, null.shape[1])))

    def train(self, batch: dict, rng) -> dict:
        labels = batch["label"]
        rng_template, rng_drop = jax.random.split(rng)
        template = jax.random.randint(rng_template, labels.shape, 0, len(DIGIT_TEMPLATES))
        tokens = jnp.asarray(self.caption_tokens)[template, labels]
        mask = jnp.asarray(self.caption_mask)[template, labels]
        if self.options.dropout > 0:
            drop = jax.random.bernoulli(rng_drop, self.options.dropout, labels.shape)[:, None]
            null, null_mask = self._null_tokens(labels.shape[0])
            tokens, mask = jnp.where(drop, null, tokens), jnp.where(drop, null_mask, mask)
        return {"tokens": tokens, "mask": mask}

    def true(self, batch: dict) -> dict:
        labels = batch["label"]
        return {"tokens": jnp.asarray(self.caption_tokens)[0, labels],
                "mask": jnp.asarray(self.caption_mask)[0, labels]}

    def from_labels(self, labels) -> dict:
        """labels: [B] ids into the sampling table (the prompts, else one caption per digit)."""
        return {"tokens": jnp.asarray(self.prompt_tokens)[labels],
                "mask": jnp.asarray(self.prompt_mask)[labels]}

    def null(self, cond: dict) -> dict:
        tokens, mask = self._null_tokens(cond["tokens"].shape[0])
        return {"tokens": tokens, "mask": mask}

    def labels_for(self, num_samples: int, seed: int = 0, fixed: tuple = ()) -> np.ndarray:
        """Sampling ids: `fixed` cycled, else every prompt in turn (prompts given) or random
        digits from `seed`."""
        if fixed:
            return np.resize(np.asarray(fixed, np.int32), num_samples)
        if self.prompts:
            return np.resize(np.arange(len(self.prompts), dtype=np.int32), num_samples)
        rng = np.random.default_rng(seed)
        return rng.integers(0, len(self.prompt_tokens), num_samples).astype(np.int32)

    def with_prompts(self, prompts) -> TextPrompt:
        """This conditioning sampling `prompts` (ConfigError naming one that does not fit)."""
        prompts = tuple(prompts)
        if not prompts:
            return self
        try:
            tokens, mask = text_encoder(self.options.encoder).tokenize(
                prompts, self.options.context_length)
        except ValueError as e:
            raise ConfigError(f"config.sampling.prompts is invalid: {e}; raise "
                              f"config.conditioning.text.context_length") from None
        return dataclasses.replace(self, prompt_tokens=tokens, prompt_mask=mask, prompts=prompts)


@CONDITIONINGS.register("text", options=TextOptions)
def text(options: TextOptions, num_classes: int) -> TextPrompt:
    if num_classes != len(DIGIT_WORDS):
        raise ConfigError(f"config.conditioning.name='text' captions the digit labels (the "
                          f"embedded caption set needs 10 classes); config.data.name has "
                          f"{num_classes} classes")
    tokenize = text_encoder(options.encoder).tokenize
    captions = [[digit_caption(label, k) for label in range(num_classes)]
                for k in range(len(DIGIT_TEMPLATES))]
    try:
        tokens, mask = tokenize([c for row in captions for c in row], options.context_length)
    except ValueError as e:
        raise ConfigError(f"config.conditioning.text.context_length={options.context_length} "
                          f"is invalid: a caption does not fit: {e}") from None
    shape = (len(DIGIT_TEMPLATES), num_classes, options.context_length)
    return TextPrompt(options, tokens.reshape(shape), mask.reshape(shape),
                      tokens.reshape(shape)[0], mask.reshape(shape)[0])
