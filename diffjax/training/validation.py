"""The validation loss: the objective's deterministic loss on held-out batches at fixed noise
levels, so it moves only when the params do."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax import parallel
from diffjax.objectives import Objective


def num_val_batches(training, num_examples: int) -> int:
    """Whole global batches of held-out examples: training.val_num_examples (0: the whole
    split), capped at the split's size, at least one."""
    wanted = training.val_num_examples or num_examples
    return max(1, min(wanted, num_examples) // training.batch_size)


def make_val_loss(exp):
    """Returns val_loss(train_state) -> float: the objective's validation_losses on the held-out
    batches of exp.val_pipeline at training.val_num_levels fixed levels, with noise from
    PRNGKey(0) folded with the batch index, no dropout and the batch's own condition, given the
    network's params and the objective's groups and state. The same state gives the same value.
    None where the objective has no validation loss."""
    network, objective, codec, cond_part = exp.network, exp.objective, exp.codec, exp.conditioning
    levels = exp.training.val_num_levels

    def apply(params, x, noise_cond, cond):
        return network.apply(params, x, noise_cond, cond, train=False)

    def batch_loss(params, objective_state, codec_params, batch, rng):
        x = codec.encode(codec_params, batch["image"])
        losses = objective.validation_losses(params, apply, x, cond_part.true(batch), rng, levels,
                                             objective_state)
        return jnp.sum(losses)

    if type(objective).validation_losses is Objective.validation_losses:
        return None
    fn = jax.jit(batch_loss, out_shardings=parallel.replicated(exp.mesh))
    count_batches = num_val_batches(exp.training, exp.val_pipeline.num_examples)
    batches = [parallel.to_global(exp.val_pipeline.batch(b), exp.mesh)
               for b in range(count_batches)]
    count = len(batches) * exp.training.batch_size * levels

    def val_loss(train_state) -> float:
        params = {"network": train_state.params, **train_state.objective.params}
        total = 0.0
        for b, batch in enumerate(batches):
            rng = jax.random.fold_in(jax.random.PRNGKey(0), b)
            total += float(fn(params, train_state.objective.state, exp.codec.params, batch, rng))
        return total / count

    return val_loss
