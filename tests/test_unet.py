"""Tests for the DDPM/ADM U-Net and its factory (diffjax/models)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import NetworkSpec, UNetOptions, count_params, make_network
from diffjax.models.unet import NORM_EPS, NORM_GROUPS, AttnBlock, UNet, check_unet_fits
from diffjax.options import from_mapping

TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1)
TINY_SHAPE = (2, 16, 16, 1)


def _build(image_shape=(16, 16, 1), num_classes=0, dtype="float32", **options):
    """The registered 'unet' network (options: UNetOptions fields; default the DDPM CIFAR-10
    U-Net) for inputs of image_shape."""
    return make_network("unet", UNetOptions(**options), NetworkSpec(image_shape, num_classes,
                                                                    dtype))


def _check(options: dict, image_shape) -> None:
    check_unet_fits(UNetOptions(**options), image_shape)


def _random_params(model: UNet, shape=TINY_SHAPE, seed: int = 123):
    """Random params with the shapes of `model.init`, drawn in NumPy (no compile).

    Unlike the real init, no layer is zero, so every layer influences the output. Kernels and
    embeddings ~ N(0, 1/fan_in), GroupNorm scales ~ 1 + N(0, 0.05^2), biases ~ N(0, 0.05^2).
    """
    shapes = jax.eval_shape(
        lambda: model.init(
            {"params": jax.random.PRNGKey(0)}, jnp.zeros(shape), jnp.zeros(shape[:1])
        )
    )["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        noise = rng.standard_normal(leaf.shape).astype(leaf.dtype)
        if name in ("kernel", "embedding"):
            return jnp.asarray(noise / np.sqrt(np.prod(leaf.shape[:-1])))
        return jnp.asarray((name == "scale") + 0.05 * noise)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _inputs(shape=TINY_SHAPE):
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    t = jnp.array([10.0, 500.0])[: shape[0]]
    return x, t


def test_ddpm_cifar10_param_count_matches_diffusers():
    # diffusers UNet2DModel, google/ddpm-cifar10-32 config: 35,746,307 parameters.
    network = _build((32, 32, 3))
    assert count_params(jax.eval_shape(network.init, jax.random.PRNGKey(0))) == 35_746_307


def test_the_speed_peer_is_diffusers_ddpm_unet_of_our_size():
    # experiments/peer_speed.py times diffusers' model against ours: same count, same one head
    from experiments.peer_speed import peer_unet

    peer = peer_unet()
    assert sum(p.numel() for p in peer.parameters()) == 35_746_307
    assert peer.down_blocks[1].attentions[0].heads == 1


def test_init_output_is_zero_as_in_adm():
    # ADM zero-initialises the last conv of each block and the output conv (`zero_module`).
    model = UNet(out_channels=1, **TINY)
    x, t = _inputs()
    init = jax.jit(model.init)  # Compiling is faster than eager init on CPU.
    variables = init({"params": jax.random.PRNGKey(0)}, x, t)
    assert set(variables) == {"params"}
    assert not np.any(variables["params"]["conv_out"]["kernel"])
    np.testing.assert_array_equal(jax.jit(model.apply)(variables, x, t), np.zeros(TINY_SHAPE))


def test_tiny_forward_shape_dtype_and_dropout():
    model = UNet(out_channels=1, **TINY)
    params = _random_params(model)
    x, t = _inputs()

    @functools.partial(jax.jit, static_argnames="train")
    def apply(seed, train):
        rngs = {"dropout": jax.random.PRNGKey(seed)}
        return model.apply({"params": params}, x, t, train=train, rngs=rngs)

    out = apply(0, train=False)
    assert out.shape == TINY_SHAPE and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.abs(out).max()) > 0

    # train=False is deterministic and ignores the rng; train=True depends on it.
    np.testing.assert_array_equal(out, apply(1, train=False))
    out_a, out_b = apply(0, train=True), apply(1, train=True)
    assert not np.allclose(out_a, out_b)
    assert not np.allclose(out_a, out)
    np.testing.assert_array_equal(out_a, apply(0, train=True))


def test_class_conditioning_and_null_label():
    num_classes = 10
    model = UNet(out_channels=1, num_classes=num_classes, **TINY)
    params = _random_params(model)
    assert params["class_embed"]["embedding"].shape == (num_classes + 1, 4 * TINY["ch"])
    x, t = _inputs()
    apply = jax.jit(lambda labels: model.apply({"params": params}, x, t, labels))

    out_0 = apply(jnp.array([0, 0], jnp.int32))
    out_3 = apply(jnp.array([3, 3], jnp.int32))
    assert not np.allclose(out_0, out_3)

    out_none = apply(None)
    out_null = apply(jnp.full((2,), num_classes, jnp.int32))
    np.testing.assert_allclose(out_none, out_null, rtol=1e-5, atol=1e-6)


def test_unconditional_model_rejects_labels():
    model = UNet(out_channels=1, **TINY)
    x, t = _inputs()
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, jnp.zeros((2,), jnp.int32))


def test_the_network_embeds_the_classes_the_conditioning_feeds():
    network = _build((16, 16, 1), num_classes=7, **TINY)
    assert network.module.num_classes == 7 and network.out_channels == 1
    assert _build((16, 16, 1), **TINY).module.num_classes == 0
    from diffjax.conditioning import make_conditioning

    with pytest.raises(ValueError, match=r"config.conditioning.name='class_label' needs a "
                                         r"labelled dataset"):
        make_conditioning("class_label", None, num_classes=0)


def test_options_from_a_config_section_accept_lists():
    options = from_mapping(UNetOptions, {**TINY, "ch_mult": [1, 2], "attn_resolutions": [8]},
                           "model.unet")
    assert options.ch_mult == (1, 2) and options.attn_resolutions == (8,)
    assert _build((16, 16, 1), **vars(options)).module.ch_mult == (1, 2)
    with pytest.raises(ValueError, match=r"config.model.unet has no field 'chh'; its fields are: "
                                         r"attn_resolutions, ch, ch_mult"):
        from_mapping(UNetOptions, {"chh": 3}, "model.unet")


def test_validate_rejects_image_size_not_divisible_by_levels():
    # 28 -> 14 -> 7 -> 3.5: four levels need sizes divisible by 8.
    with pytest.raises(ValueError, match=r"ch_mult.*28.*3\.5") as info:
        _check({}, (28, 28, 1))
    assert "multiples of 8" in str(info.value)


def test_validate_rejects_attn_resolution_that_never_occurs():
    with pytest.raises(ValueError, match=r"attn_resolutions.*3.*\[16, 8\]"):
        _check({**TINY, "attn_resolutions": (3,)}, (16, 16, 1))


def test_unknown_compute_dtype_is_rejected():
    from diffjax.settings import TrainingOptions

    with pytest.raises(ValueError, match=r"compute_dtype='float16' is unknown; allowed: float32, "
                       r"bfloat16"):
        TrainingOptions(compute_dtype="float16")


def test_unknown_network_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"config.model.name='transformer' is unknown; allowed: "
                                         r"unet"):
        make_network("transformer", None, NetworkSpec((32, 32, 3)))


@pytest.mark.parametrize(
    "overrides, image_shape, pattern",
    [
        (dict(ch=100), (32, 32, 3), r"ch=100.*multiple of 32"),
        (dict(num_heads=3), (32, 32, 3), r"num_heads=3.*256"),
        (dict(head_channels=48), (32, 32, 3), r"head_channels=48"),
        (dict(dropout=1.0), (32, 32, 3), r"dropout=1\.0.*\[0, 1\)"),
        (dict(), (32, 16, 3), r"not square|square inputs"),
    ],
)
def test_validate_rejects_bad_values(overrides, image_shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        _check(overrides, image_shape)


def _param_count(**options) -> int:
    model = UNet(out_channels=1, **{**TINY, "ch": 64}, **options)
    x, t = jnp.zeros(TINY_SHAPE), jnp.zeros(TINY_SHAPE[:1])
    return count_params(jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t)["params"])


def test_adm_options_add_the_parameters_of_adms_blocks():
    """ADM (Dhariwal & Nichol 2021, Sec. 3), by hand for ch 64, ch_mult (1, 2), one block per
    level, time embedding E = 4 ch = 256. use_scale_shift_norm: each ResBlock's embedding
    projection gives 2C (scale and shift) instead of C, + (E + 1) C each. resblock_updown: each
    resampling 3x3 conv (9C^2 + C) becomes a ResBlock(C -> C): two GroupNorms (2C each), two 3x3
    convs (9C^2 + C each), the embedding projection ((E + 1) C, or 2x with scale-shift)."""
    E = 256
    res_channels = [64, 128, 128, 128, 128, 128, 64, 64]  # down0, down1, mid x2, up1 x2, up0 x2
    resample_channels = [64, 128]  # down0_downsample, up1_upsample
    base = _param_count()
    assert _param_count(use_scale_shift_norm=True) - base == (E + 1) * sum(res_channels)
    resblock = lambda c, k=1: 4 * c + 2 * (9 * c * c + c) + k * (E + 1) * c  # noqa: E731
    assert _param_count(resblock_updown=True) - base == sum(
        resblock(c) - (9 * c * c + c) for c in resample_channels)
    assert _param_count(resblock_updown=True, use_scale_shift_norm=True) - base == sum(
        (E + 1) * c for c in res_channels) + sum(
        resblock(c, 2) - (9 * c * c + c) for c in resample_channels)
    assert _param_count(head_channels=32) == base  # heads split channels, they add no params


def test_head_channels_sets_the_heads_of_every_attention_block():
    """ADM's num_head_channels: heads = C / head_channels (128 / 32 = 4 at the 8x8 level);
    without it, num_heads."""
    def heads(**options):
        found = {}

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, AttnBlock) and context.method_name == "__call__":
                found[context.module.name] = context.module.num_heads
            return next_fun(*args, **kwargs)

        model = UNet(out_channels=1, **{**TINY, "ch": 64}, **options)
        with nn.intercept_methods(record):
            jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(TINY_SHAPE),
                           jnp.zeros(TINY_SHAPE[:1]))
        return found

    names = {"down1_attn0", "mid_attn", "up1_attn0", "up1_attn1"}
    assert heads(head_channels=32) == dict.fromkeys(names, 4)
    assert heads(num_heads=2) == dict.fromkeys(names, 2)


def test_attention_block_is_multi_head_softmax_attention_written_out():
    """x + W_o concat_h softmax(q_h k_h^T / sqrt(d)) v_h, q, k, v = W GroupNorm(x) + b, with
    d = C / heads (Vaswani et al. 2017, eq. 1; ADM's QKVAttention)."""
    batch, size, channels, num_heads = 2, 4, 64, 4
    x = np.random.default_rng(1).standard_normal((batch, size, size, channels)).astype(np.float32)
    block = AttnBlock(num_heads)
    shapes = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)["params"]
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda s: (rng.standard_normal(s.shape) / 4).astype(np.float32),
                          shapes)
    out = np.asarray(block.apply({"params": params}, x), np.float64)

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    groups = x.reshape(batch, size * size, NORM_GROUPS, channels // NORM_GROUPS).astype(
        np.float64)
    mean, var = groups.mean((1, 3), keepdims=True), groups.var((1, 3), keepdims=True)
    h = ((groups - mean) / np.sqrt(var + NORM_EPS)).reshape(batch, size * size, channels)
    h = h * p["norm"]["scale"] + p["norm"]["bias"]
    q, k, v = (h @ p[n]["kernel"] + p[n]["bias"] for n in "qkv")
    d = channels // num_heads
    heads = []
    for i in range(num_heads):
        cut = slice(i * d, (i + 1) * d)
        logits = q[..., cut] @ np.swapaxes(k[..., cut], 1, 2) / np.sqrt(d)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        heads.append(weights / weights.sum(-1, keepdims=True) @ v[..., cut])
    expected = np.concatenate(heads, -1) @ p["out"]["kernel"] + p["out"]["bias"]
    expected = x + expected.reshape(x.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    one_head = np.asarray(AttnBlock(1).apply({"params": params}, x))
    assert np.abs(one_head - expected).max() > 1e-2  # the head split matters


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = _build((16, 16, 1), dtype="bfloat16", **TINY).module
    x, t = _inputs()
    param_shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(param_shapes))

    params = _random_params(model)
    out = jax.jit(model.apply)({"params": params}, x, t)
    assert out.dtype == jnp.float32 and out.shape == TINY_SHAPE
    assert bool(jnp.all(jnp.isfinite(out)))
    out_f32 = jax.jit(model.clone(dtype=jnp.float32).apply)({"params": params}, x, t)
    rel_err = float(jnp.linalg.norm(out - out_f32) / jnp.linalg.norm(out_f32))
    assert rel_err < 0.05, rel_err


def test_the_network_contract_takes_two_noise_inputs_and_splits_extra_outputs():
    """A network may take two time inputs (MeanFlow's (r, t)) and emit extra outputs after its
    prediction channels (e.g. a learned variance), split off by name."""
    import flax.linen as nn

    from diffjax.models import LinenNetwork

    class TwoTimes(nn.Module):
        @nn.compact
        def __call__(self, x, noise_cond, labels=None, train=False):
            r, t = noise_cond
            scale = nn.Dense(1)((t - r)[:, None])[:, :, None, None]
            return jnp.concatenate([x * scale, jnp.full_like(x, 7.0), -x], axis=-1)

    network = LinenNetwork(module=TwoTimes(), x_shape=(4, 4, 2), out_channels=2,
                           extra_outputs=(("log_variance", 2), ("aux", 2)), num_noise_inputs=2)
    params = network.init(jax.random.PRNGKey(0))
    assert params["Dense_0"]["kernel"].shape == (1, 1)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 2))
    out = network.apply(params, x, (jnp.zeros(3), jnp.ones(3)), {})
    main, extras = network.split_output(out)
    assert main.shape == (3, 4, 4, 2) and set(extras) == {"log_variance", "aux"}
    np.testing.assert_array_equal(extras["log_variance"], 7.0)
    np.testing.assert_array_equal(extras["aux"], -x)
