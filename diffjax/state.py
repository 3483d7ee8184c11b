"""The train state: one pytree with everything a run needs to continue exactly, and the reader of
checkpoints written before the plug-in layout (diffjax <= stop 9)."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class ObjectiveState:
    """What the objective owns: trainable groups {name: params}, their optimizer states, and
    non-trained state (e.g. a target network). Empty dicts for the denoising objective."""

    params: Any
    opt_state: Any
    state: Any


@flax.struct.dataclass
class TrainState:
    """Everything needed to continue exactly. The data position is `step` (see diffjax.data)."""

    step: jax.Array             # int32 []
    params: Any                 # the network's
    ema: Any                    # the EMA plug-in's state (fixed rates: one tree per rate)
    opt_state: Any              # the network optimizer's
    objective: ObjectiveState
    rng: jax.Array              # uint32 [2], raw PRNG key data
    nonfinite_count: jax.Array  # int32 [], consecutive updates skipped for a non-finite loss/grad


def init_state(rng, network, tx, ema, objective) -> TrainState:
    """Fresh state: params from network.init, every EMA = params, step 0. The objective's groups
    and state come from keys folded from the init key, so the network's draw is unchanged."""
    rng, init_rng = jax.random.split(rng)
    params = objective.initial_network_params(network.init(init_rng))
    group_params = objective.init_params(jax.random.fold_in(init_rng, 1), params)
    txs = objective.optimizers()
    missing = sorted(set(group_params) - set(txs))
    if missing:
        raise ValueError(f"the objective's group {missing[0]!r} has no optimizer in "
                         f"optimizers()")
    objective_state = ObjectiveState(
        params=group_params, opt_state={k: txs[k].init(v) for k, v in group_params.items()},
        state=objective.init_state(jax.random.fold_in(init_rng, 2), params))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema=ema.init(params),
                      opt_state=tx.init(params), objective=objective_state, rng=rng,
                      nonfinite_count=jnp.zeros((), jnp.int32))


# ---------------------------------------------------------------------------------------------
# Checkpoints of the layout before plug-ins: {step, params, ema_params, opt_state, rng,
# nonfinite_count[, extra_ema]}, with ema_params the first EMA rate and extra_ema the others.


def legacy_layout(state: TrainState):
    """The pre-plug-in layout of `state` (arrays or ShapeDtypeStructs), or None when it has no
    such form: objective groups or state, or an EMA that is not a tuple of trees."""
    objective = state.objective
    if jax.tree.leaves((objective.params, objective.opt_state, objective.state)):
        return None
    if not isinstance(state.ema, tuple) or not state.ema:
        return None
    old = {"step": state.step, "params": state.params, "ema_params": state.ema[0],
           "opt_state": state.opt_state, "rng": state.rng,
           "nonfinite_count": state.nonfinite_count}
    if len(state.ema) > 1:
        old["extra_ema"] = tuple(state.ema[1:])
    return old


def from_legacy(old: dict, like: TrainState) -> TrainState:
    """A TrainState from a restored pre-plug-in checkpoint (see legacy_layout)."""
    return like.replace(step=old["step"], params=old["params"],
                        ema=(old["ema_params"], *old.get("extra_ema", ())),
                        opt_state=old["opt_state"], rng=old["rng"],
                        nonfinite_count=old["nonfinite_count"])
