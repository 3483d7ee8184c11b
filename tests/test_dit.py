"""Tests for DiT (Peebles & Xie 2023) and the jaxpr MAC counter (diffjax/models/dit.py, flops.py).

Big models are only traced (jax.eval_shape / jax.make_jaxpr); the one compiled model is tiny."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.errors import ConfigError
from diffjax.models import NETWORKS, DiTOptions, NetworkSpec, count_params, make_network
from diffjax.models.dit import (
    DIT_SIZE_NAMES,
    Attention,
    attention_implementation,
    sincos_pos_embed_2d,
)
from diffjax.models.flops import jaxpr_macs, matmul_flops, network_gflops
from diffjax.options import OptionError, from_mapping

S = jax.ShapeDtypeStruct
TINY = dict(depth=2, hidden_size=64, num_heads=4, patch_size=2)
TINY_SHAPE, NUM_CLASSES = (8, 8, 1), 3
# DiT paper Table 4: forward Gflops (multiply-adds) at 256x256 images = 32x32x4 latents.
TABLE4_GFLOPS = {"S/8": 0.36, "S/4": 1.41, "S/2": 6.06, "B/8": 1.42, "B/4": 5.56, "B/2": 23.01,
                 "L/8": 5.01, "L/4": 19.70, "L/2": 80.71, "XL/8": 7.39, "XL/4": 29.05,
                 "XL/2": 118.64}


def _build(x_shape=TINY_SHAPE, num_classes=NUM_CLASSES, dtype="float32", **options):
    return make_network("dit", DiTOptions(**options), NetworkSpec(x_shape, num_classes, dtype))


def _paper_model(size: str):
    """DiT as the paper trains it: 32x32x4 SD-VAE latents, 1000 classes, learned sigma."""
    return _build((32, 32, 4), 1000, size=size, learn_sigma=True)


def _inputs(batch=2, x_shape=TINY_SHAPE):
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, *x_shape))
    return x, jnp.array([10.0, 500.0, 999.0][:batch])


def _randomise(params, names=None, seed=0):
    """params with every leaf (or those under a module named in `names`) drawn afresh: kernels
    and embeddings ~ N(0, 1/fan_in), biases ~ N(0, 0.05^2)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        keys = [p.key for p in path]
        if names is not None and not set(keys) & set(names):
            return leaf
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if keys[-1] in ("kernel", "embedding"):
            return jnp.asarray(noise / np.sqrt(np.prod(leaf.shape[:-1])))
        return jnp.asarray(0.05 * noise)

    return jax.tree_util.tree_map_with_path(draw, params)


@pytest.fixture(scope="module")
def tiny():
    """(network, init params, jitted apply(params, labels)) of a learned-sigma tiny DiT."""
    network = _build(learn_sigma=True, **TINY)
    params = jax.jit(network.init)(jax.random.PRNGKey(0))
    x, t = _inputs()
    apply = jax.jit(lambda p, labels: network.apply(p, x, t, {"label": labels}))
    return network, params, apply


def test_dit_xl2_has_the_papers_675m_parameters():
    # DiT's XL/2: 675,129,632 parameters counted with the fixed pos_embed buffer (256 x 1152).
    network = _paper_model("XL/2")
    params = jax.eval_shape(network.init, jax.random.PRNGKey(0))
    assert count_params(params) == 674_834_720
    assert network.num_fixed_scalars == 256 * 1152
    assert count_params(params) + network.num_fixed_scalars == 675_129_632


@pytest.mark.parametrize("size", DIT_SIZE_NAMES)
def test_every_size_has_table4_gflops_and_the_output_shape(size):
    network = _paper_model(size)
    params = jax.eval_shape(network.init, jax.random.PRNGKey(0))
    x, t, y = S((1, 32, 32, 4), jnp.float32), S((1,), jnp.float32), S((1,), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda p, x, t, y: network.apply(p, x, t, {"label": y}))(
        params, x, t, y)
    assert jaxpr.out_avals[0].shape == (1, 32, 32, 8) and jaxpr.out_avals[0].dtype == jnp.float32
    gflops = jaxpr_macs(jaxpr) / 1e9
    assert gflops == pytest.approx(TABLE4_GFLOPS[size], rel=0.01)


def test_network_gflops_counts_one_example_of_a_batch():
    network = _build(**TINY)
    assert network_gflops(network, batch=3) == pytest.approx(network_gflops(network), rel=1e-9)


def test_adaln_zero_makes_the_output_zero_at_init(tiny):
    network, params, apply = tiny
    for leaf in (params["final_layer"]["linear"]["kernel"],
                 params["blocks_0"]["adaLN_modulation"]["kernel"]):
        assert not np.any(leaf)
    out = apply(params, jnp.array([0, 2], jnp.int32))
    assert out.shape == (2, 8, 8, 2) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)


def test_init_follows_dit_initialize_weights(tiny):
    _, params, _ = tiny
    def is_xavier_uniform(kernel, fan_in, fan_out):  # U(-b, b), b = sqrt(6 / (in + out))
        bound = math.sqrt(6 / (fan_in + fan_out))
        return 0.9 * bound < np.abs(np.asarray(kernel)).max() <= bound

    # The patch conv's xavier_uniform is over its [D, p*p*C] view.
    assert is_xavier_uniform(params["x_embedder"]["kernel"], 2 * 2 * 1, 64)
    block = params["blocks_1"]
    for layer, fan_in, fan_out in ((block["attn"]["qkv"], 64, 192), (block["attn"]["proj"], 64,
                                   64), (block["mlp"]["fc1"], 64, 256), (block["mlp"]["fc2"], 256,
                                   64)):
        assert is_xavier_uniform(layer["kernel"], fan_in, fan_out) and not np.any(layer["bias"])
    assert not np.any(params["x_embedder"]["bias"])
    for leaf in jax.tree_util.tree_leaves(block["adaLN_modulation"]):
        assert not np.any(leaf)
    for table in (params["y_embedder"]["embedding_table"]["embedding"],
                  params["t_embedder"]["mlp_0"]["kernel"]):
        assert np.std(table) == pytest.approx(0.02, rel=0.15)
    for leaf in jax.tree_util.tree_leaves(params["final_layer"]):
        assert not np.any(leaf)


def test_perturbed_model_depends_on_the_label_and_none_is_the_null_label(tiny):
    network, params, apply = tiny
    # The zero-initialised layers (adaLN modulations, final linear) get random weights.
    params = _randomise(params, names=("adaLN_modulation", "linear"))
    out_0, out_2 = apply(params, jnp.array([0, 0])), apply(params, jnp.array([2, 2]))
    assert float(jnp.abs(out_0).max()) > 1e-3 and not np.allclose(out_0, out_2)
    out_null = apply(params, jnp.full((2,), NUM_CLASSES, jnp.int32))
    x, t = _inputs()
    out_none = jax.jit(lambda p: network.apply(p, x, t, {}))(params)
    np.testing.assert_allclose(out_none, out_null, rtol=1e-6, atol=1e-6)


def test_label_table_has_a_null_row_and_unconditional_has_none(tiny):
    _, params, _ = tiny
    assert params["y_embedder"]["embedding_table"]["embedding"].shape == (NUM_CLASSES + 1, 64)
    unconditional = _build(num_classes=0, **TINY)
    assert "y_embedder" not in jax.eval_shape(unconditional.init, jax.random.PRNGKey(0))
    x, t = _inputs()
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(unconditional.module.init, jax.random.PRNGKey(0), x, t,
                       jnp.zeros((2,), jnp.int32))


def test_learned_sigma_adds_a_variance_of_c_channels(tiny):
    network, params, apply = tiny
    assert network.out_channels == 1 and network.extra_outputs == (("variance", 1),)
    out = apply(_randomise(params), jnp.array([0, 1]))
    main, extras = network.split_output(out)
    assert main.shape == (2, 8, 8, 1) and extras["variance"].shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(extras["variance"], out[..., 1:])
    plain = _build(**TINY)
    assert plain.extra_outputs == () and plain.module.out_channels == 1


def test_position_embedding_is_dits_2d_sincos_with_w_first():
    # D=8, 2x2 grid: each axis gets D/2 = 4 features, [sin(pos w_k), cos(pos w_k)] with
    # w_k = 1/10000**(k / 2), k = 0, 1, i.e. (1, 0.01). DiT's np.meshgrid(grid_w, grid_h) makes
    # its first half (which it names emb_h) the column coordinate w, the second half the row h.
    def axis(pos):
        return [math.sin(pos), math.sin(pos / 100), math.cos(pos), math.cos(pos / 100)]

    expected = [axis(w) + axis(h) for h in (0, 1) for w in (0, 1)]  # tokens row-major
    np.testing.assert_allclose(sincos_pos_embed_2d(8, 2), expected, rtol=1e-6, atol=1e-7)
    assert sincos_pos_embed_2d(8, 2).dtype == np.float32


def _dit_pos_embed(embed_dim, grid_size):
    """DiT's get_2d_sincos_pos_embed, as in facebookresearch/DiT models.py."""
    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], 1)


def _torch_dit(params, x, t, y, num_heads, patch):
    """DiT's forward (models.py, timm's PatchEmbed/Attention/Mlp) in PyTorch, NCHW, from our
    params: Dense kernels [in, out] are torch weights transposed, the conv kernel HWIO -> OIHW."""
    import torch
    import torch.nn.functional as F

    tp = jax.tree_util.tree_map(lambda a: torch.from_numpy(np.array(a)), params)
    lin = lambda h, p: F.linear(h, p["kernel"].T, p["bias"])  # noqa: E731
    modulate = lambda h, shift, scale: h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)  # noqa
    norm = lambda h: F.layer_norm(h, h.shape[-1:], eps=1e-6)  # noqa: E731
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
    h = F.conv2d(xt, tp["x_embedder"]["kernel"].permute(3, 2, 0, 1), tp["x_embedder"]["bias"],
                 stride=patch).flatten(2).transpose(1, 2)
    hidden = h.shape[-1]
    h = h + torch.from_numpy(_dit_pos_embed(hidden, int(h.shape[1] ** 0.5))).float()
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.from_numpy(np.array(t))[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    c = lin(F.silu(lin(emb, tp["t_embedder"]["mlp_0"])), tp["t_embedder"]["mlp_2"])
    c = c + tp["y_embedder"]["embedding_table"]["embedding"][torch.from_numpy(np.array(y))]
    batch, tokens = h.shape[:2]
    for i in range(len([k for k in params if k.startswith("blocks_")])):
        b = tp[f"blocks_{i}"]
        mods = lin(F.silu(c), b["adaLN_modulation"]).chunk(6, dim=1)
        qkv = lin(modulate(norm(h), mods[0], mods[1]), b["attn"]["qkv"])
        qkv = qkv.reshape(batch, tokens, 3, num_heads, hidden // num_heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(*qkv.unbind(0))
        attn = lin(attn.transpose(1, 2).reshape(batch, tokens, hidden), b["attn"]["proj"])
        h = h + mods[2].unsqueeze(1) * attn
        mlp = lin(F.gelu(lin(modulate(norm(h), mods[3], mods[4]), b["mlp"]["fc1"]),
                         approximate="tanh"), b["mlp"]["fc2"])
        h = h + mods[5].unsqueeze(1) * mlp
    f = tp["final_layer"]
    shift, scale = lin(F.silu(c), f["adaLN_modulation"]).chunk(2, dim=1)
    h = lin(modulate(norm(h), shift, scale), f["linear"])
    grid, channels = int(tokens ** 0.5), h.shape[-1] // patch**2
    h = h.reshape(batch, grid, grid, patch, patch, channels)
    h = torch.einsum("nhwpqc->nchpwq", h).reshape(batch, channels, grid * patch, grid * patch)
    return h.permute(0, 2, 3, 1).numpy()


def test_forward_matches_a_pytorch_port_of_dits_models_py(tiny):
    pytest.importorskip("torch")
    network, params, apply = tiny
    params = _randomise(params)
    labels = jnp.array([1, NUM_CLASSES])
    x, t = _inputs()
    expected = _torch_dit(params, x, t, labels, TINY["num_heads"], TINY["patch_size"])
    np.testing.assert_allclose(apply(params, labels), expected, rtol=1e-4, atol=1e-5)


def test_attention_matches_naive_softmax_attention():
    module = Attention(num_heads=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 32))
    params = _randomise(jax.eval_shape(module.init, jax.random.PRNGKey(0), x))
    out = jax.jit(module.apply)(params, x)
    qkv = x @ params["params"]["qkv"]["kernel"] + params["params"]["qkv"]["bias"]
    q, k, v = jnp.moveaxis(qkv.reshape(2, 16, 3, 4, 8), 2, 0)
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8), axis=-1)
    naive = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 16, 32)
    naive = naive @ params["params"]["proj"]["kernel"] + params["params"]["proj"]["bias"]
    np.testing.assert_allclose(out, naive, rtol=1e-5, atol=1e-5)


def test_auto_attention_is_xla_off_gpu_and_cudnn_needs_bfloat16():
    if jax.default_backend() != "gpu":
        assert attention_implementation("auto", jnp.bfloat16, 64) == "xla"
    assert attention_implementation("auto", jnp.float32, 64) == "xla"
    with pytest.raises(OptionError, match=r"attention='cudnn'.*compute_dtype='bfloat16'"):
        _build(attention="cudnn", **TINY)


def test_bfloat16_compute_keeps_float32_params_and_output(tiny):
    _, params, _ = tiny
    params = _randomise(params)
    x, t = _inputs()
    labels = {"label": jnp.array([0, 1])}
    outs = {}
    for dtype in ("float32", "bfloat16"):
        network = _build(dtype=dtype, learn_sigma=True, **TINY)
        shapes = jax.eval_shape(network.init, jax.random.PRNGKey(0))
        assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(shapes))
        outs[dtype] = jax.jit(lambda p, n=network: n.apply(p, x, t, labels))(params)
    assert outs["bfloat16"].dtype == jnp.float32
    rel_err = float(jnp.linalg.norm(outs["bfloat16"] - outs["float32"])
                    / jnp.linalg.norm(outs["float32"]))
    assert 0 < rel_err < 0.05, rel_err


def test_remat_gives_the_same_gradients(tiny):
    _, params, _ = tiny
    params = _randomise(params)
    x, t = _inputs()
    nets = [_build(learn_sigma=True, remat=remat, **TINY) for remat in (False, True)]

    def loss(p, network):
        return jnp.sum(network.apply(p, x, t, {"label": jnp.array([0, 1])}) ** 2)

    grads = jax.jit(lambda p: [jax.grad(loss)(p, n) for n in nets])(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           *grads)
    def primitives(network):
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss(p, network)))(params)
        return {e.primitive.name for e in jaxpr.eqns}

    assert "remat2" in primitives(nets[1]) and "remat2" not in primitives(nets[0])


@pytest.mark.parametrize("values, x_shape, pattern", [
    (dict(size="M/2"), TINY_SHAPE, r"config\.model\.dit\.size='M/2' is unknown; allowed: S/2, "
                                   r"S/4, S/8, B/2.*XL/8"),
    (dict(hidden_size=100, num_heads=3), TINY_SHAPE,
     r"config\.model\.dit\.num_heads=3 is invalid: does not divide hidden_size=100"),
    (dict(TINY, patch_size=3), TINY_SHAPE,
     r"config\.model\.dit\.patch_size=3 does not divide the height and width of x_shape="
     r"\(8, 8, 1\); patch sizes that do: 1, 2, 4, 8"),
    (dict(size="S/8"), (28, 28, 1), r"config\.model\.dit\.size='S/8' has patch size 8, which "
                                    r"does not divide .*x_shape=\(28, 28, 1\).*1, 2, 4, 7, 14"),
    (dict(TINY), (8, 4, 1), r"config\.model\.dit\.patch_size=2 needs square inputs"),
])
def test_bad_options_name_the_field_and_value(values, x_shape, pattern):
    from diffjax.experiment import _build as build_part

    with pytest.raises(ConfigError, match=pattern):
        options = from_mapping(DiTOptions, values, "model.dit")
        build_part(NETWORKS, "dit", options, NetworkSpec(x_shape, 0))


# --------------------------------------------------------------------------------------------
# The MAC counter on known programs.


def test_matmul_flops_counts_dot_general_and_conv_macs():
    assert matmul_flops(jnp.matmul, S((3, 4), jnp.float32), S((4, 5), jnp.float32)) == 60
    batched = lambda a, b: jnp.einsum("bij,bjk->bik", a, b)  # noqa: E731
    assert matmul_flops(batched, S((2, 3, 4), jnp.float32), S((2, 4, 5), jnp.float32)) == 120

    def conv(x, w, groups=1):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=groups,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x = S((1, 8, 8, 2), jnp.float32)
    assert matmul_flops(conv, x, S((3, 3, 2, 4), jnp.float32)) == 64 * 9 * 2 * 4
    grouped = lambda x, w: conv(x, w, groups=2)  # noqa: E731
    assert matmul_flops(grouped, x, S((3, 3, 1, 4), jnp.float32)) == 64 * 9 * 1 * 4


def test_matmul_flops_recurses_into_jit_remat_scan_and_cond():
    a = S((4, 4), jnp.float32)
    inner = jax.jit(lambda x: x @ x)
    assert matmul_flops(lambda x: jax.checkpoint(inner)(x) @ x, a) == 2 * 64

    def scanned(x):
        return jax.lax.scan(lambda h, _: (h @ x, None), x, None, length=5)[0]

    assert matmul_flops(scanned, a) == 5 * 64
    branches = lambda p, x: jax.lax.cond(p, lambda: x @ x @ x, lambda: x @ x)  # noqa: E731
    assert matmul_flops(branches, S((), jnp.bool_), a) == 2 * 64

    def loop(x):
        return jax.lax.while_loop(lambda h: h.sum() < 10, lambda h: h @ x, x)

    with pytest.raises(ValueError, match="trip count"):
        matmul_flops(loop, a)
