"""The compiled train step: device-count invariance, EMA, learning rate and exact resume."""

import json

import jax
import numpy as np
import pytest
from conftest import run_steps, tiny_config, train_run

from diffjax import ema, settings, writers
from diffjax.errors import ConfigError
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


def _adam_updates_by_hand(grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam (Kingma & Ba 2015, Algorithm 1) in float64: the update at each step for the list of
    gradients `grads`, bias-corrected moments."""
    m = v = 0.0
    updates = []
    for step, g in enumerate(grads, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**step), v / (1 - b2**step)
        updates.append(-lr * m_hat / (np.sqrt(v_hat) + eps))
    return updates


def _chain_updates(options, grads, params):
    """The updates our optimizer chain gives for the list of gradients `grads` at fixed params."""
    tx, _ = optim.build_optimizer(options, 10)
    state, out = tx.init(params), []
    for g in grads:
        updates, state = tx.update({"w": jax.numpy.asarray(g, np.float32)}, state, params)
        out.append(np.asarray(updates["w"], np.float64))
    return out


def test_optimizer_clips_the_global_norm_before_adam():
    """A gradient of norm 10 then one of norm 0.5, clip 1: Adam's second step sees the first
    clipped to norm 1, so its update is Adam's on the clipped gradients, and far from Adam's on
    the raw ones (there the big first gradient dominates both moments)."""
    options = settings.OptimOptions(grad_clip=1.0, lr=0.1, warmup_steps=0, name="adam")
    direction = np.array([0.6, -0.8, 0.0])  # unit norm
    raw = [10.0 * direction, 0.5 * np.array([0.0, 0.6, 0.8])]
    clipped = [g * min(1.0, 1.0 / np.linalg.norm(g)) for g in raw]
    params = {"w": jax.numpy.zeros(3)}
    ours = _chain_updates(options, raw, params)
    expected = _adam_updates_by_hand(clipped, lr=0.1)
    unclipped = _adam_updates_by_hand(raw, lr=0.1)
    np.testing.assert_allclose(ours[1], expected[1], rtol=1e-5, atol=1e-7)
    assert np.max(np.abs(expected[1] - unclipped[1])) > 0.01  # clipping changes this update


def test_adamw_decays_the_weights_decoupled_from_the_gradient():
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2, with optax's and PyTorch's lr-scaled decay):
    first step p -> p - lr (g / (|g| + eps) + wd p), after global-norm clipping; coupled L2
    (Adam on g + wd p) would give -lr sign(g + wd p) instead."""
    lr, weight_decay = 0.1, 0.5
    options = settings.OptimOptions(name="adamw", lr=lr, weight_decay=weight_decay,
                                    warmup_steps=0, grad_clip=1.0)
    params = np.array([1.0, -2.0, 3.0])
    grads = np.array([4.0, 0.0, -3.0])  # norm 5: clipped to 1
    clipped = grads / 5.0
    expected = -lr * (clipped / (np.abs(clipped) + 1e-8) + weight_decay * params)
    ours = _chain_updates(options, [grads], {"w": jax.numpy.asarray(params, np.float32)})
    np.testing.assert_allclose(ours[0], expected, rtol=1e-5, atol=2e-6)  # float32 rounding


def test_weight_decay_with_adam_is_rejected():
    with pytest.raises(ConfigError, match=r"weight_decay=0.01 is applied only by "
                                          r"optim.name='adamw'.*not by 'adam'; use adamw or set "
                                          r"weight_decay=0"):
        settings.OptimOptions(name="adam", weight_decay=0.01)
    assert settings.OptimOptions(name="adamw", weight_decay=0.01).weight_decay == 0.01


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


def test_smoothed_loss_of_a_constant_is_that_constant_from_the_first_point():
    steps = np.array([0, 5, 7, 30, 31, 100])
    np.testing.assert_allclose(writers.smooth_by_steps(steps, np.full(6, 0.3), 20.0), 0.3,
                               rtol=1e-12)


def test_smoothed_loss_of_a_step_is_the_debiased_ema_by_steps():
    """Values a for k points then b, every gap steps: with w = 0.5^(gap / half_life), the debiased
    EMA (TensorBoard) at point n >= k is (a w^(n-k+1) (1 - w^k) + b (1 - w^(n-k+1))) / (1 - w^(n+1))
    and a before."""
    a, b, k, gap, half_life = 0.55, 0.03, 3, 10, 20.0
    values = np.array([a] * k + [b] * 7)
    n = np.arange(len(values))
    w = 0.5 ** (gap / half_life)
    after = (a * w ** (n - k + 1) * (1 - w**k) + b * (1 - w ** (n - k + 1))) / (1 - w ** (n + 1))
    expected = np.where(n < k, a, after)
    np.testing.assert_allclose(writers.smooth_by_steps(100 + gap * n, values, half_life),
                               expected, rtol=1e-12)


def test_loss_curve_plots_validation_loss_and_learning_rate_on_their_own_panels(tmp_path):
    """Three panels (loss, val_loss, lr) at 100 dpi: 600 x 100 (1.2 + 3 x 2.2) pixels."""
    from PIL import Image

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(
        json.dumps({"step": s, "loss": 0.5 / (1 + s), "lr": 1e-4 * min(s, 3),
                    **({"val_loss": 0.4} if s % 4 == 0 else {})}) + "\n" for s in range(1, 9)))
    writers.plot_loss_curve(str(metrics), str(tmp_path / "curve.png"))
    assert Image.open(tmp_path / "curve.png").size == (600, 780)
