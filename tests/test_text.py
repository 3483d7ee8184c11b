"""Text-to-image conditioning: byte tokens, the caption set, cross-attention against its closed
form, padding masks, prompt dropout and the null prompt, start-up errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from diffjax.conditioning import make_conditioning
from diffjax.conditioning.text import DIGIT_TEMPLATES, TextOptions, digit_caption
from diffjax.errors import ConfigError
from diffjax.experiment import validate
from diffjax.models import NetworkSpec, make_network
from diffjax.models.text import BOS, CrossAttention, byte_tokens

SMALL_TEXT = TextOptions(width=16, depth=1, num_heads=2, context_length=32)


def test_byte_tokens_are_utf8_bytes_after_a_start_token():
    tokens, mask = byte_tokens(["ab", ""], 4)
    np.testing.assert_array_equal(tokens, [[BOS, ord("a") + 2, ord("b") + 2, 0], [BOS, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match="'abcd' has 4 bytes"):
        byte_tokens(["abcd"], 4)


def test_caption_set_has_varied_templates_per_digit():
    assert digit_caption(7, 0) == "a handwritten seven"
    assert digit_caption(7, 1) == "the digit 7"
    assert digit_caption(7, 2) == "7, drawn thin"
    captions = {digit_caption(3, k) for k in range(len(DIGIT_TEMPLATES))}
    assert len(captions) == len(DIGIT_TEMPLATES) >= 10


def test_cross_attention_with_one_token_is_the_value_projection():
    """softmax over a single key is 1, so out = W_o (W_v c + b_v) + b_o for every query."""
    layer = CrossAttention(num_heads=2, zero_init=False)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
    context = jax.random.normal(jax.random.PRNGKey(1), (2, 1, 6))
    mask = jnp.ones((2, 1), bool)
    params = layer.init(jax.random.PRNGKey(2), x, context, mask)["params"]
    out = layer.apply({"params": params}, x, context, mask)
    v = context[:, 0] @ params["v"]["kernel"] + params["v"]["bias"]
    expected = v @ params["out"]["kernel"] + params["out"]["bias"]
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None], out.shape), rtol=1e-5,
                               atol=1e-5)


def test_padded_context_tokens_change_nothing():
    layer = CrossAttention(num_heads=2, zero_init=False)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
    context = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 6))
    mask = jnp.ones((2, 3), bool)
    params = layer.init(jax.random.PRNGKey(2), x, context, mask)
    padded = jnp.concatenate([context, 100 * jax.random.normal(jax.random.PRNGKey(3),
                                                                (2, 4, 6))], axis=1)
    pad_mask = jnp.concatenate([mask, jnp.zeros((2, 4), bool)], axis=1)
    np.testing.assert_allclose(layer.apply(params, x, padded, pad_mask),
                               layer.apply(params, x, context, mask), rtol=1e-5, atol=1e-5)
    unmasked = jnp.ones_like(pad_mask)  # the same tokens unmasked do change the output
    assert not np.allclose(layer.apply(params, x, padded, unmasked),
                           layer.apply(params, x, context, mask), atol=1e-3)


def _text_net(name="unet"):
    from diffjax.models.dit import DiTOptions
    from diffjax.models.unet import UNetOptions

    conditioning = make_conditioning("text", SMALL_TEXT, 10)
    options = {"unet": UNetOptions(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
               "dit": DiTOptions(depth=2, hidden_size=32, num_heads=4, patch_size=2)}[name]
    network = make_network(name, options, NetworkSpec((8, 8, 1), 0, "float32",
                                                      conditioning.text))
    params = network.init(jax.random.PRNGKey(0))
    # the cross-attention and output layers start at zero: perturb them so text matters
    zero_init = ("cross", "conv_out", "final_layer", "adaLN")  # and the output layers
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: (p + 0.3 * jax.random.normal(jax.random.PRNGKey(len(str(path))), p.shape)
                         if any(k in str(path) for k in zero_init) else p), params)
    return conditioning, network, params


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_network_ignores_padded_prompt_tokens_and_reads_the_prompt(name):
    conditioning, network, params = _text_net(name)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
    t = jnp.full((2,), 500.0)
    cond = conditioning.from_labels(jnp.asarray([3, 7]))
    noisy_pad = {**cond, "tokens": jnp.where(cond["mask"], cond["tokens"], 77)}
    out = network.apply(params, x, t, cond)
    np.testing.assert_allclose(network.apply(params, x, t, noisy_pad), out, rtol=1e-5,
                               atol=1e-6)
    other = conditioning.from_labels(jnp.asarray([4, 1]))
    assert not np.allclose(network.apply(params, x, t, other), out, atol=1e-4)


def test_prompt_dropout_gives_the_null_prompt_and_its_unconditional_output():
    conditioning, network, params = _text_net()
    dropping = make_conditioning("text", TextOptions(**{**SMALL_TEXT.__dict__, "dropout": 0.5}),
                                 10)
    labels = jnp.arange(8) % 10
    cond = dropping.train({"label": labels}, jax.random.PRNGKey(5))
    null = dropping.null(cond)
    dropped = np.all(np.asarray(cond["tokens"] == null["tokens"]), axis=1)
    assert 0 < dropped.sum() < 8  # some captions dropped, some kept
    np.testing.assert_array_equal(np.asarray(cond["mask"])[dropped],
                                  np.asarray(null["mask"])[dropped])
    # the dropout rate: 0.5 of 4,000 captions within 4 standard deviations (sd 0.0079)
    many = dropping.train({"label": jnp.arange(4000) % 10}, jax.random.PRNGKey(6))
    rate = np.mean(np.all(np.asarray(many["mask"]) == np.asarray(null["mask"][:1]), axis=1))
    assert abs(rate - 0.5) < 0.032, rate
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 8, 1))
    t = jnp.full((8,), 500.0)
    out, uncond = network.apply(params, x, t, cond), network.apply(params, x, t, null)
    np.testing.assert_allclose(np.asarray(out)[dropped], np.asarray(uncond)[dropped], atol=1e-6)
    assert not np.allclose(np.asarray(out)[~dropped], np.asarray(uncond)[~dropped], atol=1e-4)


def test_text_start_up_errors(data_dir):
    config = tiny_config(data_dir, **{"conditioning.name": "text",
                                      "conditioning.text.context_length": 32})
    config.sampling.prompts = ("x" * 40,)
    with pytest.raises(ConfigError, match="prompt 'x{40}' has 40 bytes.*context_length"):
        validate(config)
    config.sampling.prompts = ("a handwritten three",)
    config.conditioning.text.context_length = 12
    with pytest.raises(ConfigError, match="conditioning.text.context_length=12 is invalid"):
        validate(config)
    plain = tiny_config(data_dir)
    plain.sampling.prompts = ("a three",)
    with pytest.raises(ConfigError, match="prompts need a text-conditional model"):
        validate(plain)
    plain.sampling.prompts = ()
    plain.sampling.guidance_scale = 2.0
    with pytest.raises(ConfigError, match="guidance_scale=2.0 is invalid"):
        validate(plain)
