"""The KL autoencoder's training objective (LDM's LPIPSWithDiscriminator without LPIPS; Rombach
et al. 2022, Esser et al. 2021): per image

    L_ae = sum |x - D(z)|  (or squared)  +  kl_weight * KL(q(z|x) || N(0, I))
           + on(step) * lambda * (-mean patch logit of D(z)),        z ~ q(z | x)
    L_disc = on(step) * hinge(logits of x, logits of D(z))

summed over pixels and latent entries and averaged over the batch, as LDM does, so LDM's
kl_weight (1e-6) means the same here. lambda is LDM's adaptive weight: the ratio of the
reconstruction's and the adversarial term's gradient norms at the decoder's last layer, clipped
to [0, 1e4], times disc_weight; on(step) = 1 from disc_start_step. The two groups see only their
own terms (stop_gradient), so one loss drives both optimizers in the shared train step.

No perceptual term: LPIPS needs VGG weights we cannot load offline, and the FID Inception would
inflate the rFID the autoencoder is scored by.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.core import posterior
from diffjax.models.network import Network
from diffjax.objectives import Objective

sg = jax.lax.stop_gradient
LAST_LAYER = ("decoder", "conv_out")  # the params of AutoencoderKL.decode_output


@dataclasses.dataclass(frozen=True)
class AutoencoderNetwork(Network):
    """An AutoencoderKL as the train state's network: init gives its params. The objective calls
    the module's encode/decode itself, so apply is not used."""

    module: Any
    x_shape: tuple[int, int, int]
    out_channels: int

    def init(self, rng):
        from diffjax.models.autoencoder import init_params

        return init_params(self.module.config, rng, self.x_shape)

    def apply(self, params, x, noise_cond, cond, train=False, rng=None):
        return self.module.apply({"params": params}, x)[0]


def _with_last_layer(params: dict, layer: dict) -> dict:
    outer, inner = LAST_LAYER
    return {**params, outer: {**params[outer], inner: layer}}


def hinge_d_loss(logits_real, logits_fake) -> jax.Array:
    """0.5 (mean relu(1 - real) + mean relu(1 + fake)) (Lim & Ye 2017; LDM's default)."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real))
                  + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def adaptive_weight(grad_rec, grad_gan, disc_weight: float) -> jax.Array:
    """LDM's calculate_adaptive_weight: ||g_rec|| / (||g_gan|| + 1e-4), clipped to [0, 1e4],
    times disc_weight; not differentiated."""
    norm = lambda tree: jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(tree)))  # noqa: E731
    ratio = norm(grad_rec) / (norm(grad_gan) + 1e-4)
    return sg(jnp.clip(ratio, 0.0, 1e4) * disc_weight)


@dataclasses.dataclass(frozen=True)
class AutoencoderObjective(Objective):
    """See the module docstring. module: the AutoencoderKL; discriminator: a PatchDiscriminator
    or None (no adversarial term); disc_tx: the discriminator's optimizer."""

    module: Any
    image_shape: tuple[int, int, int]
    reconstruction: str = "l1"
    kl_weight: float = 1e-6
    discriminator: Any = None
    disc_weight: float = 0.5
    disc_start_step: int = 0
    disc_tx: Any = None

    def init_params(self, rng, network_params) -> dict:
        if self.discriminator is None:
            return {}
        dummy = jnp.zeros((1, *self.image_shape), jnp.float32)
        return {"discriminator": self.discriminator.init(rng, dummy)["params"]}

    def optimizers(self) -> dict:
        return {} if self.discriminator is None else {"discriminator": self.disc_tx}

    def prepare(self, x, cond, rng, step) -> dict:
        """x [B, H, W, C] and the posterior's noise [B, h, w, C_latent]."""
        f = self.module.config.downsampling_factor
        shape = (x.shape[0], x.shape[1] // f, x.shape[2] // f, self.module.config.latent_channels)
        return {"x": x, "eps": jax.random.normal(rng, shape, jnp.float32)}

    def _rec(self, x, recon) -> jax.Array:
        """The reconstruction term per image, summed over pixels: [B]."""
        err = jnp.abs(x - recon) if self.reconstruction == "l1" else (x - recon) ** 2
        return jnp.sum(err, axis=(1, 2, 3))

    def reconstruct(self, ae_params, x, eps=None):
        """(reconstruction [B, H, W, C], decoder features before its last layer, mean, logvar);
        eps None decodes the posterior mean."""
        m = self.module
        mean, logvar = posterior.split_moments(
            m.apply({"params": ae_params}, x, method=m.encode).astype(jnp.float32))
        z = mean if eps is None else mean + jnp.exp(0.5 * logvar) * eps
        h = m.apply({"params": ae_params}, z, method=m.decode_features)
        recon = m.apply({"params": ae_params}, h, method=m.decode_output).astype(jnp.float32)
        return recon, h, mean, logvar

    def loss(self, params, apply, inputs, state, step):
        ae, x = params["network"], inputs["x"]
        recon, h, mean, logvar = self.reconstruct(ae, x, inputs["eps"])
        rec = jnp.mean(self._rec(x, recon))
        kl = jnp.mean(posterior.kl_to_standard_normal(mean, logvar))
        loss = rec + self.kl_weight * kl
        metrics = {"rec_loss_per_pixel": rec / x[0].size, "kl": kl}
        if self.discriminator is None:
            return loss, metrics
        disc, d_params = self.discriminator, params["discriminator"]
        on = (step >= self.disc_start_step).astype(jnp.float32)
        g_loss = -jnp.mean(disc.apply({"params": sg(d_params)}, recon))

        m, outer, inner = self.module, *LAST_LAYER
        last, h_fixed = sg(ae[outer][inner]), sg(h)

        def out(layer):
            p = _with_last_layer(sg(ae), layer)
            return m.apply({"params": p}, h_fixed, method=m.decode_output).astype(jnp.float32)

        grad_rec = jax.grad(lambda w: jnp.mean(self._rec(sg(x), out(w))))(last)
        grad_gan = jax.grad(
            lambda w: -jnp.mean(disc.apply({"params": sg(d_params)}, out(w))))(last)
        d_weight = adaptive_weight(grad_rec, grad_gan, self.disc_weight)
        logits_real = disc.apply({"params": d_params}, sg(x))
        logits_fake = disc.apply({"params": d_params}, sg(recon))
        d_loss = on * hinge_d_loss(logits_real, logits_fake)
        loss = loss + on * d_weight * g_loss + d_loss
        metrics.update(g_loss=g_loss, d_loss=d_loss, d_weight=d_weight,
                       logits_real=jnp.mean(logits_real), logits_fake=jnp.mean(logits_fake))
        return loss, metrics
