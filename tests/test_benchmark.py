"""--mode=benchmark: its fields against quantities counted another way (no wall-clock bounds)."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from conftest import tiny_config

from diffjax.experiment import Experiment
from diffjax.modes import benchmark


def test_xla_flops_of_a_matmul_and_a_conv_are_twice_their_multiply_adds():
    """What gflop_per_step sums: 2 flops per multiply-add, as a hand count gives."""
    a, b = jnp.ones((32, 48)), jnp.ones((48, 24))
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    assert benchmark._flops(matmul) == 2 * 32 * 48 * 24
    # 'VALID': XLA leaves out the taps on 'SAME' padding (484, not 576, per 8x8 image here).
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 16))  # NHWC, HWIO, stride 1
    conv = jax.jit(functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1),
                                     padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
                   ).lower(x, w).compile()
    assert benchmark._flops(conv) == 2 * (2 * 6 * 6 * 16) * (3 * 3 * 3)


def test_benchmark_mode_reports_counts_that_agree_with_independent_ones(data_dir, monkeypatch):
    config = tiny_config(data_dir, **{"mesh.num_devices": 2, "sampling.sampler": "heun",
                                      "benchmark.warmup_steps": 0, "benchmark.num_steps": 1,
                                      "benchmark.sample_steps": 3})
    # The peak's default 2048^3 matmuls take seconds on CPU; its size is not under test here.
    monkeypatch.setattr(benchmark, "matmul_peak_gflops",
                        functools.partial(benchmark.matmul_peak_gflops, size=128, repeats=1))
    exp = Experiment(config, load_data=False)
    report = json.loads(json.dumps(benchmark.benchmark(exp)))  # what the mode prints
    shapes = jax.eval_shape(exp.network.init, jax.random.PRNGKey(0))
    assert report["params"] == sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    assert (report["devices"], report["batch_size"], report["image_shape"]) == (2, 8, [16, 16, 1])
    # A train step is the forward pass and a backward of about twice its work, over the global
    # batch (XLA's per-device count times the 2 devices): ~3 x 2 flops x MACs x 8 images.
    forward_gflop = 2 * report["network_forward_gmacs_per_image"] * report["batch_size"]
    assert 2.5 < report["gflop_per_step"] / forward_gflop < 3.5, report
    # Rates are the counts over the same measured step time.
    np.testing.assert_allclose(report["train_images_per_s"], 8 / report["step_s"], rtol=2e-3)
    np.testing.assert_allclose(report["achieved_gflop_per_s"],
                               report["gflop_per_step"] / report["step_s"], rtol=2e-3)
    np.testing.assert_allclose(report["utilisation"], report["achieved_gflop_per_s"]
                               / report["matmul_peak_gflop_per_s"], rtol=2e-3, atol=1e-4)
    # Heun: two evaluations per step, one on the last (Karras et al. 2022, Alg. 1): 2 * 3 - 1.
    assert (report["sampler"], report["sample_steps"], report["sample_nfe"],
            report["sample_batch"]) == ("heun", 3, 5, 8)
    assert np.isfinite(report["loss"]) and report["loss"] > 0
