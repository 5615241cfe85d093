"""Data parallelism over a device mesh, and multi-host set-up.

One jitted function serves one device or many: arrays carry their sharding (`NamedSharding` over a
1-D mesh with axis `'data'`), the batch axis is split across devices, parameters are replicated, and
XLA inserts the cross-device reductions (the gradient mean, BatchNorm batch statistics, sums of
Monte-Carlo samples). `pmap` is in maintenance mode since JAX 0.8; this is its replacement.

Multi-host (TPU pod slices, GPU clusters): call `initialize_distributed` first in every process; each
process then holds only its slice of every global batch (`global_batch`), checkpoints are written
collectively by orbax, and results are reported by process 0.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all devices when None)."""
  devices = jax.devices()
  if num_devices is None:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(
        f'Asked for {num_devices} devices but {len(devices)} are visible ({devices[0].platform}). '
        'On CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N devices.')
  return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) axis across the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(batch_size: int, mesh: Mesh, what: str = 'batch size') -> None:
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(
        f'The {what} {batch_size} does not divide over {devices} devices; use a multiple of {devices} '
        f'(per-device {what} = global {what} / devices).')
  processes = jax.process_count()
  if batch_size % processes:
    raise ValueError(f'The {what} {batch_size} does not divide over {processes} processes.')


def replicate(tree, mesh: Mesh):
  """Places every leaf of `tree` on every device of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def process_slice(global_size: int) -> slice:
  """The part of a global batch that this process loads (all of it with one process)."""
  per_process = global_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def global_batch(local_array: np.ndarray, mesh: Mesh, global_size: int) -> jax.Array:
  """A global array sharded over the batch axis, built from this process's slice of it.

  With one process `local_array` is the whole batch. With several, each passes its own
  `process_slice(global_size)` rows; no process ever holds the others' data.
  """
  global_shape = (global_size,) + tuple(local_array.shape[1:])
  return jax.make_array_from_process_local_data(batch_sharded(mesh), np.asarray(local_array), global_shape)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-process run (`jax.distributed.initialize`).

  Arguments default to the environment variables JAXCERT_COORDINATOR (host:port),
  JAXCERT_NUM_PROCESSES and JAXCERT_PROCESS_ID; on TPU pods and SLURM/Open MPI clusters JAX detects
  them itself when all three are unset.
  """
  coordinator_address = coordinator_address or os.environ.get('JAXCERT_COORDINATOR')
  if num_processes is None and 'JAXCERT_NUM_PROCESSES' in os.environ:
    num_processes = int(os.environ['JAXCERT_NUM_PROCESSES'])
  if process_id is None and 'JAXCERT_PROCESS_ID' in os.environ:
    process_id = int(os.environ['JAXCERT_PROCESS_ID'])
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError(
        'Multi-host set-up needs the coordinator address (host:port), the number of processes and this '
        'process id together (config.parallel.coordinator_address/num_processes/process_id or '
        'JAXCERT_COORDINATOR/JAXCERT_NUM_PROCESSES/JAXCERT_PROCESS_ID); got '
        f'coordinator={coordinator_address!r}, num_processes={num_processes!r}, process_id={process_id!r}.')
  if all(given) and not 0 <= process_id < num_processes:
    raise ValueError(f'process_id {process_id} is outside [0, {num_processes}).')
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
