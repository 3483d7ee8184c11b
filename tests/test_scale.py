"""Scale-out: gradient accumulation, FSDP, bf16, checkpoints across meshes, two processes."""

import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import run_steps, tiny_config

from diffjax import checkpoint, parallel
from diffjax.experiment import Experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_params_close(a, b, atol):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


def test_dropout_masks_do_not_depend_on_the_micro_batch_split(data_dir):
    """Each example's dropout masks come from its own key: every micro-batch (examples j, j + 4,
    ...) gets exactly the big batch's rows, so accumulation with dropout equals the big batch."""
    from diffjax.training.step import per_example_dropout_apply

    exp = Experiment(tiny_config(data_dir, **{"model.unet.dropout": 0.5}), load_data=False)
    net = exp.network
    rng = np.random.default_rng(0)
    # Perturbed params: the zero-initialised convs (ADM) would hide dropout from the output.
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(p.dtype),
                          net.init(jax.random.PRNGKey(0)))
    x = rng.standard_normal((8, *exp.x_shape)).astype(np.float32)
    noise_cond = np.linspace(0, 999, 8).astype(np.float32)
    keys = jax.random.split(jax.random.PRNGKey(1), 8)
    apply = jax.jit(lambda *a: per_example_dropout_apply(net, params, a[0], a[1], {}, a[2]))
    full = np.asarray(apply(x, noise_cond, keys))
    assert not np.allclose(full, net.apply(params, x, noise_cond, {}, train=False), atol=1e-3)
    for j in range(4):
        micro = apply(x[j::4], noise_cond[j::4], keys[j::4])
        np.testing.assert_allclose(np.asarray(micro), full[j::4], rtol=1e-5, atol=1e-5)


def test_a_network_without_dropout_is_applied_to_the_whole_batch(data_dir):
    """Only a stochastic network pays for the per-example vmap: without dropout the U-Net is
    traced once at the full batch (inside a vmap it would see one example) and gives its
    eval-mode output; with dropout it is vmapped."""
    from diffjax.training.step import per_example_dropout_apply

    x = np.ones((8, 28, 28, 1), np.float32)
    keys = jax.random.split(jax.random.PRNGKey(1), 8)
    for dropout, traced_batch in ((0.0, 8), (0.5, 1)):
        net = Experiment(tiny_config(data_dir, **{"model.unet.dropout": dropout}),
                         load_data=False).network
        assert net.stochastic == (dropout > 0)
        params = net.init(jax.random.PRNGKey(0))
        seen = []

        class Recording:
            stochastic = net.stochastic

            def apply(self, params, x, *args, **kwargs):
                seen.append(x.shape[0])
                return net.apply(params, x, *args, **kwargs)

        recording = Recording()
        out = jax.jit(lambda a: per_example_dropout_apply(recording, params, a, np.zeros(8),
                                                          {}, keys))(x)
        assert seen == [traced_batch]
        if not dropout:
            np.testing.assert_allclose(np.asarray(out), net.apply(params, x, np.zeros(8), {}),
                                       rtol=1e-5, atol=1e-6)


def test_grad_accumulation_over_4_micro_batches_equals_the_4x_batch(data_dir):
    config = tiny_config(data_dir, **{"model.unet.dropout": 0.0, "mesh.num_devices": 2})
    _, big, big_losses = run_steps(config, 2)
    config.training.grad_accum_steps = 4  # 8 -> 4 micro-batches of 2, one example per device
    _, accumulated, accumulated_losses = run_steps(config, 2)
    np.testing.assert_allclose(accumulated_losses, big_losses, rtol=1e-5)
    # Same examples and noise, summed in another order: float error only (see test_train's note
    # on Adam and zero gradients for the atol).
    _assert_params_close(accumulated.params, big.params, atol=5e-5)


def test_fsdp_gives_the_same_params_as_data_parallel(data_dir):
    config = tiny_config(data_dir, **{"model.unet.dropout": 0.0, "mesh.num_devices": 8})
    _, replicated, dp_losses = run_steps(config, 2)
    config.mesh.shape = (2, 4)
    exp, sharded, fsdp_losses = run_steps(config, 2)
    specs = [s.spec for s in jax.tree.leaves(exp.state_sharding.params)]
    assert any(parallel.FSDP_AXIS in spec for spec in specs), "some params must be sharded"
    big = [x for x in jax.tree.leaves(sharded.params) if x.size >= parallel.FSDP_MIN_SIZE]
    assert all(len(x.addressable_shards[0].data.flatten()) == x.size // 4 for x in big)
    np.testing.assert_allclose(fsdp_losses, dp_losses, rtol=1e-5)
    _assert_params_close(sharded.params, replicated.params, atol=5e-5)


def test_bfloat16_compute_trains_with_float32_state(data_dir):
    config = tiny_config(data_dir, **{"training.compute_dtype": "bfloat16"})
    exp = Experiment(config)
    initial = jax.device_get(exp.init_state().params)
    # 3 steps: the output conv starts at zero (ADM), so the layers below it learn from step 3 on.
    _, state, losses = run_steps(config, 3)
    assert all(np.isfinite(losses))
    floats = jax.tree.leaves((state.params, state.ema, state.opt_state))
    assert all(x.dtype == np.float32 for x in floats if np.issubdtype(x.dtype, np.floating))
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(initial), jax.tree.leaves(jax.device_get(state.params)))]
    assert sum(changed) >= 40  # zero-initialised branches (ADM) wake up one layer per step
    config.training.compute_dtype = "float32"
    _, _, f32_losses = run_steps(config, 3)
    np.testing.assert_allclose(losses, f32_losses, rtol=0.02)  # bf16 has an 8-bit mantissa


# A convolution or dot_general of the lowered program and its two operand types.
_PRODUCT = re.compile(r"stablehlo\.(convolution|dot_general)\b.*?: \(tensor<(?:\d+x)*(\w+)>, "
                      r"tensor<(?:\d+x)*(\w+)>\)")


@pytest.mark.parametrize("compute_dtype, operand", [("bfloat16", "bf16"), ("float32", "f32")])
def test_train_step_convolves_and_multiplies_in_the_compute_dtype_on_float32_state(
        data_dir, compute_dtype, operand):
    """Mixed precision: every convolution and matmul of the train step (forward and backward)
    takes compute_dtype operands, while params, optimizer state and EMA stay float32. Read from
    the lowered program, the one XLA is given (nothing is compiled)."""
    config = tiny_config(data_dir, **{"training.compute_dtype": compute_dtype})
    exp = Experiment(config)
    state = exp.abstract_target()
    lowered = exp.train_step_fn().lower(state, exp.global_batch(0))
    products = _PRODUCT.findall(lowered.as_text())
    kernels = [path for path, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]
               if path[-1].key == "kernel"]
    # At least each kernel's forward product and its weight gradient.
    assert len(kernels) > 40 and len(products) >= 2 * len(kernels)
    assert {(lhs, rhs) for _, lhs, rhs in products} == {(operand, operand)}
    new_state = lowered.out_info[0]
    floats = jax.tree.leaves((new_state.params, new_state.ema, new_state.opt_state))
    assert floats and all(x.dtype == np.float32 for x in floats
                          if np.issubdtype(x.dtype, np.floating))


@pytest.mark.parametrize("num_devices, shape", [(1, (-1, 1)), (4, (-1, 1)), (4, (1, 4))])
def test_a_checkpoint_saved_on_8_devices_restores_on_another_mesh(data_dir, tmp_path, num_devices,
                                                                   shape):
    config = tiny_config(data_dir, **{"mesh.num_devices": 8})
    saved_exp = Experiment(config, load_data=False)
    state = saved_exp.init_state()
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.save(1, state)
    ckpt.close()

    config.mesh.num_devices, config.mesh.shape = num_devices, shape
    exp = Experiment(config, load_data=False)
    restored, step = checkpoint.Checkpointer(str(tmp_path / "checkpoints")).restore_latest(
        exp.abstract_target())
    assert step == 1
    for x, y, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state),
                          jax.tree.leaves(exp.state_sharding)):
        assert x.sharding == want and len(x.sharding.device_set) == num_devices
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWO_PROCESS_RUN = ["--config.data.image_size=16", "--config.model.unet.ch_mult=(1,2)",
                   "--config.model.unet.attn_resolutions=(8,)", "--config.model.unet.dropout=0.0",
                   "--config.training.batch_size=16", "--config.training.num_steps=3",
                   "--config.training.log_every_steps=1",
                   "--config.training.checkpoint_every_steps=3",
                   "--config.training.sample_every_steps=0", "--config.sampling.num_steps=2",
                   "--config.sampling.grid_samples=8", "--config.sampling.batch_size=8",
                   "--config.optim.warmup_steps=2",
                   # Adam divides by sqrt(v) + eps: with eps 1e-8 a gradient entry near zero has
                   # its summation-order rounding blown up to a whole lr step (a sign flip).
                   "--config.optim.eps=1e-3"]


def _popen(workdir, data_dir, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", DIFFJAX_DATA_DIR=data_dir)
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), "--workdir",
                             str(workdir), *TWO_PROCESS_RUN, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_of_4_devices_equal_one_process_of_8(data_dir, tmp_path):
    """One mesh of 8 devices over 2 processes, each loading its half of the global batch: the
    same losses and checkpointed arrays as one process of 8, up to float rounding."""
    port = _free_port()
    procs = [_popen(tmp_path / "two", data_dir, "--config.mesh.cpu_devices=4",
                    f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}") for i in range(2)]
    single = _popen(tmp_path / "one", data_dir, "--config.mesh.cpu_devices=8")
    outs = []
    for proc in (*procs, single):
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        outs.append(out)
    # Process 0 logs for both: the two form one mesh of 8, not two runs of 4.
    for out in (outs[0], outs[2]):
        assert "devices: 8  global batch: 16" in out, out[-2000:]
    assert "devices:" not in outs[1], outs[1][-2000:]
    from test_reliability import _final_arrays, _losses

    two, one = _final_arrays(tmp_path / "two", 3), _final_arrays(tmp_path / "one", 3)
    assert two.keys() == one.keys()
    for key in two:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=5e-6, err_msg=key)
    np.testing.assert_allclose([v for _, v in _losses(tmp_path / "two")],
                               [v for _, v in _losses(tmp_path / "one")], rtol=1e-5)
    assert os.path.exists(tmp_path / "two" / "samples" / "grid_00000003.png")
