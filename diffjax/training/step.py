"""The one compiled train step, shared by every objective: encode, condition, let the objective
draw the batch's randomness, accumulate gradients over micro-batches, skip non-finite updates,
apply every parameter group's optimizer, update the EMA and the objective's state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from diffjax import parallel


def _split_micro(tree, accum: int):
    """Micro-batch j takes examples j, j + accum, ...: every device holds a slice of each.
    [B, ...] leaves -> [accum, B / accum, ...]."""
    return jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), tree)


def _keep_if(finite, new, old):
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def _accumulated(grad_fn, trainable, inputs, args, example_keys, accum: int):
    """(loss, metrics, grads) of the whole batch: one pass, or the mean over `accum`
    micro-batches under lax.scan. example_keys [B]: each example's dropout key, split with it."""
    if accum == 1:
        (loss, metrics), grads = grad_fn(trainable, inputs, *args, example_keys)
        return loss, metrics, grads

    def add(carry, micro):
        micro_inputs, micro_keys = micro
        (loss_j, metrics_j), grads_j = grad_fn(trainable, micro_inputs, *args, micro_keys)
        return jax.tree.map(jnp.add, carry, (loss_j, metrics_j, grads_j)), None

    micros = _split_micro((inputs, example_keys), accum)
    first_inputs, first_keys = jax.tree.map(lambda x: x[0], micros)
    metrics_shape = jax.eval_shape(
        lambda: grad_fn(trainable, first_inputs, *args, first_keys)[0][1])
    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, metrics_shape),
             jax.tree.map(jnp.zeros_like, trainable))
    total, _ = jax.lax.scan(add, zeros, micros)
    return jax.tree.map(lambda x: x / accum, total)


def per_example_dropout_apply(network, params, x, noise_cond, cond, example_keys):
    """network.apply in training mode with example i's dropout masks drawn from example_keys[i]
    alone (vmapped over the batch), so the masks do not depend on how the batch is split into
    micro-batches or over devices. x: [B,H,W,C]; noise_cond, cond: [B, ...] leaves;
    example_keys: [B] keys. A call with another batch size (an objective's own layout) draws its
    masks from one key derived from example_keys[0]; a network that is not `stochastic` is
    applied to the whole batch."""
    if not network.stochastic:
        return network.apply(params, x, noise_cond, cond, train=True, rng=example_keys[0])
    if x.shape[0] != example_keys.shape[0]:
        key = jax.random.fold_in(example_keys[0], x.shape[0])
        return network.apply(params, x, noise_cond, cond, train=True, rng=key)

    def one(x_i, noise_i, cond_i, key):
        add_batch = lambda tree: jax.tree.map(lambda leaf: leaf[None], tree)  # noqa: E731
        out = network.apply(params, x_i[None], add_batch(noise_i), add_batch(cond_i),
                            train=True, rng=key)
        return out[0]

    return jax.vmap(one)(x, noise_cond, cond, example_keys)


def _update_objective(objective, group_txs, state, grads, params):
    """The objective's groups after their optimizers' updates, and its state after_update."""
    group_params, group_opt = {}, {}
    for name, tx_g in group_txs.items():
        updates_g, group_opt[name] = tx_g.update(grads[name], state.objective.opt_state[name],
                                                 state.objective.params[name])
        group_params[name] = optax.apply_updates(state.objective.params[name], updates_g)
    objective_state = objective.after_update(state.objective.state,
                                             {"network": params, **group_params}, state.step)
    return state.objective.replace(params=group_params, opt_state=group_opt,
                                   state=objective_state)


def make_train_step(network, objective, conditioning, codec, tx, ema, lr_fn,
                    grad_accum_steps: int = 1, augment=None):
    """Returns train_step(state, batch, codec_params) -> (state, metrics), pure; jit it with
    `jit_train_step`.

    batch: {'image': [B, H, W, C] float32 in [-1, 1] (or a cacheable codec's 'latent_moments'),
    'label': [B] int32}. The per-step randomness
    comes from fold_in(state.rng, state.step), so it is independent of how the batch is sharded.
    A step whose loss or any gradient is not finite changes nothing but `step` (the data position)
    and `nonfinite_count`; metrics['skipped'] is 1 for it.
    augment: None, or (images, key) -> (images, labels [B, k]) applied to batch['image'] first
    (core.augment), its labels passed on as batch['augment']."""
    accum = grad_accum_steps
    group_txs = objective.optimizers()

    def loss_fn(trainable, inputs, objective_state, step, example_keys):
        def apply(params, x, noise_cond, cond):
            return per_example_dropout_apply(network, params, x, noise_cond, cond, example_keys)

        return objective.loss(trainable, apply, inputs, objective_state, step)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def gradients(state, inputs, example_keys):
        trainable = {"network": state.params, **state.objective.params}
        return _accumulated(grad_fn, trainable, inputs, (state.objective.state, state.step),
                            example_keys, accum)

    def train_step(state, batch, codec_params):
        rng = jax.random.fold_in(state.rng, state.step)
        rng_objective, rng_dropout, rng_cond = jax.random.split(rng, 3)
        if augment is not None:
            images, labels = augment(batch["image"], jax.random.fold_in(rng, 4))
            batch = {**batch, "image": images, "augment": labels}
        x = codec.encode_batch(codec_params, batch, jax.random.fold_in(rng, 3))
        cond = conditioning.train(batch, rng_cond)
        # The whole batch's randomness is drawn first, so accumulation changes nothing but memory.
        inputs = objective.prepare(x, cond, rng_objective, state.step)
        loss, metrics, grads = gradients(state, inputs,
                                         jax.random.split(rng_dropout, x.shape[0]))

        grad_norm = optax.global_norm(grads["network"])
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        for name in state.objective.params:
            finite &= jnp.isfinite(optax.global_norm(grads[name]))
        updates, opt_state = tx.update(grads["network"], state.opt_state, state.params)
        params = network.project_params(optax.apply_updates(state.params, updates))
        new_objective = _update_objective(objective, group_txs, state, grads, params)
        nonfinite_count = jnp.where(finite, 0, state.nonfinite_count + 1)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_fn(state.step),
                   "skipped": (~finite).astype(jnp.int32), "nonfinite_count": nonfinite_count,
                   **metrics}
        new_state = state.replace(
            step=state.step + 1, params=_keep_if(finite, params, state.params),
            ema=_keep_if(finite, ema.update(state.ema, params, state.step), state.ema),
            opt_state=_keep_if(finite, opt_state, state.opt_state),
            objective=_keep_if(finite, new_objective, state.objective),
            nonfinite_count=nonfinite_count)
        return new_state, metrics

    return train_step


def jit_train_step(train_step, mesh, state_sharding):
    """Compiles the step over the mesh: the state keeps `state_sharding` (replicated, or FSDP)
    and is donated; the batch is split over all devices; codec params and metrics are
    replicated."""
    repl = parallel.replicated(mesh)
    return jax.jit(train_step, in_shardings=(state_sharding, parallel.batch_sharding(mesh), repl),
                   out_shardings=(state_sharding, repl), donate_argnums=0)


class BoundStep:
    """A jitted train step with the codec's params bound: step(state, batch); lower(state, batch)
    gives XLA's lowered program (compile it, then call it with the three arguments)."""

    def __init__(self, jitted, codec_params):
        self.jitted, self.codec_params = jitted, codec_params

    def __call__(self, state, batch):
        return self.jitted(state, batch, self.codec_params)

    def lower(self, state, batch):
        return self.jitted.lower(state, batch, self.codec_params)
