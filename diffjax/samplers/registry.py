"""The sampler registry: config.sampling.sampler picks one; its options are
config.sampling.<name>. A sampler is `fn(pred: Prediction, ts, x, rng, opts) -> (x0, nfe)`."""

from diffjax.registry import Registry

SAMPLERS = Registry("sampler", "sampling.sampler", "sampling")
