"""Every recipe in configs/ loads, validates and has the parameter count its docstring states
(the count `launch.py --mode=dry_run` prints: the abstract train state, nothing compiled)."""

import importlib.util
import os
import re

import pytest

from diffjax.experiment import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")
RECIPES = sorted(f for f in os.listdir(CONFIG_DIR)
                 if f.endswith(".py") and f not in ("__init__.py", "base.py"))
PARAMS = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+) params")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_recipe_{name[:-3]}",
                                                  os.path.join(CONFIG_DIR, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recipes_of_the_issue_exist():
    assert {"default.py", "cifar10_ddpm.py", "cifar10_iddpm.py", "cifar10_vp_continuous.py",
            "cifar10_edm.py", "imagenet64_adm.py", "cifar10_v_minsnr.py"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_and_has_the_parameter_count_its_docstring_states(name, tmp_path):
    module = _load(name)
    match = PARAMS.search(module.__doc__ or "")
    assert match, f"configs/{name}: the docstring must state the parameter count ('N params')"
    config = module.get_config()
    config.data.data_dir = str(tmp_path)  # only the builders' metadata is read, no data
    assert validate(config).num_params() == int(match.group(1).replace(",", ""))


def test_edm_recipe_samples_with_35_network_evaluations():
    """Karras et al. 2022: Heun with 18 steps costs 2 * 18 - 1 = 35 NFE."""
    config = _load("cifar10_edm.py").get_config()
    s = config.sampling
    assert (s.sampler, s.num_steps, s.spacing, s.rho) == ("heun", 18, "karras", 7.0)
    assert config.diffusion.parameterization == config.objective.denoising.weighting == "edm"
    assert s.num_steps * 2 - 1 == 35
