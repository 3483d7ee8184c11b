"""Text conditioning inside a network: a byte-level tokenizer, a small transformer text encoder
trained jointly with the network, and the cross-attention layer that feeds its tokens to image
features (LDM, Rombach et al. 2022, Sec. 3.3; PixArt-alpha's cross-attention in DiT blocks).

Text encoders are plug-ins (TEXT_ENCODERS, picked by config.conditioning.text.encoder): an entry
gives a tokenizer (host-side, strings -> tokens and mask) and a Flax module (tokens, mask) ->
context [B, L, width]. A pretrained encoder (T5, CLIP) registers the same way: its tokenizer, and
a module whose init reads the user's weights file (and wraps its output in stop_gradient when
frozen)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.registry import Registry

TEXT_ENCODERS = Registry("text encoder", "conditioning.text.encoder", "conditioning.text")

PAD, BOS, BYTE_OFFSET = 0, 1, 2   # byte b is token b + 2; every prompt starts with BOS
BYTE_VOCAB = 256 + BYTE_OFFSET


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """What a network needs to condition on text: the encoder's name and shape. context_length
    counts the BOS token."""

    encoder: str = "bytes"
    context_length: int = 32
    width: int = 128
    depth: int = 2
    num_heads: int = 4


def byte_tokens(prompts, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 byte tokens of `prompts` (a sequence of str): (tokens [N, L] int32, mask [N, L]
    bool), BOS first, padded with PAD. Raises ValueError naming a prompt that does not fit."""
    tokens = np.zeros((len(prompts), context_length), np.int32)
    for i, prompt in enumerate(prompts):
        ids = [BOS] + [b + BYTE_OFFSET for b in prompt.encode("utf-8")]
        if len(ids) > context_length:
            raise ValueError(f"prompt {prompt!r} has {len(ids) - 1} bytes; the text encoder's "
                             f"context holds {context_length - 1} (context_length="
                             f"{context_length} with the start token)")
        tokens[i, :len(ids)] = ids
    return tokens, tokens != PAD


def attention_mask(mask, num_queries: int):
    """Key padding mask [B, L] -> jax.nn.dot_product_attention's [B, 1, num_queries, L]."""
    return jnp.broadcast_to(mask[:, None, None, :], (mask.shape[0], 1, num_queries,
                                                     mask.shape[1]))


class TransformerTextEncoder(nn.Module):
    """Token and learned position embeddings, `depth` pre-LN transformer layers with the padding
    mask, a final LayerNorm: (tokens [B, L], mask [B, L]) -> [B, L, width] float32."""

    vocab_size: int
    context_length: int
    width: int
    depth: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, mask):
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        h = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                     name="token_embed")(tokens)
        pos = self.param("pos_embed", nn.initializers.normal(0.01),
                         (self.context_length, self.width))
        h = (h + pos[None, :tokens.shape[1]]).astype(self.dtype)
        bias_mask = attention_mask(mask, tokens.shape[1])
        for i in range(self.depth):
            y = nn.LayerNorm(name=f"ln_attn_{i}", **dense)(h)
            y = nn.MultiHeadDotProductAttention(self.num_heads, name=f"attn_{i}", **dense)(
                y, y, mask=bias_mask)
            h = h + y
            y = nn.LayerNorm(name=f"ln_mlp_{i}", **dense)(h)
            y = nn.Dense(4 * self.width, name=f"mlp_in_{i}", **dense)(y)
            h = h + nn.Dense(self.width, name=f"mlp_out_{i}", **dense)(nn.gelu(y))
        return nn.LayerNorm(name="ln_final", **dense)(h).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class TextEncoderEntry:
    """A registered encoder: tokenize(prompts, context_length) -> (tokens, mask) on the host, and
    module(spec, dtype) -> a Flax module (tokens, mask) -> context [B, L, width]."""

    tokenize: Callable
    module: Callable


@TEXT_ENCODERS.register("bytes")
def bytes_encoder(options=None) -> TextEncoderEntry:
    """Byte tokens and a small transformer, trained jointly with the network."""
    del options
    return TextEncoderEntry(
        tokenize=byte_tokens,
        module=lambda spec, dtype: TransformerTextEncoder(
            BYTE_VOCAB, spec.context_length, spec.width, spec.depth, spec.num_heads, dtype,
            name="text_encoder"))


def text_encoder(name: str) -> TextEncoderEntry:
    """The registered encoder `name`."""
    return TEXT_ENCODERS.get(name).factory(None)


def encode_context(spec: TextSpec, dtype, cond: dict):
    """A network's text input: (context [B, L, width] from spec's encoder, a submodule named
    'text_encoder' of the calling module, and the padding mask [B, L]) of cond['tokens'],
    cond['mask']."""
    return text_encoder(spec.encoder).module(spec, dtype)(cond["tokens"], cond["mask"]), \
        cond["mask"]


class CrossAttention(nn.Module):
    """Queries from image tokens x [B, N, D], keys and values from the text context [B, L, Dc]
    with its padding mask [B, L] (padded tokens get no weight). LayerNorm on x, then
    softmax(q k^T / sqrt(d)) v per head and an output projection, zero-initialised so the block
    starts as the identity when added residually. Returns [B, N, D]."""

    num_heads: int
    dtype: Any = jnp.float32
    zero_init: bool = True

    @nn.compact
    def __call__(self, x, context, mask):
        batch, num, width = x.shape
        head_dim = width // self.num_heads
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        q = nn.Dense(width, name="q", **dense)(nn.LayerNorm(name="norm", **dense)(x))
        k = nn.Dense(width, name="k", **dense)(context.astype(self.dtype))
        v = nn.Dense(width, name="v", **dense)(context.astype(self.dtype))
        split = lambda a: a.reshape(batch, a.shape[1], self.num_heads, head_dim)  # noqa: E731
        out = jax.nn.dot_product_attention(split(q), split(k), split(v),
                                           mask=attention_mask(mask, num))
        init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        return nn.Dense(width, kernel_init=init, name="out", **dense)(
            out.reshape(batch, num, width))
