"""Meshes, shardings and host-local <-> global arrays. Nothing host-specific lives elsewhere."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int = -1) -> Mesh:
    """A 1-D data-parallel mesh over the first `num_devices` devices (-1: all, on all hosts).

    Axis types are Auto: the Explicit default breaks nn.Dropout under a sharded jit."""
    devices = jax.devices()
    if num_devices == -1:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(f"config.mesh.num_devices={num_devices}: {len(devices)} devices are "
                         f"available (use -1 for all)")
    if num_devices != len(devices) and jax.process_count() > 1:
        raise ValueError("config.mesh.num_devices must be -1 (all devices) when running multi-host")
    return Mesh(np.array(devices[:num_devices]), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch(global_batch: int, mesh: Mesh, key: str = "config.training.batch_size") -> None:
    """Raises if a global batch does not split evenly over the mesh's devices."""
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"{key}={global_batch} does not divide over {n} devices; use a multiple of {n}")


def to_global(local_tree, mesh: Mesh):
    """Host-local numpy arrays (this process's slice of the batch) -> global arrays sharded on axis 0."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local_tree)


def to_host(tree):
    """Fully-replicated or fully-addressable arrays -> numpy (gathers across hosts when needed)."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
    """Starts jax.distributed when asked explicitly or when a cluster environment is detected
    (TPU pod, SLURM); a no-op on a single host."""
    import os

    if coordinator_address:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    elif os.environ.get("SLURM_NTASKS", "1") != "1" or os.environ.get("TPU_WORKER_HOSTNAMES"):
        jax.distributed.initialize()
