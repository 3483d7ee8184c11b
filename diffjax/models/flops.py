"""Counting a function's matrix multiply-adds from its jaxpr, with nothing compiled or run.

The DiT paper's Gflops (Peebles & Xie 2023, Table 4) count one multiply-add as one flop (fvcore's
convention) over the matrix products and convolutions; `matmul_flops` counts the same: the MACs
of every dot_general and conv_general_dilated, inside nested jaxprs too (jit, custom_jvp/vjp,
remat, scan times its length). Elementwise work (norms, softmax, activations) is not counted.
XLA's cost analysis (--mode=benchmark's gflop_per_step) instead counts 2 flops per MAC plus the
elementwise ops, of the compiled program after its rewrites.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from diffjax.models.network import map_noise_shapes, noise_cond_shapes


def _shape(var) -> tuple[int, ...]:
    return tuple(var.aval.shape)


def _dot_general_macs(eqn) -> int:
    """lhs numel * the rhs's free (neither contracted nor batch) dimensions."""
    lhs, rhs = (_shape(v) for v in eqn.invars[:2])
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = [d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch)]
    return math.prod(lhs) * math.prod(rhs_free)


def _conv_macs(eqn) -> int:
    """Output numel * the kernel's spatial size * its input features (already per group)."""
    kernel = _shape(eqn.invars[1])
    out_features_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    return math.prod(_shape(eqn.outvars[0])) * math.prod(kernel) // kernel[out_features_dim]


def _fused_attention_macs(eqn) -> int:
    """cuDNN's fused attention (jax.nn.dot_product_attention(implementation='cudnn')): q k^T and
    p v, 2 * numel(q) * S for keys of length S; its backward counts twice the forward."""
    query, key = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    layout = getattr(eqn.params.get("layout", 0), "value", eqn.params.get("layout", 0))
    key_length = key[2] if layout == 1 else key[1]  # AttentionLayout BNTH = 1, BTNH = 0
    forward = 2 * math.prod(query) * key_length
    return 2 * forward if "bwd" in eqn.primitive.name else forward


def _sub_jaxprs(value: Any) -> Iterator[Any]:
    """The jaxprs in one equation parameter (a Jaxpr, a ClosedJaxpr or a tuple of them)."""
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def _eqn_macs(eqn) -> int:
    name = eqn.primitive.name
    if name == "dot_general":
        return _dot_general_macs(eqn)
    if name == "conv_general_dilated":
        return _conv_macs(eqn)
    if name.startswith(("dot_product_attention_fwd", "dot_product_attention_bwd")):
        return _fused_attention_macs(eqn)
    if name == "cond":  # one branch runs: count the most expensive
        return max(jaxpr_macs(branch) for branch in _sub_jaxprs(eqn.params["branches"]))
    if name == "scan":
        return eqn.params["length"] * jaxpr_macs(eqn.params["jaxpr"].jaxpr)
    if name == "while":
        body = jaxpr_macs(eqn.params["body_jaxpr"].jaxpr)
        body += jaxpr_macs(eqn.params["cond_jaxpr"].jaxpr)
        if body:
            raise ValueError(f"a while loop with {body} MACs per iteration: its trip count is "
                             f"not known when tracing, so its MACs cannot be counted")
        return 0
    # jit (pjit), closed_call, remat/checkpoint, custom_jvp_call, custom_vjp_call, ...: the
    # jaxprs among the parameters (the primal computation; jvp/fwd/bwd rules are callables).
    return sum(jaxpr_macs(sub) for value in eqn.params.values() for sub in _sub_jaxprs(value))


def jaxpr_macs(jaxpr) -> int:
    """The multiply-adds of the matrix products and convolutions in a (Closed)Jaxpr."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    return sum(_eqn_macs(eqn) for eqn in jaxpr.eqns)


def matmul_flops(fn: Callable, *args) -> int:
    """The multiply-adds (one MAC = 1 flop, the DiT paper's convention) of every matrix product
    and convolution fn(*args) performs, from its jaxpr: nothing is compiled or run, and args may
    be jax.ShapeDtypeStructs (pytrees of them)."""
    return jaxpr_macs(jax.make_jaxpr(fn)(*args))


def network_gflops(network, batch: int = 1, cond: dict | None = None) -> float:
    """The forward GMACs (the DiT paper's "Gflops") per example of a Network (models/network.py)
    on inputs of its x_shape, traced at `batch` examples. cond: the conditioning inputs as
    ShapeDtypeStructs or arrays ({}: none, a class-conditional network then embeds the null
    label, which costs no MACs)."""
    params = jax.eval_shape(network.init, jax.random.PRNGKey(0))
    x = jax.ShapeDtypeStruct((batch, *network.x_shape), jnp.float32)
    noise = map_noise_shapes(lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32),
                             noise_cond_shapes(network.num_noise_inputs, network.latent_dim,
                                               batch))
    macs = matmul_flops(lambda p, x, t, c: network.apply(p, x, t, c), params, x, noise,
                        cond or {})
    return macs / batch / 1e9
