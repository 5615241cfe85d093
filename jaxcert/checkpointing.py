"""Checkpoints on orbax: save every N steps, restore the latest on start-up, read a run's encoder.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed in
the middle of a save leaves the previous checkpoint intact; `restore_or_init` then resumes from it.

A run is named by its workdir `'DIR'` (its newest checkpoint) or `'DIR@STEP'`. Its encoder is read
from the raw checkpoint tree (`restore_encoder`, `load_trained`), whatever else its train state
held, so certification and fine-tuning need neither the run's training settings nor
`jaxcert.training`: this module imports only `jaxcert.data` and `jaxcert.models`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxcert import data
from jaxcert import models


def manager(directory: str, *, max_to_keep: int = 2, keep_every_steps: int = 0) -> ocp.CheckpointManager:
  """A checkpoint manager writing under `directory` (created if needed).

  It keeps the newest `max_to_keep` checkpoints and, if `keep_every_steps > 0`, every checkpoint
  whose step is a multiple of it (to certify or branch from a run's history later).
  """
  policies = [ocp.checkpoint_managers.LatestN(max_to_keep)]
  if keep_every_steps > 0:
    policies.append(ocp.checkpoint_managers.EveryNSteps(keep_every_steps))
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(
          create=True, preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies)),
  )


def split_step(reference: str) -> tuple[str, int | None]:
  """A checkpoint reference `'DIR'` (its newest checkpoint) or `'DIR@STEP'` -> `(DIR, STEP or None)`."""
  directory, separator, step = str(reference).rpartition('@')
  if not separator or os.sep in step:  # No '@', or one inside the path ('/home/me@host/run').
    return str(reference), None
  if not step.isdigit():
    raise ValueError(f'A checkpoint is named DIR or DIR@STEP with STEP a step number, got {reference!r}.')
  return directory, int(step)


def checkpoint_directory(workdir: str) -> str:
  """Where a run's checkpoints live: `<workdir>/checkpoints`."""
  return os.path.join(workdir, 'checkpoints')


def restore_run_step(run: str, init_state: Any) -> tuple[Any, int]:
  """`restore_step` of the run `run` names: `'DIR'` (its newest checkpoint) or `'DIR@STEP'`."""
  directory, step = split_step(run)
  return restore_step(checkpoint_directory(directory), init_state, step)


def restore_run_raw(run: str) -> dict:
  """`restore_raw` of the run `run` names: `'DIR'` (its newest checkpoint) or `'DIR@STEP'`."""
  directory, step = split_step(run)
  return restore_raw(checkpoint_directory(directory), step)


def _checked_step(mngr: ocp.CheckpointManager, directory: str, step: int | None) -> int:
  """`step`, or the newest step if None; raises unless `directory` holds that checkpoint."""
  steps = sorted(mngr.all_steps())
  if not steps:
    raise FileNotFoundError(f'{directory!r} holds no checkpoint.')
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(f'{directory!r} holds no checkpoint of step {step}; it holds steps {steps}. '
                     'config.checkpoint_keep_every_steps keeps more of a run\'s history.')
  return step


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


def restore_step(directory: str, init_state: Any, step: int | None = None) -> tuple[Any, int]:
  """Checkpoint `step` (default: the newest) of another run's `directory`, in `init_state`'s structure.

  For branching a run: the whole train state (parameters, optimiser state, step) of that run, which
  this run then trains on under its own config.

  Raises:
    FileNotFoundError: `directory` holds no checkpoint.
    ValueError: it holds no checkpoint `step` (the message lists those it holds), or the saved train
      state has another structure than `init_state` (another optimiser chain, model or method).
  """
  _check_directory(directory)
  mngr = manager(directory)
  try:
    step = _checked_step(mngr, directory, step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, init_state)
    try:
      state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as error:
      raise ValueError(
          f'The train state saved in {directory!r} (step {step}) does not fit this config\'s '
          '(another model, optimiser chain such as gradient clipping, or method). To start from its '
          f'encoder alone, use config.init_from. ({type(error).__name__}: {error})') from error
  finally:
    mngr.close()
  return state, step


def restore_raw(directory: str, step: int | None = None) -> dict:
  """Checkpoint `step` (default: the newest) under `directory` as nested dicts of numpy arrays.

  No target structure: for reading another run's checkpoint whose train state differs from ours
  (fine-tuning, certification). Arrays saved sharded over devices this process lacks (another
  mesh, another host count) are read onto the default device. Raises as `restore_step`.
  """
  _check_directory(directory)
  mngr = manager(directory)
  try:
    step = _checked_step(mngr, directory, step)
    fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return mngr.restore(step, args=ocp.args.StandardRestore(fallback_sharding=fallback))
  finally:
    mngr.close()


def _check_directory(directory: str) -> None:
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'No checkpoint directory {directory!r}. Train first: '
        'python train.py --config configs/<name>.py --workdir <dir> (checkpoints go to <dir>/checkpoints).')


# ---------------------------------------------------------------------------
# A run's encoder.
# ---------------------------------------------------------------------------


def encoder_variables(restored: dict) -> dict:
  """The encoder's Flax variables in a raw train-state tree (`restore_raw`): `{'params'}`, and
  `{'batch_stats'}` for encoders with BatchNorm (a train state saves `params['model']` and
  `batch_stats`)."""
  variables = {'params': restored['params']['model']}
  if restored.get('batch_stats'):
    variables['batch_stats'] = restored['batch_stats']
  return variables


def restore_encoder(run: str, target: dict) -> tuple[dict, int]:
  """The encoder variables of a run's checkpoint (`'DIR'`: the newest, `'DIR@STEP'`), and its step.

  Only the encoder is read, whatever else the train state held (optimiser, gradient clipping, a
  method's head or frozen reference encoder), so any run's encoder can be certified or fine-tuned
  under any training settings.

  Args:
    run: the run's workdir, or 'DIR@STEP'.
    target: the Flax variables the encoder must have (arrays or `jax.ShapeDtypeStruct`s, e.g.
      `jax.eval_shape` of `models.init_variables`); the result has their shapes and dtypes.

  Raises:
    FileNotFoundError: `run` holds no checkpoint.
    ValueError: its encoder has other shapes than `target`'s.
  """
  restored = restore_run_raw(run)
  source = encoder_variables(restored)
  if jax.tree.map(np.shape, source) != jax.tree.map(np.shape, target):
    raise ValueError(f'The encoder in {run} does not match config.model (parameter shapes differ); '
                     'it needs a checkpoint of the same architecture and embedding size.')
  return jax.tree.map(lambda s, t: jnp.asarray(s, t.dtype), source, target), int(restored['step'])


def initialize_from(state, run: str):
  """`state` with the encoder (parameters and BatchNorm statistics) of `run` ('DIR' or 'DIR@STEP').

  Fine-tuning (FCTB of Kakizaki et al., Eq. 21, starts from a TBT-trained encoder) starts from
  another run's encoder, whatever method trained it; the step, the optimiser and the method's own
  parameters start afresh.

  Args:
    state: a `jaxcert.training.TrainState` (its `variables()`, `params['model']` and
      `batch_stats`).
    run: as `restore_encoder`, which raises as documented there.
  """
  variables, _ = restore_encoder(run, state.variables())
  return state.replace(params={**state.params, 'model': variables['params']},
                       batch_stats=variables.get('batch_stats', {}))


def load_trained(config, run: str, dataset: data.Dataset | None = None):
  """The encoder of `config.model` with the variables of `run`'s checkpoint ('DIR' or 'DIR@STEP').

  Reads only the encoder (`restore_encoder`; its shapes from `model.init` under `jax.eval_shape`):
  the training settings of `config` (optimiser, gradient clipping, method) need not match the
  run's.

  Args:
    config: the experiment config (`model`, and `data` when `dataset` is None).
    run: the run's workdir, or 'DIR@STEP'.
    dataset: the dataset (its image shape); default `data.load_dataset(config.data)`.

  Returns:
    `(model, variables, dataset, step)`, `step` the training step the checkpoint was saved at.
  """
  dataset = dataset if dataset is not None else data.load_dataset(config.data)
  image_shape = tuple(dataset.train.images.shape[1:])
  model = models.build_model(config.model)
  target = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_shape))
  variables, step = restore_encoder(run, target)
  return model, variables, dataset, step
