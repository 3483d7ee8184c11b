"""The network registry: config.model.name picks one; its options are config.model.<name>."""

from diffjax.registry import Registry

NETWORKS = Registry("network", "model.name", "model")
