"""The probability-flow ODE (Song et al. 2021, eq. 13) solved by an adaptive diffrax solver.

In the VE-equivalent coordinates x / alpha with time s = log(sigma / alpha) the ODE is
dx/ds = x - D(x; e^s) (Karras et al. 2022, eq. 1 with sigma(t) = t, s(t) = 1, written in log sigma),
which is well scaled from sigma_max down to sigma_min for every schedule."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from diffjax.options import check, choice
from diffjax.samplers.grids import sigma_ve, t_from_sigma_ve
from diffjax.samplers.prediction import Prediction
from diffjax.samplers.registry import SAMPLERS

ODE_SOLVERS = ("tsit5", "dopri5", "dopri8", "bosh3")


@dataclasses.dataclass(frozen=True)
class ODEOptions:
    """The adaptive diffrax solver and its tolerances; the grid only sets the end points."""

    solver: str = "tsit5"
    rtol: float = 1e-5
    atol: float = 1e-5

    def __post_init__(self):
        choice("solver", self.solver, ODE_SOLVERS)
        check(self.rtol > 0, "rtol", self.rtol, "must be > 0")
        check(self.atol > 0, "atol", self.atol, "must be > 0")

MAX_STEPS = 4096
INITIAL_STEPS_PER_RANGE = 100  # dt0 = (log sigma_min - log sigma_max) / 100; PID adapts it


def make_solver(name: str):
    """The diffrax solver named `name` (diffrax is imported only when used)."""
    import diffrax

    solvers = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
               "bosh3": diffrax.Bosh3}
    return solvers[name]()


def evals_per_step(solver) -> int:
    """Vector-field evaluations per (accepted or rejected) step of an explicit RK solver: its
    stages, less one when the last stage is reused as the next first (FSAL)."""
    tableau = solver.tableau
    return tableau.num_stages - (1 if tableau.fsal else 0)


def nfe_from_stats(solver, num_steps):
    """NFE of one solve from diffrax's step count (accepted + rejected): 1 for the first stage of
    an FSAL solver, evals_per_step per step, and 1 for the final denoising D(x; sigma_min). The
    initial step is given (INITIAL_STEPS_PER_RANGE), so no evaluations go to choosing it."""
    return (1 if solver.tableau.fsal else 0) + evals_per_step(solver) * num_steps + 1


@SAMPLERS.register("ode", options=ODEOptions)
def probability_flow(pred: Prediction, ts, x, rng, opts: ODEOptions):
    """Integrates from sigma(ts[0]) to sigma(ts[-1]) (VE-equivalent) with opts.solver under a
    PID step-size controller (opts.rtol, opts.atol; the error norm is the RMS over the
    whole batch), then returns D(x; sigma_min). Returns (x0, NFE as a traced int32 scalar; -1 if
    the solver did not reach sigma_min within MAX_STEPS steps)."""
    import diffrax

    del rng
    schedule = pred.schedule
    sigma_max, sigma_min = sigma_ve(schedule, [ts[0], ts[-1]])
    solver = make_solver(opts.solver)

    def vector_field(s, x_ve, args):
        t = t_from_sigma_ve(schedule, jnp.exp(s))
        return x_ve - pred.denoise_ve(x_ve, t)

    x_ve = x / schedule.alpha(jnp.asarray(ts[0], jnp.float32))
    s0, s1 = float(np.log(sigma_max)), float(np.log(sigma_min))
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), solver, t0=s0, t1=s1,
        dt0=(s1 - s0) / INITIAL_STEPS_PER_RANGE, y0=x_ve,
        stepsize_controller=diffrax.PIDController(rtol=opts.rtol, atol=opts.atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=MAX_STEPS, throw=False)
    x0 = pred.denoise_ve(solution.ys[0], ts[-1])
    # throw=False: diffrax's in-graph error check would gather the batch onto one device; a
    # failed solve (MAX_STEPS reached) is reported as NFE = -1, which Generator turns into an error.
    ok = solution.result == diffrax.RESULTS.successful
    return x0, jnp.where(ok, nfe_from_stats(solver, solution.stats["num_steps"]), -1)
