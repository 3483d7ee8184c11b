"""The network's optimizer: global-norm clipping, then Adam or AdamW on a warmup + constant or
cosine learning-rate schedule (config.optim, typed as settings.OptimOptions)."""

from __future__ import annotations

import optax

from diffjax.settings import OptimOptions


def learning_rate_schedule(options: OptimOptions, num_steps: int) -> optax.Schedule:
    """Linear warmup over options.warmup_steps, then constant or cosine decay to
    lr * final_lr_frac at num_steps."""
    o = options
    warmup = optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1))
    if o.decay == "constant":
        after = optax.constant_schedule(o.lr)
    else:
        after = optax.cosine_decay_schedule(o.lr, max(num_steps - o.warmup_steps, 1),
                                            alpha=o.final_lr_frac)
    if o.warmup_steps <= 0:
        return after
    return optax.join_schedules([warmup, after], [o.warmup_steps])


def build_optimizer(options: OptimOptions,
                    num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, learning-rate schedule): global-norm clip -> Adam or AdamW (decoupled weight
    decay)."""
    o = options
    lr = learning_rate_schedule(o, num_steps)
    if o.name == "adam":
        opt = optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)
    else:
        opt = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    if o.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(o.grad_clip), opt)
    return opt, lr
