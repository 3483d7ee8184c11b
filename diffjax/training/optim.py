"""The network's optimizer: global-norm clipping, then Adam or AdamW on a warmup + constant,
cosine or inverse-square-root (EDM2) learning-rate schedule (config.optim, typed as
OptimOptions)."""

from __future__ import annotations

import dataclasses

import optax

from diffjax.options import OptionError, check, choice

OPTIMIZERS = ("adam", "adamw")
LR_DECAYS = ("constant", "cosine", "rsqrt")


@dataclasses.dataclass(frozen=True)
class OptimOptions:
    """config.optim: global-norm clip -> Adam or AdamW, linear warmup then constant, cosine or
    rsqrt: EDM2's lr / sqrt(max(step / ref_steps, 1)) times the warmup ramp (Karras et al. 2024,
    eq. 15; its t_ref, 70k steps at ImageNet-512)."""

    name: str = "adam"
    lr: float = 2e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0     # adamw only (decoupled); > 0 with adam is an error
    warmup_steps: int = 5000
    decay: str = "constant"       # constant | cosine (to lr * final_lr_frac at num_steps) | rsqrt
    final_lr_frac: float = 0.0
    ref_steps: int = 0            # rsqrt only: the step the decay starts at (EDM2's t_ref)
    grad_clip: float = 1.0        # global-norm clip; 0 disables

    def __post_init__(self):
        choice("name", self.name, OPTIMIZERS)
        choice("decay", self.decay, LR_DECAYS)
        check(self.lr > 0, "lr", self.lr, "must be > 0")
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        check(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0 (0 disables)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(self.ref_steps >= 0, "ref_steps", self.ref_steps, "must be >= 0")
        if self.decay == "rsqrt":
            check(self.ref_steps >= 1, "ref_steps", self.ref_steps,
                  "must be >= 1 with decay='rsqrt' (EDM2's t_ref: 70000 at ImageNet-512)")
        if self.weight_decay > 0 and self.name != "adamw":
            raise OptionError("weight_decay", self.weight_decay,
                              "is applied only by optim.name='adamw' (decoupled decay), not by "
                              f"{self.name!r}; use adamw or set weight_decay=0")


def learning_rate_schedule(options: OptimOptions, num_steps: int) -> optax.Schedule:
    """Linear warmup over options.warmup_steps, then constant or cosine decay to
    lr * final_lr_frac at num_steps; rsqrt: EDM2's schedule, the warmup ramp times
    lr / sqrt(max(step / ref_steps, 1))."""
    o = options
    if o.decay == "rsqrt":
        from diffjax.objectives.edm2 import edm2_learning_rate

        return edm2_learning_rate(o.lr, o.ref_steps, o.warmup_steps)
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
