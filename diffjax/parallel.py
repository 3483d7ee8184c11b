"""Meshes, sharding rules, multi-host start-up and host-local <-> global arrays.

The mesh has two axes, `data` and `fsdp`. The batch is split over both (every device sees
B / num_devices examples). Params, optimizer state and EMA are replicated over `data` and, when
the `fsdp` axis is larger than 1, sharded over `fsdp` along one dimension of every large array
(ZeRO-3 / FSDP); XLA inserts the all-gathers and reduce-scatters. Nothing host-specific lives
elsewhere.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from diffjax.errors import ConfigError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
AXES = (DATA_AXIS, FSDP_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch is split over every device
FSDP_MIN_SIZE = 2**14  # arrays with fewer elements stay replicated (biases, norms)


def make_mesh(num_devices: int = -1, shape: tuple[int, int] = (-1, 1)) -> Mesh:
    """A (data, fsdp) mesh over the first `num_devices` devices (-1: all, on all hosts).

    shape: (data, fsdp) sizes; one may be -1 (fill). Devices keep jax.devices() order, so each
    process's devices hold a contiguous block of the batch. Axis types are Auto: the Explicit
    default breaks nn.Dropout under a sharded jit."""
    devices = jax.devices()
    if num_devices == -1:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ConfigError(f"config.mesh.num_devices={num_devices}: {len(devices)} devices are "
                         f"available (use -1 for all)")
    if num_devices != len(devices) and jax.process_count() > 1:
        raise ConfigError("config.mesh.num_devices must be -1 (all devices) when running "
                          "multi-host")
    grid = np.array(devices[:num_devices]).reshape(mesh_shape(num_devices, shape))
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * 2)


def mesh_shape(num_devices: int, shape) -> tuple[int, int]:
    """The (data, fsdp) sizes config.mesh.shape gives on num_devices devices (-1 fills); a
    ConfigError when it does not fit. Pure arithmetic: no devices needed."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ConfigError(f"config.mesh.shape={shape} must be (data, fsdp) sizes >= 1, one of "
                          f"them may be -1 (fill)")
    known = math.prod(s for s in shape if s != -1)
    if num_devices % known:
        raise ConfigError(f"config.mesh.shape={shape} does not fit {num_devices} devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ConfigError(f"config.mesh.shape={shape} has {math.prod(shape)} devices, but "
                          f"{num_devices} are used (config.mesh.num_devices)")
    return shape


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over all devices."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def _fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> PartitionSpec:
    """Shards the largest dimension divisible by the fsdp axis; small arrays stay replicated."""
    if fsdp_size == 1 or math.prod(shape) < FSDP_MIN_SIZE:
        return PartitionSpec()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for dim in dims:
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_sharding(abstract_state, mesh: Mesh):
    """A NamedSharding per leaf of a train state (arrays or ShapeDtypeStructs): replicated over
    `data`, FSDP-sharded over `fsdp` for large arrays."""
    fsdp_size = mesh.shape[FSDP_AXIS]
    return jax.tree.map(lambda x: NamedSharding(mesh, _fsdp_spec(tuple(x.shape), fsdp_size)),
                        abstract_state)


def check_batch(global_batch: int, mesh: Mesh | int,
                key: str = "config.training.batch_size") -> None:
    """Raises if a global batch does not split evenly over the mesh's devices (or n devices)."""
    n = mesh if isinstance(mesh, int) else mesh.devices.size
    if global_batch % n:
        raise ConfigError(f"{key}={global_batch} does not divide over {n} devices; use a "
                         f"multiple of {n}")


def to_global(local_tree, mesh: Mesh):
    """Host-local numpy arrays (this process's slice of the batch) -> global arrays split over
    all devices on axis 0."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local_tree)


def to_host(tree):
    """Global arrays -> numpy on every host (gathers across hosts when needed)."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
    """Starts jax.distributed when asked explicitly (--coordinator_address, --num_processes,
    --process_id) or when a cluster is detected (SLURM with several tasks, Cloud TPU pod
    workers); a no-op on a single host. CPU processes talk through gloo."""
    if coordinator_address:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f"--coordinator_address needs --num_processes >= 1 and "
                             f"0 <= --process_id < num_processes; got num_processes="
                             f"{num_processes}, process_id={process_id}")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or _on_cloud_tpu_vm():
        jax.distributed.initialize()  # jax reads the cluster from SLURM or the TPU metadata


def _on_cloud_tpu_vm() -> bool:
    try:
        from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm
    except ImportError:
        return bool(os.environ.get("TPU_WORKER_HOSTNAMES"))
    return bool(running_in_cloud_tpu_vm)
