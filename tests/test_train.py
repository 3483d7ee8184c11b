"""The compiled train step: device-count invariance, EMA, learning rate and exact resume."""

import jax
import numpy as np
import optax
import pytest
from conftest import run_steps, tiny_config, train_run

from diffjax import ema, settings, writers
from diffjax.training import optim


def test_one_device_and_eight_devices_give_the_same_training(data_dir):
    assert jax.device_count() == 8
    config = tiny_config(data_dir, **{"model.unet.dropout": 0.1})
    _, state1, losses1 = run_steps(config, 3)
    config.mesh.num_devices = 8
    _, state8, losses8 = run_steps(config, 3)
    np.testing.assert_allclose(losses1, losses8, rtol=1e-5)
    # Reductions run in another order on 8 devices. Adam turns a gradient that is zero in exact
    # arithmetic (the attention key bias: softmax is shift-invariant) but ~1e-10 in float into an
    # update of up to lr * 1e-10 / eps = 2e-5, with a sign that depends on that order; every real
    # update is ~lr = 2e-3, so atol 5e-5 still catches a wrong split of the batch or of the RNG.
    for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state8.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)
    assert int(state8.step) == 3


def test_ema_decay_with_warmup():
    step = jax.numpy.arange(4)
    np.testing.assert_allclose(ema.decay_at(step, 0.999, True), [0.1, 2 / 11, 3 / 12, 4 / 13],
                               rtol=1e-6)
    np.testing.assert_allclose(ema.decay_at(step, 0.999, False), 0.999)


def test_learning_rate_warmup_then_cosine():
    cfg = settings.OptimOptions(lr=1e-3, warmup_steps=10, decay="cosine")
    lr = optim.learning_rate_schedule(cfg, 110)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(60)) == pytest.approx(5e-4, rel=1e-4)
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-9)


def test_optimizer_clips_the_global_norm():
    cfg = settings.OptimOptions(grad_clip=1.0, lr=1.0, warmup_steps=0, name="adam")
    tx, _ = optim.build_optimizer(cfg, 10)
    grads = {"w": jax.numpy.full((4,), 10.0)}
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, None)
    assert float(optax.global_norm(clipped)) == pytest.approx(1.0)
    updates, _ = tx.update(grads, tx.init(grads), grads)
    assert np.all(np.isfinite(np.asarray(updates["w"])))


def test_resume_is_exact(data_dir, tmp_path):
    """2N steps in one go == N steps, stop, restart, N more: bit-identical params and losses."""
    config = tiny_config(data_dir)
    straight = train_run(config, str(tmp_path / "straight"))
    config.training.num_steps = 2
    train_run(config, str(tmp_path / "resumed"))
    config.training.num_steps = 4
    resumed = train_run(config, str(tmp_path / "resumed"))
    assert int(resumed.step) == 4
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    def losses(run):
        return [r["loss"] for r in writers.read_metrics(str(tmp_path / run / "metrics.jsonl"))]

    assert losses("straight") == losses("resumed") and len(losses("straight")) == 4
