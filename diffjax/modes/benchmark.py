"""--mode=benchmark: how fast and how big a config is on this machine.

Prints one JSON object: compile seconds, train images/s, sample images/s, GFLOP per step (XLA cost
analysis, summed over devices), achieved GFLOP/s, utilisation against a matmul peak measured on the
same devices, and peak memory. Runs on synthetic data of the dataset's shape. Also the network's
forward GMACs per example counted from its jaxpr (models/flops.py; the DiT paper's "Gflops").
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import parallel
from diffjax.experiment import Experiment
from diffjax.models import count_params
from diffjax.models.flops import network_gflops


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _timed(fn, repeats: int) -> float:
    """Seconds per call of fn() (which blocks until its results are ready), best of `repeats`."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_gflops(mesh, dtype=jnp.float32, size: int = 2048, repeats: int = 10) -> float:
    """Measured GFLOP/s of a chain of [size, size] matmuls on every device of `mesh` at once
    (a practical peak of the hardware for `dtype`, to judge utilisation against)."""
    n = mesh.devices.size
    chain = 8
    sharding = parallel.batch_sharding(mesh)
    a = jax.device_put(jnp.ones((n, size, size), dtype) / size, sharding)

    @jax.jit
    def matmuls(x):
        for _ in range(chain):
            x = jnp.einsum("bij,bjk->bik", x, x, preferred_element_type=dtype)
        return x

    matmuls(a).block_until_ready()
    seconds = _timed(lambda: matmuls(a).block_until_ready(), repeats)
    return 2.0 * size**3 * chain * n / seconds / 1e9


def _peak_memory_bytes() -> dict:
    stats = {}
    device = jax.local_devices()[0]
    memory = device.memory_stats() if hasattr(device, "memory_stats") else None
    if memory and "peak_bytes_in_use" in memory:
        stats["peak_device_memory_gib"] = round(memory["peak_bytes_in_use"] / 2**30, 3)
    # ru_maxrss is KiB on Linux: the host process's peak resident memory (the CPU backend's arrays).
    stats["peak_host_memory_gib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return stats


def benchmark(exp) -> dict:
    """Times benchmark.num_steps train steps of `exp` (global batch training.batch_size over the
    mesh) and one sampling batch of benchmark.sample_steps steps of sampling.sampler."""
    bench = exp.benchmark
    batch_size = exp.training.batch_size
    rng = np.random.default_rng(0)
    host_batch = {
        "image": rng.uniform(-1, 1, (batch_size, *exp.image_shape)).astype(np.float32),
        "label": rng.integers(0, max(exp.num_classes, 1), batch_size).astype(np.int32),
    }
    batch = parallel.to_global(host_batch, exp.mesh)
    state = exp.init_state()
    t0 = time.perf_counter()
    step = exp.train_step_fn()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    # XLA's cost analysis is of the per-device SPMD program.
    gflop_per_step = _flops(compiled) * exp.mesh.devices.size / 1e9
    memory = compiled.memory_analysis()
    for _ in range(bench.warmup_steps):
        state, metrics = compiled(state, batch, step.codec_params)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(bench.num_steps):
        state, metrics = compiled(state, batch, step.codec_params)
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - t0) / bench.num_steps

    sample = _sample_speed(exp, state)
    dtype = jnp.bfloat16 if exp.training.compute_dtype == "bfloat16" else jnp.float32
    peak = matmul_peak_gflops(exp.mesh, dtype)
    achieved = gflop_per_step / seconds
    result = {
        "params": count_params(state.params),
        "network_forward_gmacs_per_image": round(network_gflops(
            exp.network, cond=getattr(exp.network, "init_cond", None)), 4),
        "devices": int(exp.mesh.devices.size),
        "mesh": dict(exp.mesh.shape),
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "compute_dtype": exp.training.compute_dtype,
        "batch_size": batch_size,
        "grad_accum_steps": exp.training.grad_accum_steps,
        "image_shape": list(exp.image_shape),
        "compile_s": round(compile_s, 2),
        "step_s": round(seconds, 4),
        "train_images_per_s": round(batch_size / seconds, 2),
        "gflop_per_step": round(gflop_per_step, 2),
        "achieved_gflop_per_s": round(achieved, 2),
        "matmul_peak_gflop_per_s": round(peak, 2),
        "utilisation": round(achieved / peak, 4),
        **sample,
        "loss": float(metrics["loss"]),
    }
    if memory is not None:
        result["compiled_temp_gib"] = round(memory.temp_size_in_bytes / 2**30, 3)
        result["compiled_argument_gib"] = round(memory.argument_size_in_bytes / 2**30, 3)
    result.update(_peak_memory_bytes())
    return result


def _sample_speed(exp, state) -> dict:
    """Images/s of the configured sampler on one sampling batch, at benchmark.sample_steps steps
    (sampling cost is linear in the steps: images/s at K steps = this * sample_steps / K)."""
    steps = exp.benchmark.sample_steps
    if not steps:
        return {}
    gen = exp.generator(grid=dataclasses.replace(exp.grid, num_steps=steps))
    params = exp.ema.params(state.ema, exp.ema.default_key)
    n = gen.batch
    gen.sample(params, n, seed=0)  # compile
    seconds = _timed(lambda: gen.sample(params, n, seed=1), 1)
    return {"sampler": exp.sampling.sampler, "sample_steps": steps, "sample_nfe": gen.nfe,
            "sample_batch": n, "sample_images_per_s": round(n / seconds, 3)}


def run(config, workdir=None, fresh: bool = False, record=None) -> None:
    print(json.dumps(benchmark(Experiment(config, load_data=False))))
