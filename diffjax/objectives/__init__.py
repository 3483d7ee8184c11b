"""Training objectives behind one contract, registered by name: config.objective.name picks one,
its options are config.objective.<name>. A factory is `factory(options, ctx: ObjectiveContext)
-> Objective`.

The train step (diffjax.training.step) knows nothing of what an objective draws: it hands the
objective the encoded batch x and the conditioning, splits whatever `prepare` returns into
micro-batches along axis 0, and differentiates `loss` with respect to every trainable group: the
network's params under 'network', and the objective's own groups (e.g. a discriminator, a learned
loss weighting), each with the optimizer `optimizers()` gives it. Where groups must not see each
other's gradients (a GAN), `loss` separates them with jax.lax.stop_gradient. Non-trained state
(e.g. a target network) is updated by `after_update` after each applied step. Everything an
objective owns is in the train state, so it is checkpointed and resumed with the rest.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from diffjax.core.parameterizations import bcast
from diffjax.registry import Registry

OBJECTIVES = Registry("objective", "objective.name", "objective")

# apply(network params, x [B,H,W,C], noise_cond [B], cond) -> the network's whole output
# [B,H,W,C + extra channels] (see diffjax.models.network), with the train flag and the dropout key
# already bound by the caller.
Apply = Callable


@dataclasses.dataclass(frozen=True)
class ObjectiveContext:
    """What the builder gives an objective: the schedule, the parameterization, the network (for
    objectives that call it with other params, e.g. a teacher), the conditioning, the run's
    training.num_steps (for curricula over the run; 0: unknown), the shape of x [H, W, C] and a
    loader of other runs."""

    schedule: Any
    parameterization: Any
    network: Any = None
    conditioning: Any = None
    num_steps: int = 0
    x_shape: tuple = ()
    # load_run(workdir, key) -> Teacher: a trained run of this codebase (for distillation); key
    # names the config field that gave workdir, for errors.
    load_run: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A trained run loaded for distillation: its network, schedule and parameterization, its
    sampling params (EMA), the shape of its x, its class count, the clip bounds its sampling
    uses (None: unclipped), its checkpoint step, its workdir and its config (a ConfigDict)."""

    network: Any
    schedule: Any
    parameterization: Any
    params: Any
    x_shape: tuple
    num_classes: int
    clip: tuple | None
    step: int
    workdir: str

    config: Any = None

    def denoise(self, x_t, t, cond):
        """The teacher's x0_hat [B,H,W,C] float32 of x_t [B,H,W,C] at its times t [B] (eval
        mode, no dropout), clipped as its sampling clips."""
        sched, param = self.schedule, self.parameterization

        def net(x_in, c_noise):
            return self.network.predict(self.params, x_in, c_noise, cond)

        out = param.network_output(net, x_t, t, sched)
        x0 = param.x0_eps(x_t, out, sched.alpha(t), sched.sigma(t))[0]
        return jnp.clip(x0, *self.clip) if self.clip is not None else x0

    def denoise_ve(self, x_ve, sigma, cond):
        """The teacher's D(x_ve; sigma): x_ve [B,H,W,C] at VE-equivalent levels sigma [B] ->
        x0_hat [B,H,W,C] (see denoise)."""
        sched = self.schedule
        t = jnp.clip(sched.t_from_logsnr(-2.0 * jnp.log(sigma)), 0.0, sched.t_max)
        return self.denoise(bcast(sched.alpha(t), x_ve) * x_ve, t, cond)


class Objective:
    """The contract (see the module docstring); defaults: no groups and no state of its own."""

    def init_params(self, rng, network_params) -> dict:
        """The objective's trainable groups {name: params} ({}: none)."""
        return {}

    def optimizers(self) -> dict:
        """{group name: optax.GradientTransformation} for every group of init_params."""
        return {}

    def initial_network_params(self, network_params):
        """The network's params at step 0 (e.g. a teacher's); default: network.init's."""
        return network_params

    def check_sampling(self, sampler: str, num_steps: int, spacing: str) -> None:
        """Raises ConfigError for sampler settings the trained model cannot take (default:
        any)."""

    def init_state(self, rng, network_params) -> Any:
        """Non-trained state (e.g. a target network); {}: none."""
        return {}

    def prepare(self, x, cond: dict, rng, step) -> dict:
        """The randomness of a whole batch, drawn once so gradient accumulation changes nothing
        but memory: a pytree of per-example arrays (leading axis B), including x and cond."""
        raise NotImplementedError

    def loss(self, params: dict, apply: Apply, inputs: dict, state, step) -> tuple:
        """Mean loss of a (micro-)batch of `prepare`'s output. params: {'network': ..., **the
        objective's groups}. Returns (scalar loss, {metric name: scalar})."""
        raise NotImplementedError

    def after_update(self, state, params: dict, step):
        """The non-trained state after an applied update to `params`."""
        return state

    def validation_losses(self, params: dict, apply: Apply, x, cond: dict, rng,
                          num_levels: int, state=None):
        """Deterministic per-example losses [K, B] of held-out x at K fixed noise levels.
        params: as in loss; state: the objective's non-trained state. An objective without one
        leaves this as is, and training.val_every_steps must be 0 for it."""
        raise NotImplementedError


def make_objective(name: str, options, ctx: ObjectiveContext) -> Objective:
    """The objective registered as `name` (options None: its defaults)."""
    entry = OBJECTIVES.get(name)
    return entry.factory(options if options is not None else entry.default_options(), ctx)


# registers the built-ins
from diffjax.objectives import (  # noqa: E402,F401
    consistency,
    consistency_distillation,
    ddgan,
    denoising,
    edm2,
    flow_matching,
    mean_flow,
    progressive_distillation,
)
