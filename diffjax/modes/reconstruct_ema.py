"""--mode=reconstruct_ema: the EMA of width config.ema.sigma_rel, solved post hoc from a run's
power-function snapshots (EDM2 Sec. 3.2), written to WORKDIR/ema_posthoc/. --mode=sample and
--mode=eval with the same config.ema.sigma_rel read it (or reconstruct it themselves)."""

from __future__ import annotations

import jax

from diffjax import posthoc_ema
from diffjax.errors import ConfigError
from diffjax.experiment import Experiment


def run(config, workdir: str, fresh: bool = False, record=None) -> None:
    exp = Experiment(config, workdir, load_data=False, devices=False)
    sigma_rel = exp.posthoc.sigma_rel
    if not sigma_rel:
        raise ConfigError("--mode=reconstruct_ema needs the EMA width to reconstruct: pass "
                          "--config.ema.sigma_rel=<width>, e.g. 0.07")
    like = jax.eval_shape(exp.network.init, jax.random.PRNGKey(0))
    _, recipe, path = posthoc_ema.write_reconstruction(exp.workdir, sigma_rel, like)
    used = [s for s in recipe["snapshots"] if abs(s["coefficient"]) > 0]
    if jax.process_index() == 0:
        print(f"wrote the post-hoc EMA sigma_rel={sigma_rel:g} at step {recipe['step']} to "
              f"{path}: {len(used)} snapshots, relative profile error "
              f"{recipe['profile_error']:.2e}")
