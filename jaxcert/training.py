"""Training embedding models: the train state, one objective per method, the loop, checkpoints, logs.

`train_and_evaluate(config, workdir)` is the whole job behind `train.py`: it loads the data named by
the config, builds the encoder, trains it with the method's objective, checkpoints every
`config.checkpoint_every_steps` steps (a restarted run resumes from the newest checkpoint and ends
with the same parameters as an uninterrupted one, because every batch and every random key is a pure
function of `(config.seed, step)`), and evaluates retrieval on the query/candidate split of the test
set.

The training methods (`config.method`: an objective and the parameters it adds) live in
`jaxcert.objectives`; this module only runs them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Any

from absl import logging
import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from jaxcert import checkpointing
from jaxcert import common
from jaxcert import data
from jaxcert import losses
from jaxcert import metrics
from jaxcert import models
from jaxcert import objectives
from jaxcert import parallel
from jaxcert import report


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingCollapsedError(RuntimeError):
  """The gradient stayed exactly 0 at a positive loss: the encoder is stuck (e.g. every ReLU dead)."""


class TrainState(struct.PyTreeNode):
  """Everything a checkpoint holds.

  Attributes:
    step: number of optimiser steps taken, shape (), int32.
    params: `{'model': encoder parameters, 'objective': the method's own parameters (margin-loss
      beta, a classifier head, or {})}`.
    batch_stats: BatchNorm running statistics (`{}` for encoders without BatchNorm).
    opt_state: optax state of `make_optimizer(...)`.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self) -> dict:
    """Flax variables of the encoder, for `model.apply(state.variables(), x)`."""
    return objectives.base.model_variables(self.params['model'], self.batch_stats)


def steps_per_epoch(config, num_train: int) -> int:
  return max(1, math.ceil(num_train / config.batch_size))


def total_steps(config, num_train: int) -> int:
  """`config.num_steps` if positive, else `config.num_epochs` epochs of `config.batch_size`."""
  if config.get('num_steps', -1) > 0:
    return int(config.num_steps)
  return int(round(config.num_epochs * steps_per_epoch(config, num_train)))


def learning_rate_schedule(config, num_train: int) -> optax.Schedule:
  """Piecewise-constant Adam learning rate: times `lr_decay_factor` at each of `lr_decay_epochs`.

  Kakizaki et al. Sec. 5.1.4: 1e-3, x0.1 at epochs 25 and 42 (MNIST, FMNIST); x0.5 every 10 epochs between
  130 and 200 (CIFAR-10).
  """
  per_epoch = steps_per_epoch(config, num_train)
  boundaries = {int(e * per_epoch): float(config.lr_decay_factor) for e in config.get('lr_decay_epochs', ())}
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def make_optimizer(config, num_train: int) -> optax.GradientTransformation:
  """Adam with `learning_rate_schedule`; the margin loss's beta has its own Adam learning rate.

  RetrievalGuard Sec. 4.3: beta is learnt with learning rate 5e-4 (`config.loss.beta_learning_rate`).
  Every other parameter (encoder, and any parameters a method adds, such as a classifier head)
  follows the encoder's schedule. With `config.grad_clip_norm` set, the whole gradient is first
  rescaled to at most that global L2 norm (`optax.clip_by_global_norm`), which keeps the first
  steps of certified training, where interval widths are huge, from filling Adam's moments with
  gradients thousands of times larger than the later ones.
  """
  beta_lr = config.loss.get('beta_learning_rate', 5e-4)
  def labels(params):
    def label(path, _):
      is_beta = path[0].key == 'objective' and getattr(path[-1], 'key', None) == 'beta'
      return 'beta' if is_beta else 'model'
    return jax.tree_util.tree_map_with_path(label, params)
  adam = optax.multi_transform(
      {'model': optax.adam(learning_rate_schedule(config, num_train)), 'beta': optax.adam(beta_lr)},
      labels)
  clip_norm = config.get('grad_clip_norm')
  if clip_norm is None:
    return adam
  if not clip_norm > 0:
    raise ValueError(f'config.grad_clip_norm must be > 0 (or None: no clipping), got {clip_norm}.')
  return optax.chain(optax.clip_by_global_norm(clip_norm), adam)


def create_train_state(config, model: nn.Module, image_shape, num_train: int, num_classes: int) -> TrainState:
  """The step-0 state: encoder initialised from `config.seed`, the method's parameters, Adam state."""
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  variables = models.init_variables(model, key, image_shape)
  context = objectives.ParamsContext(key=jax.random.fold_in(key, 1), embedding_dim=model.embedding_dim,
                                     num_classes=num_classes)
  method = objectives.get_method(config.method)
  params = {'model': variables['params'], 'objective': method.init_params(config, context)}
  batch_stats = variables.get('batch_stats', {})
  tx = make_optimizer(config, num_train)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params))


def make_train_step(model: nn.Module, config, tx: optax.GradientTransformation,
                    objective: objectives.base.Objective):
  """One optimiser step, `(state, images, labels, key) -> (state, metrics)`; jit it once."""
  def train_step(state: TrainState, images, labels, key):
    def loss_fn(params):
      inputs = objectives.ObjectiveInputs(model, params, state.batch_stats, images, labels, key, state.step, config)
      return objective(inputs)
    (loss, (aux_metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step_metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), **aux_metrics}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, step_metrics
  return train_step


SAMPLERS = ('epoch', 'm_per_class')


def check_names(config) -> None:
  """Raises ValueError, listing the valid names, for an unknown model, loss, method or sampler.

  Runs before any data is read or any function traced, so that a misspelt name costs nothing.
  """
  models.build_model(config.model)
  losses.get_loss(config.loss.name)
  objectives.get_method(config.method)
  common.check_choice('sampler', config.sampler, SAMPLERS)


def batch_indices(config, labels: np.ndarray, step: int) -> np.ndarray:
  """Indices of the training batch at `step`, a pure function of `(config.seed, step)`."""
  if config.sampler == 'm_per_class':
    return data.m_per_class_batch(labels, batch_size=config.batch_size, m=config.m_per_class,
                                  seed=config.seed, step=step)
  if config.sampler == 'epoch':
    return data.epoch_batch(len(labels), batch_size=config.batch_size, seed=config.seed, step=step)
  raise ValueError(f'config.sampler={config.sampler!r} is not one of {SAMPLERS}.')


def _check_finite(step: int, step_metrics: dict, checkpoint_dir: str) -> None:
  # The gradient norm is checked too: losses built on a masked square root read a NaN embedding
  # as distance 0 and stay finite while the parameters are already lost.
  if not (math.isfinite(step_metrics['loss']) and math.isfinite(step_metrics['grad_norm'])):
    raise TrainingDivergedError(
        f'Loss is {step_metrics["loss"]} (gradient norm {step_metrics["grad_norm"]}) at step {step}; '
        f'stopping. The last good checkpoint is kept in {checkpoint_dir}. '
        'Lower the learning rate or check the data, then rerun to resume.')


class _CollapseDetector:
  """Counts consecutive steps whose gradient is exactly 0 while the loss is positive.

  A ReLU encoder whose units are all dead maps every image to one point: the metric loss sits at
  its margin and no parameter ever moves again (seen in certified training of the Large CNN, seed
  001, when eps ramps too fast). `config.collapse_patience_steps` such steps in a row stop training
  with `TrainingCollapsedError`; 0 turns the check off.
  """

  def __init__(self, patience: int):
    self.patience, self.first_step, self.count = patience, None, 0

  def update(self, step: int, step_metrics: dict, checkpoint_dir: str) -> None:
    if self.patience <= 0:
      return
    if step_metrics['grad_norm'] == 0 and step_metrics['loss'] > 0:
      self.first_step = step if self.count == 0 else self.first_step
      self.count += 1
    else:
      self.count = 0
    if self.count >= self.patience:
      raise TrainingCollapsedError(
          f'Training collapsed: the gradient has been exactly 0 at loss {step_metrics["loss"]:.4g} for '
          f'{self.count} steps (since step {self.first_step}); the encoder no longer changes (every '
          'ReLU dead, all embeddings equal). Checkpoints saved before step '
          f'{self.first_step} in {checkpoint_dir} predate it. Try a slower eps ramp '
          '(config.certified.ramp_*_steps), config.grad_clip_norm, or a lower learning rate.')


def _training_set(config, dataset: data.Dataset) -> tuple[Any, np.ndarray]:
  """The images and labels trained on: the train split, or the candidate set C for FCTB
  (`config.train_split = 'candidates'`, Kakizaki et al. Eq. 21)."""
  if config.get('train_split', 'train') == 'candidates':
    _, (images, labels) = data.query_candidate_sets(config, dataset)
    return images, labels
  return dataset.train.images, np.asarray(dataset.train.labels)


def _start(config, state: TrainState, mngr, mesh, workdir: str, num_steps: int) -> TrainState:
  """The state a run starts from, in this order of preference.

  1. `workdir`'s newest checkpoint (a restarted run resumes);
  2. another run's train state, `config.resume_from` ('DIR' or 'DIR@STEP'): a branch, whose
     metrics before the branch step are copied over so the curves show the whole history;
  3. another run's encoder, `config.init_from` (`checkpointing.initialize_from`);
  4. `state`, the fresh step-0 state.
  """
  state, restored = checkpointing.restore_or_init(mngr, state)
  if restored:
    logging.info('Resuming from step %d of %d (%s).', int(state.step), num_steps,
                 checkpointing.checkpoint_directory(workdir))
    print(f'Resuming from checkpoint at step {int(state.step)} of {num_steps}.')
    return state
  if config.get('resume_from'):
    state, step = checkpointing.restore_run_step(config.resume_from, state)
    directory, _ = checkpointing.split_step(config.resume_from)
    source_log = os.path.join(directory, 'metrics.jsonl')
    if parallel.is_primary() and os.path.exists(source_log):
      # The log writer keeps the records before the branch step.
      shutil.copyfile(source_log, os.path.join(workdir, 'metrics.jsonl'))
    print(f'Branching from step {step} of {directory}; {num_steps - int(state.step)} steps to go.')
    return parallel.replicate(state, mesh)
  if config.get('init_from'):
    print(f'Starting from the encoder trained in {config.init_from}.')
    return parallel.replicate(checkpointing.initialize_from(state, config.init_from), mesh)
  return state


def _loop(config, state: TrainState, train_step, train_images, train_labels, mesh, mngr,
          workdir: str, num_steps: int) -> TrainState:
  """Steps `state` from its step to `num_steps`, checking every step's metrics, logging them to
  `workdir/metrics.jsonl` every `config.log_every_steps` steps and checkpointing every
  `config.checkpoint_every_steps` steps and at the end."""
  start_step = int(state.step)
  checkpoint_dir = checkpointing.checkpoint_directory(workdir)
  # Multi-host: process 0 writes the logs; the others compute the same metrics.
  writer = report.JsonLinesWriter(
      os.path.join(workdir, 'metrics.jsonl') if parallel.is_primary() else os.devnull, start_step)
  local_rows = parallel.process_slice(config.batch_size)
  base_key = jax.random.key(config.seed)
  progress = tqdm.tqdm(total=num_steps, initial=start_step, desc=f'train {config.method}', unit='step',
                       dynamic_ncols=True,
                       disable=not (config.get('progress_bar', True) and parallel.is_primary()))
  pending = None  # metrics of the previous step, fetched one step behind so the host never waits.
  meter = _Throughput()
  collapse = _CollapseDetector(config.get('collapse_patience_steps', 0))
  try:
    for step in range(start_step, num_steps):
      idx = batch_indices(config, train_labels, step)[local_rows]
      images = parallel.global_batch(train_images[idx], mesh, config.batch_size)
      labels = parallel.global_batch(train_labels[idx], mesh, config.batch_size)
      state, step_metrics = train_step(state, images, labels, jax.random.fold_in(base_key, step))
      if pending is not None:
        _report(pending, config, writer, progress, meter, checkpoint_dir, collapse)
      pending = (step, step_metrics)
      meter.images += config.batch_size
      progress.update(1)
      if (step + 1) % config.checkpoint_every_steps == 0 or step + 1 == num_steps:
        # The loss is checked before saving, so a diverged state never overwrites a good checkpoint.
        _report(pending, config, writer, progress, meter, checkpoint_dir, collapse, force=True)
        pending = None
        checkpointing.save(mngr, step + 1, state)
  finally:
    progress.close()
    writer.close()
  return state


def _plot_training_curves(workdir: str) -> None:
  """`workdir/training_curves.png` from `workdir/metrics.jsonl` (process 0 only)."""
  records = report.read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if parallel.is_primary() else []
  if records:
    report.plot_training_curves(os.path.join(workdir, 'training_curves.png'),
                                {os.path.basename(os.path.normpath(workdir)): records})


def train(config, workdir: str, dataset: data.Dataset | None = None) -> tuple[nn.Module, TrainState]:
  """Trains (or resumes training) the encoder of `config`; returns `(model, final state)`.

  Starts as `_start` says (this run's newest checkpoint, `config.resume_from`,
  `config.init_from`, or afresh), trains to `total_steps` with the method's objective, and plots
  the training curves.
  """
  check_names(config)
  os.makedirs(workdir, exist_ok=True)
  dataset = dataset if dataset is not None else data.load_dataset(config.data)
  train_images, train_labels = _training_set(config, dataset)
  model = models.build_model(config.model)
  num_train = len(train_labels)
  tx = make_optimizer(config, num_train)
  mesh = parallel.make_mesh(config.get('parallel', {}).get('num_devices', 1))
  parallel.check_divisible(config.batch_size, mesh)
  fresh = create_train_state(config, model, tuple(train_images.shape[1:]), num_train,
                             dataset.num_classes)
  num_steps = total_steps(config, num_train)
  mngr = checkpointing.manager(checkpointing.checkpoint_directory(workdir),
                               keep_every_steps=config.get('checkpoint_keep_every_steps', 0))
  state = _start(config, parallel.replicate(fresh, mesh), mngr, mesh, workdir, num_steps)

  replicated = parallel.replicated(mesh)
  objective = objectives.get_method(config.method).objective
  train_step = jax.jit(make_train_step(model, config, tx, objective), donate_argnums=0,
                       out_shardings=(replicated, replicated))
  try:
    state = _loop(config, state, train_step, train_images, train_labels, mesh, mngr, workdir,
                  num_steps)
  finally:
    mngr.wait_until_finished()
    mngr.close()
  _plot_training_curves(workdir)
  return model, state


class _Throughput:
  """Images per second since the last log line."""

  def __init__(self):
    self.start, self.images = time.perf_counter(), 0

  def rate_and_reset(self) -> float:
    now = time.perf_counter()
    rate = self.images / max(now - self.start, 1e-9)
    self.start, self.images = now, 0
    return rate


def _report(pending, config, writer, progress, meter, checkpoint_dir, collapse, force=False):
  """Checks a finished step (finite loss, not collapsed); logs it every `log_every_steps`."""
  step, step_metrics = pending
  host_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
  _check_finite(step, host_metrics, checkpoint_dir)
  if step % config.log_every_steps == 0 or force:
    images_per_second = meter.rate_and_reset()
    writer.write({'step': step, **host_metrics, 'images_per_second': images_per_second})
    progress.set_postfix(loss=f'{host_metrics["loss"]:.4f}', img_s=f'{images_per_second:.0f}')
  collapse.update(step, host_metrics, checkpoint_dir)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains the config's encoder in `workdir` (resuming if possible) and evaluates retrieval.

  Writes `workdir/metrics.jsonl` (training curves; plotted in `training_curves.png`),
  `workdir/checkpoints/`, `workdir/config.json`,
  `workdir/results.json` and `workdir/results.md`.

  Returns:
    `{'model': {...metrics}, 'raw_pixels': {...metrics}}`.
  """
  check_names(config)
  os.makedirs(workdir, exist_ok=True)
  report_dir = parallel.primary_workdir(workdir)  # Multi-host: only process 0 writes the reports.
  with open(os.path.join(report_dir, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort(indent=2))
  dataset = data.load_dataset(config.data)
  model, state = train(config, workdir, dataset)
  results = metrics.evaluate(config, model, state.variables(), dataset)
  table = report.format_results_table(results)
  with open(os.path.join(report_dir, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(report_dir, 'results.md'), 'w', encoding='utf-8') as f:
    f.write(f'Retrieval on the test query/candidate split '
            f'(|Q| = {config.eval.num_queries}, |C| = {config.eval.num_candidates}):\n\n{table}\n')
  print(table)
  return results
