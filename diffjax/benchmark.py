"""--mode=benchmark: compile time, train images/s, XLA GFLOP per step and achieved GFLOP/s."""

from __future__ import annotations

import time

import jax
import numpy as np

from diffjax import parallel, train


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def run(config) -> dict:
    """Times config.benchmark.num_steps train steps of `config` on synthetic data of the right shape.

    The batch is config.training.batch_size, split over config.mesh.num_devices devices."""
    exp = train.Experiment(config, load_data=False)
    batch_size = config.training.batch_size
    rng = np.random.default_rng(0)
    host_batch = {
        "image": rng.uniform(-1, 1, (batch_size, *exp.image_shape)).astype(np.float32),
        "label": rng.integers(0, max(exp.num_classes, 1), batch_size).astype(np.int32),
    }
    batch = parallel.to_global(host_batch, exp.mesh)
    state = exp.init_state()
    step_fn = train.jit_train_step(
        train.make_train_step(exp.model, exp.schedule, config, exp.tx, exp.lr_fn), exp.mesh)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    # XLA's cost analysis is of the per-device SPMD program.
    gflop_per_step = _flops(compiled) * exp.mesh.devices.size / 1e9
    for _ in range(config.benchmark.warmup_steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(config.benchmark.num_steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - t0) / config.benchmark.num_steps
    return {
        "params": train.count_params(state.params),
        "devices": int(exp.mesh.devices.size),
        "platform": jax.devices()[0].platform,
        "batch_size": batch_size,
        "image_shape": list(exp.image_shape),
        "compile_s": round(compile_s, 2),
        "step_s": round(seconds, 4),
        "train_images_per_s": round(batch_size / seconds, 2),
        "gflop_per_step": round(gflop_per_step, 2),
        "achieved_gflop_per_s": round(gflop_per_step / seconds, 2),
        "loss": float(metrics["loss"]),
    }
