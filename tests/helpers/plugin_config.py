"""A config file that uses parts from the user's own module (my_plugins.py): importing it
registers them, so base.get_config() has their sections and they are picked by name."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import my_plugins  # noqa: E402,F401  (registers tiny_conv, ve_euler, uncertainty_weighted, ...)

from configs import base  # noqa: E402


def get_config():
    config = base.get_config()
    config.data.image_size = 16
    config.codec.name = "space_to_depth"
    config.model.name = "tiny_conv"
    config.model.tiny_conv.features = 8
    config.objective.name = "uncertainty_weighted"
    config.sampling.sampler = "ve_euler"
    config.sampling.num_steps = 4
    config.sampling.spacing = "karras"
    config.optim.warmup_steps = 1
    config.training.batch_size = 8
    config.training.num_steps = 3
    config.training.log_every_steps = 1
    config.training.checkpoint_every_steps = 3
    config.training.sample_every_steps = 0
    config.sampling.grid_samples = 4
    config.sampling.num_samples = 4
    config.sampling.batch_size = 4
    config.mesh.cpu_devices = 2
    return config
