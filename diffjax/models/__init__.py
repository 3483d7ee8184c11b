"""Networks behind one contract (network.py), registered by name: config.model.name picks one,
its options are config.model.<name>. A factory is `factory(options, spec: NetworkSpec) ->
Network`."""

from diffjax.models.dit import DiT, DiTOptions
from diffjax.models.edm2 import EDM2Options, EDM2UNet
from diffjax.models.network import DTYPES, LinenNetwork, Network, NetworkSpec, count_params
from diffjax.models.registry import NETWORKS
from diffjax.models.unet import UNet, UNetOptions

__all__ = ["DTYPES", "DiT", "DiTOptions", "EDM2Options", "EDM2UNet", "LinenNetwork", "NETWORKS",
           "Network", "NetworkSpec", "UNet", "UNetOptions", "count_params", "make_network"]


def make_network(name: str, options, spec: NetworkSpec) -> Network:
    """The network registered as `name`, built with `options` (None: its defaults)."""
    entry = NETWORKS.get(name)
    return entry.factory(options if options is not None else entry.default_options(), spec)
