"""Data parallelism over a device mesh, and multi-host set-up.

One jitted function serves one device or many: arrays carry their sharding (`NamedSharding` over a
1-D mesh with axis `'data'`), the batch axis is split across devices, parameters are replicated, and
XLA inserts the cross-device reductions (the gradient mean, BatchNorm batch statistics, sums over
the batch). `pmap` is in maintenance mode since JAX 0.8; this is its replacement.

* Training (`jaxcert.training`): `make_mesh`, `replicate` the train state, `global_batch` for each
  batch; the train step is the single-device one, jitted once.
* Certification and attacks: `data_parallel(fn, mesh)` runs any function whose array arguments
  have a leading batch axis (an encoder, `jit(interval(embed))`, a PGD attack) with that axis split
  across the mesh, padding the batch to a multiple of the device count and dropping the padding.
  Each example's result is the one computed unsharded (random starts too: threefry keys give the
  same numbers whatever the sharding).
* The sharded computations built on these meshes live beside their unsharded versions:
  `retrieval.sharded_blocked_topk` (queries split across devices) and `smoothing.sharded_smoother`
  (Monte-Carlo samples split into independent streams). This module is infrastructure only and
  imports no other module of jaxcert.

Multi-host (TPU pod slices, GPU clusters, several processes on one machine): call
`initialize_from_config(config.parallel)` first in every process (train.py and certify.py do);
each process then holds only its rows of every global batch (`process_slice`, `global_batch`),
checkpoints are written collectively by orbax, and files are written by process 0 (`is_primary`,
`primary_workdir`). docs/scaling.md has the commands.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'
# `coordinator_address` value that lets JAX find the cluster itself (TPU pods, SLURM, Open MPI).
AUTO_COORDINATOR = 'auto'
# `config.parallel.num_devices` value that asks for every device.
ALL_DEVICES = -1


# ---------------------------------------------------------------------------
# Meshes and shardings.
# ---------------------------------------------------------------------------


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh (axis `DATA_AXIS`) over `num_devices` devices (all devices when None or -1).

  `num_devices` is `config.parallel.num_devices` as the configs give it (-1: all; default 1).

  Devices are ordered by process, so process p owns a contiguous block of every batch-sharded array
  (the rows `process_slice` names). With several processes each contributes the same number of
  devices, its first `num_devices / processes` local ones.

  Raises:
    ValueError: `num_devices` is not an integer in [1, device count], or does not divide over the
      processes.
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  processes = jax.process_count()
  if num_devices is None or (not isinstance(num_devices, bool) and num_devices == ALL_DEVICES):
    num_devices = len(devices)
  if isinstance(num_devices, bool) or int(num_devices) != num_devices or not 1 <= num_devices <= len(devices):
    raise ValueError(
        f'Asked for {num_devices!r} devices but {len(devices)} {devices[0].platform} device(s) are '
        f'visible; config.parallel.num_devices must be an integer in [1, {len(devices)}], or -1 for '
        'all of them. On CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N devices.')
  num_devices = int(num_devices)
  if num_devices % processes:
    raise ValueError(
        f'{num_devices} devices do not divide over {processes} processes; every process must '
        f'contribute the same number of devices (config.parallel.num_devices=-1 takes all).')
  per_process = num_devices // processes
  chosen = [device for process in range(processes)
            for device in [d for d in devices if d.process_index == process][:per_process]]
  return Mesh(np.asarray(chosen), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) axis across the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_sharding(num_devices: int) -> NamedSharding | None:
  """Batch sharding over this process's devices for certify.py's batched calls (embedding, IBP).

  `num_devices` is `config.parallel.num_devices` (-1: all); with several processes each takes
  its share (`num_devices / processes`) of its own devices and evaluates the whole set itself,
  so results need no gathering. None for one device (the plain path; also the default 1 with
  several processes).

  Raises:
    ValueError: as `make_mesh`.
  """
  if num_devices == 1:
    return None
  mesh = make_mesh(num_devices)  # raises on a bad count
  local = [device for device in mesh.devices.flat if device.process_index == jax.process_index()]
  if len(local) == 1:
    return None
  return batch_sharded(Mesh(np.asarray(local), (DATA_AXIS,)))


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


# ---------------------------------------------------------------------------
# Any batched function, data-parallel.
# ---------------------------------------------------------------------------


def _is_array(leaf) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray))


def _pad_rows(tree, size: int):
  """Every array leaf of `tree` padded along axis 0 to `size` rows by repeating its last row."""
  def pad(leaf):
    missing = size - leaf.shape[0]
    if not missing:
      return leaf
    return jnp.concatenate([leaf, jnp.repeat(leaf[-1:], missing, axis=0)])
  return jax.tree.map(pad, tree)


def data_parallel(fn: Callable, mesh: Mesh, *, batch_argnums: Sequence[int] = (0,)) -> Callable:
  """`fn` with the leading axis of its batch arguments split across `mesh`.

  The batch arguments (every array leaf of the positional arguments `batch_argnums`) are padded to a
  multiple of the device count by repeating their last row and placed batch-sharded; every other
  array argument (weights in a `jax.tree_util.Partial`, PRNG keys, target embeddings shared by the
  batch) is replicated; non-array arguments pass unchanged. Jitted functions inside `fn` then run
  data-parallel (computation follows the sharding of its inputs), Python loops over jitted steps
  included. Output leaves with the padded leading size are cut back to the batch.

  Each example's result equals the unsharded one up to float rounding, for any function that treats
  the examples of a batch independently: an encoder in inference mode, `jit(interval(embed))`
  (the interval bounds of Kakizaki et al. Eqs. 15-16), the attacks of `jaxcert.attacks` (with JAX's
  default partitionable threefry their random starts draw the same numbers for every real row
  whatever the sharding and the padding). A function that mixes the batch (a loss over the
  batch, BatchNorm in training mode) would see the padded rows: give it a batch that divides.

  Args:
    fn: `(*args) -> pytree of arrays with a leading batch axis`.
    mesh: from `make_mesh`.
    batch_argnums: positions of the arguments with a leading batch axis; all of their array leaves
      must have the same leading size.

  Returns:
    `sharded(*args)` with `fn`'s signature.

  Examples:
    >>> mesh = make_mesh(1)
    >>> double = data_parallel(jax.jit(lambda x: 2 * x), mesh)
    >>> double(jnp.arange(3.)).tolist()
    [0.0, 2.0, 4.0]
  """
  batch_argnums = tuple(batch_argnums)
  if not batch_argnums:
    raise ValueError('batch_argnums is empty; name the positions of the batch arguments.')

  @functools.wraps(fn)
  def sharded(*args):
    if max(batch_argnums) >= len(args):
      raise ValueError(f'batch_argnums {batch_argnums} name arguments beyond the {len(args)} given.')
    sizes = {jnp.shape(leaf)[0] for i in batch_argnums for leaf in jax.tree.leaves(args[i])
             if _is_array(leaf)}
    if len(sizes) != 1:
      raise ValueError(f'The batch arguments {batch_argnums} must be arrays with one common leading '
                       f'(batch) size, got sizes {sorted(sizes)}.')
    (count,) = sizes
    padded_size = -(-count // mesh.devices.size) * mesh.devices.size
    placed = []
    for index, arg in enumerate(args):
      if index in batch_argnums:
        placed.append(jax.device_put(_pad_rows(arg, padded_size), batch_sharded(mesh)))
      else:
        placed.append(jax.tree.map(
            lambda leaf: jax.device_put(leaf, replicated(mesh)) if _is_array(leaf) else leaf, arg))
    out = fn(*placed)
    if padded_size == count:
      return out
    return jax.tree.map(
        lambda y: y[:count] if jnp.ndim(y) and jnp.shape(y)[0] == padded_size else y, out)

  return sharded


# ---------------------------------------------------------------------------
# Multi-host.
# ---------------------------------------------------------------------------


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-process run (`jax.distributed.initialize`).

  Arguments default to the environment variables JAXCERT_COORDINATOR (host:port),
  JAXCERT_NUM_PROCESSES and JAXCERT_PROCESS_ID. With coordinator_address `'auto'` (and the other
  two unset) JAX finds the cluster itself, as on TPU pod slices and SLURM / Open MPI jobs.

  Raises:
    ValueError: some but not all of the three are given, or process_id is out of range.
    RuntimeError: `'auto'` outside a cluster JAX recognises.
  """
  coordinator_address = coordinator_address or os.environ.get('JAXCERT_COORDINATOR')
  if num_processes is None and 'JAXCERT_NUM_PROCESSES' in os.environ:
    num_processes = int(os.environ['JAXCERT_NUM_PROCESSES'])
  if process_id is None and 'JAXCERT_PROCESS_ID' in os.environ:
    process_id = int(os.environ['JAXCERT_PROCESS_ID'])
  if coordinator_address == AUTO_COORDINATOR and num_processes is None and process_id is None:
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as error:
      raise RuntimeError(
          "coordinator_address='auto' lets JAX find the cluster (TPU pod slice, SLURM, Open MPI), "
          'but it found none here; give config.parallel.coordinator_address=host:port, '
          f'num_processes and process_id instead. JAX said: {error}') from error
    return
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if not all(given):
    raise ValueError(
        'Multi-host set-up needs the coordinator address (host:port, the address of process 0), the '
        'number of processes and this process id together (config.parallel.coordinator_address/'
        'num_processes/process_id or JAXCERT_COORDINATOR/JAXCERT_NUM_PROCESSES/JAXCERT_PROCESS_ID; '
        f"coordinator_address='{AUTO_COORDINATOR}' on TPU pods and SLURM); got "
        f'coordinator={coordinator_address!r}, num_processes={num_processes!r}, process_id={process_id!r}.')
  if not 0 <= process_id < num_processes:
    raise ValueError(f'process_id {process_id} is outside [0, {num_processes}).')
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def initialize_from_config(parallel_config) -> bool:
  """Joins a multi-process run if `config.parallel` or the environment names one.

  Call it before any JAX computation. Does nothing (returns False) when none of
  `parallel_config.coordinator_address/num_processes/process_id` and JAXCERT_COORDINATOR /
  JAXCERT_NUM_PROCESSES / JAXCERT_PROCESS_ID is set; otherwise calls `initialize_distributed`
  (whose errors name what is missing) and returns True.
  """
  fields = ('coordinator_address', 'num_processes', 'process_id')
  values = {name: parallel_config.get(name) for name in fields}
  environment = ('JAXCERT_COORDINATOR', 'JAXCERT_NUM_PROCESSES', 'JAXCERT_PROCESS_ID')
  if all(v is None for v in values.values()) and not any(name in os.environ for name in environment):
    return False
  initialize_distributed(**values)
  return True


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0; always True with one process)."""
  return jax.process_index() == 0


def primary_workdir(workdir: str | None) -> str | None:
  """`workdir` (None too) on process 0; a fresh scratch directory on the others, which nobody reads.

  Functions that write their results (the certification modes) then run unchanged in every process
  of a multi-host job while only process 0 writes the real workdir.
  """
  if is_primary():
    return workdir
  return tempfile.mkdtemp(prefix=f'jaxcert_process{jax.process_index()}_')
