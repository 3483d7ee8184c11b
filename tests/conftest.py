"""Shared test set-up: 8 virtual CPU devices, the embedded dataset prepared once, a tiny config."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Many tests (and the launch.py subprocesses they start) compile the same tiny programs: a
# persistent compilation cache shared by all of them halves the suite's time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Compiling, not running, dominates these tiny programs: without XLA's optimisation passes a
# train-and-resume test takes 57 s instead of 80 s. Set it to 0 to test the optimised programs.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked `accelerator` are skipped, visibly, where only CPUs exist (as in CI)."""
    if jax.default_backend() == "cpu":
        skip = pytest.mark.skip(reason="needs a GPU or TPU; this machine has only CPU devices")
        for item in items:
            if "accelerator" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data dir with the embedded MNIST prepared; also exported as DIFFJAX_DATA_DIR."""
    from diffjax import data

    path = str(tmp_path_factory.mktemp("tfds"))
    data.prepare("mnist_embedded", path)
    os.environ["DIFFJAX_DATA_DIR"] = path
    return path


def tiny_config(data_dir: str, **overrides):
    """configs/mnist_ddpm.py (DDPM, linear betas, eps) shrunk to a 16x16 two-level U-Net, batch
    8, a few steps."""
    from configs import mnist_ddpm

    config = mnist_ddpm.get_config()
    config.data.data_dir = data_dir
    config.data.image_size = 16
    config.model.unet.ch = 32
    config.model.unet.ch_mult = (1, 2)
    config.model.unet.num_res_blocks = 1
    config.model.unet.attn_resolutions = (8,)
    config.optim.warmup_steps = 2
    config.training.batch_size = 8
    config.training.num_steps = 4
    config.training.log_every_steps = 1
    config.training.checkpoint_every_steps = 2
    config.training.sample_every_steps = 0
    config.sampling.num_steps = 2
    config.sampling.grid_samples = 8
    config.sampling.batch_size = 8
    config.mesh.num_devices = 1
    config.mesh.cpu_devices = 0
    for key, value in overrides.items():
        set_field(config, key, value)
    return config


def set_field(config, key: str, value) -> None:
    """config[a][b][c] = value for key 'a.b.c'."""
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def run_steps(config, num_steps: int):
    """Trains `num_steps` steps of `config` in-process; returns (experiment, state, losses)."""
    from diffjax.experiment import Experiment

    exp = Experiment(config)
    state = exp.init_state()
    step_fn = exp.train_step_fn()
    losses = []
    for k in range(num_steps):
        state, metrics = step_fn(state, exp.global_batch(k))
        losses.append(float(metrics["loss"]))
    return exp, state, losses


def train_run(config, workdir: str, fresh: bool = False):
    """launch.py --mode=train in-process: trains `config` in `workdir`; returns the state."""
    from diffjax.experiment import Experiment
    from diffjax.modes.train import saved_config
    from diffjax.training import loop

    exp = Experiment(config, workdir)
    return loop.train(exp, fresh=fresh, saved_config=saved_config(exp.workdir))
