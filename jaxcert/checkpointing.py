"""Checkpoints on orbax: save every N steps, restore the latest on start-up.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed in
the middle of a save leaves the previous checkpoint intact; `restore_or_init` then resumes from it.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(directory: str, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """A checkpoint manager writing under `directory` (created if needed)."""
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
  )


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves `state` as step `step` (asynchronously; call `mngr.wait_until_finished()` to block)."""
  mngr.save(step, args=ocp.args.StandardSave(state))


def restore_or_init(mngr: ocp.CheckpointManager, init_state: Any) -> tuple[Any, bool]:
  """Restores the latest checkpoint into the structure of `init_state`.

  Returns:
    `(state, restored)`: the restored state and True, or `init_state` and False if the directory
    holds no checkpoint.
  """
  latest = mngr.latest_step()
  if latest is None:
    return init_state, False
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, init_state)
  return mngr.restore(latest, args=ocp.args.StandardRestore(abstract)), True


def restore_latest_raw(directory: str) -> dict:
  """The newest checkpoint under `directory` as nested dicts of numpy arrays (no target structure).

  For reading another run's checkpoint whose train state differs from ours (fine-tuning,
  certification). Arrays saved sharded over devices this process lacks (another mesh, another
  host count) are read onto the default device.
  """
  _check_directory(directory)
  mngr = manager(directory)
  latest = mngr.latest_step()
  if latest is None:
    mngr.close()
    raise FileNotFoundError(f'{directory!r} holds no checkpoint.')
  fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restored = mngr.restore(latest, args=ocp.args.StandardRestore(fallback_sharding=fallback))
  mngr.close()
  return restored


def _check_directory(directory: str) -> None:
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'No checkpoint directory {directory!r}. Train first: '
        'python train.py --config configs/<name>.py --workdir <dir> (checkpoints go to <dir>/checkpoints).')
