"""Imports flow one way: the math layer loads no parts, parts load no training or config code,
inference loads no training code, and launch.py's mode list loads no JAX."""

import subprocess
import sys

import pytest

LAYERS = [
    # (what is imported, module prefixes it must not load)
    ("diffjax.core.schedules, diffjax.core.parameterizations, diffjax.core.weightings, "
     "diffjax.core.time_sampling, diffjax.core.posterior, diffjax.samplers",
     ("diffjax.models", "diffjax.objectives", "diffjax.codecs", "diffjax.training",
      "diffjax.experiment", "diffjax.settings", "diffjax.plugins", "diffjax.config_lib",
      "diffjax.modes")),
    ("diffjax.models, diffjax.objectives, diffjax.codecs, diffjax.conditioning, diffjax.ema, "
     "diffjax.models.autoencoder, diffjax.models.diffusers_io, diffjax.objectives.autoencoder, "
     "diffjax.codecs.vae",
     ("diffjax.training", "diffjax.experiment", "diffjax.settings", "diffjax.plugins",
      "diffjax.config_lib", "diffjax.modes", "diffjax.generator")),
    ("diffjax.generator, diffjax.inpainting, diffjax.restore",
     ("diffjax.training", "diffjax.experiment", "diffjax.plugins", "diffjax.modes")),
    ("diffjax.latent_cache", ("diffjax.training", "diffjax.experiment", "diffjax.plugins",
                              "diffjax.modes", "diffjax.generator")),
    ("diffjax.training.step, diffjax.training.loop",
     ("diffjax.experiment", "diffjax.plugins", "diffjax.config_lib", "diffjax.modes")),
    ("diffjax.modes", ("jax", "diffjax.experiment")),
]


@pytest.mark.parametrize("modules, forbidden", LAYERS, ids=[m.split(",")[0] for m, _ in LAYERS])
def test_a_layer_loads_nothing_above_it(modules, forbidden):
    code = (f"import sys\nimport {modules}\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] != '__main__' and "
            f"any(m == f or m.startswith(f + '.') for f in {forbidden!r}))\n"
            f"print(bad)\nassert not bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
