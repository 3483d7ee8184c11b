"""Denoising diffusion GAN (DDGAN, Xiao et al. 2022, Algorithm 1; see core.ddgan): T large
denoising steps, each a conditional GAN. Per example, a level k ~ U{1..T} and

    x_{k-1} ~ q(x_{k-1} | x0),  x_k ~ q(x_k | x_{k-1})               (the real pair)
    x0' = G(x_k, z, t_k), z ~ N(0, I),  x'_{k-1} ~ q(x_{k-1} | x_k, x0')  (the generated one)
    L_D = softplus(-D(x_{k-1}, x_k, t_k)) + softplus(D(x'_{k-1}, x_k, t_k))
          + gamma / 2 ||grad_{x_{k-1}} D(x_{k-1}, x_k, t_k)||^2           (R1 on real pairs)
    L_G = softplus(-D(x'_{k-1}, x_k, t_k))                              (non-saturating)

The network is the generator (diffusion.parameterization='x0_latent': x0 with a latent z as its
second noise input); the discriminator is this objective's own trained group with its own Adam,
checkpointed with the rest. One loss drives both: G's term sees D under stop_gradient and D's
terms see x'_{k-1} under stop_gradient, so the two are updated together in the one train step
(simultaneous updates, where the paper alternates D then G). Sample with
sampling.sampler='ddgan' and num_steps = T.

Defaults are the paper's CIFAR-10 ones: T = 4 on the VP SDE (diffusion.schedule='vp_linear',
beta 0.1..20), gamma = 0.02, D's Adam 1.25e-4 with betas (0.5, 0.9) (G's: config.optim). What
differs: a smaller D (see models.discriminator), R1 at every step (the paper: every 15), no
lr decay of D."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from diffjax.core import ddgan as dg
from diffjax.core.parameterizations import bcast
from diffjax.errors import ConfigError
from diffjax.objectives import OBJECTIVES, Objective, ObjectiveContext
from diffjax.options import check

sg = jax.lax.stop_gradient
KEY = "objective.ddgan"


@dataclasses.dataclass(frozen=True)
class DDGANOptions:
    """num_steps: T, the denoising steps (= sampling NFE); disc_channels, disc_layers: the
    discriminator's width and its stride-2 blocks; disc_lr, disc_b1, disc_b2: its Adam;
    r1_gamma: the R1 weight gamma (0: none)."""

    num_steps: int = 4
    disc_channels: int = 64
    disc_layers: int = 3
    disc_lr: float = 1.25e-4
    disc_b1: float = 0.5
    disc_b2: float = 0.9
    r1_gamma: float = 0.02

    def __post_init__(self):
        check(self.num_steps >= 1, "num_steps", self.num_steps, "must be >= 1")
        check(self.disc_channels >= 1, "disc_channels", self.disc_channels, "must be >= 1")
        check(self.disc_layers >= 1, "disc_layers", self.disc_layers, "must be >= 1")
        check(self.disc_lr > 0, "disc_lr", self.disc_lr, "must be > 0")
        check(0 <= self.disc_b1 < 1, "disc_b1", self.disc_b1, "must be in [0, 1)")
        check(0 <= self.disc_b2 < 1, "disc_b2", self.disc_b2, "must be in [0, 1)")
        check(self.r1_gamma >= 0, "r1_gamma", self.r1_gamma, "must be >= 0 (0: no R1)")


@dataclasses.dataclass(frozen=True)
class DDGAN(Objective):
    """See the module docstring. discriminator: a module D(x_prev, x_t, t_cond) -> [B] logits
    (models.discriminator.TimeConditionedDiscriminator)."""

    schedule: Any
    parameterization: Any
    discriminator: Any
    x_shape: tuple = ()
    network: Any = None
    options: DDGANOptions = DDGANOptions()

    def levels(self):
        """t_0 = 0 < ... < t_T = t_max: [T + 1] float32."""
        return dg.levels(self.options.num_steps, getattr(self.schedule, "t_max", 1.0))

    def init_params(self, rng, network_params) -> dict:
        dummy = jnp.zeros((1, *self.x_shape), jnp.float32)
        return {"discriminator": self.discriminator.init(rng, dummy, dummy,
                                                         jnp.zeros((1,)))["params"]}

    def optimizers(self) -> dict:
        o = self.options
        return {"discriminator": optax.adam(o.disc_lr, b1=o.disc_b1, b2=o.disc_b2)}

    def check_sampling(self, sampler: str, num_steps: int, spacing: str) -> None:
        t = self.options.num_steps
        if sampler != "ddgan" or num_steps != t:
            raise ConfigError(f"config.sampling.sampler={sampler!r} with num_steps={num_steps}: "
                              f"this DDGAN generator was trained for {t} denoising steps "
                              f"({KEY}.num_steps={t}); sample with --config.sampling.sampler="
                              f"ddgan --config.sampling.num_steps={t}")

    def prepare(self, x, cond, rng, step):
        """The level k [B] int32 in 1..T, the noises of the real pair and the posterior [B,H,W,C]
        each, and the latent z [B, latent_dim]."""
        keys = jax.random.split(rng, 5)
        batch = x.shape[0]
        normal = lambda key: jax.random.normal(key, x.shape, jnp.float32)  # noqa: E731
        return {"x": x, "cond": cond,
                "k": jax.random.randint(keys[0], (batch,), 1, self.options.num_steps + 1),
                "eps_prev": normal(keys[1]), "eps_step": normal(keys[2]),
                "eps_post": normal(keys[3]),
                "z": jax.random.normal(keys[4], (batch, self.parameterization.latent_dim),
                                       jnp.float32)}

    def pairs(self, gen_params, apply, inputs):
        """(x_{k-1}, x_k, x'_{k-1}, t_k): the real pair, the generated x_{k-1} and the times [B],
        images [B,H,W,C]."""
        levels, sched, x = self.levels(), self.schedule, inputs["x"]
        t, s = levels[inputs["k"]], levels[inputs["k"] - 1]
        alpha_t, sigma_t = dg.marginal_coefficients(sched, t)
        alpha_s, sigma_s = dg.marginal_coefficients(sched, s)
        x_prev = bcast(alpha_s, x) * x + bcast(sigma_s, x) * inputs["eps_prev"]
        x_t = dg.forward_step(x_prev, inputs["eps_step"], alpha_s, sigma_s, alpha_t, sigma_t)
        out_channels = self.network.out_channels if self.network is not None else None

        def net(x_in, c_noise):
            out = apply(gen_params, x_in, c_noise, inputs["cond"])
            return out[..., :out_channels] if out_channels else out

        out = self.parameterization.network_output(net, x_t, t, sched, r=inputs["z"])
        x0 = self.parameterization.x0_eps(x_t, out, alpha_t, sigma_t)[0]
        fake = dg.posterior_sample(x_t, x0, inputs["eps_post"], alpha_t, sigma_t, alpha_s,
                                   sigma_s)
        return x_prev, x_t, fake, t

    def loss(self, params, apply, inputs, state, step):
        x_prev, x_t, fake, t = self.pairs(params["network"], apply, inputs)
        d_params = params["discriminator"]
        t_cond = self.parameterization.c_noise(self.schedule, t)[0]

        def disc(p, a):
            return self.discriminator.apply({"params": p}, a, x_t, t_cond)

        logits_real, vjp = jax.vjp(lambda a: disc(d_params, a), x_prev)
        logits_fake = disc(d_params, sg(fake))
        d_loss = jnp.mean(dg.discriminator_loss(logits_real, logits_fake))
        r1 = jnp.mean(dg.r1_penalty(vjp(jnp.ones_like(logits_real))[0]))
        g_loss = jnp.mean(dg.generator_loss(disc(sg(d_params), fake)))
        loss = g_loss + d_loss + 0.5 * self.options.r1_gamma * r1
        return loss, {"g_loss": g_loss, "d_loss": d_loss, "r1": r1,
                      "logits_real": jnp.mean(logits_real),
                      "logits_fake": jnp.mean(logits_fake)}


@OBJECTIVES.register("ddgan", options=DDGANOptions)
def ddgan(options: DDGANOptions, ctx: ObjectiveContext) -> DDGAN:
    from diffjax.models.discriminator import TimeConditionedDiscriminator

    name = getattr(ctx.parameterization, "name", ctx.parameterization)
    if name != "x0_latent":
        raise ConfigError(f"config.objective.name='ddgan' trains a latent generator: "
                          f"config.diffusion.parameterization must be 'x0_latent', not {name!r}")
    if getattr(ctx.schedule, "is_discrete", False):
        raise ConfigError(f"config.objective.name='ddgan' needs a continuous schedule "
                          f"(config.diffusion.schedule='vp_linear' is the paper's), not the "
                          f"discrete {ctx.schedule.name!r}")
    disc = TimeConditionedDiscriminator(options.disc_channels, options.disc_layers)
    return DDGAN(ctx.schedule, ctx.parameterization, disc, tuple(ctx.x_shape), ctx.network,
                 options)
