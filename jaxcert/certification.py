"""The job behind `certify.py`: load a trained encoder and certify or attack it on the test split.

`run(config, workdir)` restores the newest checkpoint of the training run `config.checkpoint` (or
the one of step STEP, for 'DIR@STEP'), builds the Kakizaki et al. query/candidate split of the test set
(`config.eval`), and hands both to the mode named by `config.certify.mode`:

  ibp        interval bound propagation: certified ranks under query and candidate attacks (Kakizaki et al.)
  smoothing  Gaussian smoothing: certified 1-NN retrieval radius (RetrievalGuard, RetrievalGuard)
  attack     PGD query/candidate attacks: empirical-robust recall (Kakizaki et al., Panum et al.)

Each mode is a module of `jaxcert.evaluation` with `run(inputs: CertifyInputs, workdir) -> dict`;
it writes its tables (markdown, TSV, JSON) and plots (PNG) into `workdir` and prints its table.
`run` writes the mode's results to `workdir/results.json` with the step of the certified
checkpoint (`checkpoint_step`), so a run that trains on afterwards does not blur which model was
certified.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxcert import checkpointing
from jaxcert import data
from jaxcert import parallel
from jaxcert import report

# mode -> module of jaxcert.evaluation that implements it (imported when the mode is asked for).
MODES: dict[str, str] = {
    'ibp': 'jaxcert.evaluation.ibp',
    'smoothing': 'jaxcert.evaluation.smoothing',
    'attack': 'jaxcert.evaluation.attack',
}


class LabelledImages(NamedTuple):
  images: Any  # (N, H, W, C) float32 in [0, 1], array-like
  labels: np.ndarray  # (N,) int32


class CertifyInputs(NamedTuple):
  """What a certification mode gets.

  Attributes:
    config: the experiment config (the mode reads its own block, e.g. `config.ibp`).
    model: the encoder module.
    variables: its Flax variables (inference mode).
    embed: `x -> model.apply(variables, x)`, the pure function certificates and attacks take.
    dataset: the whole dataset.
    queries: the query set Q (Kakizaki et al. Sec. 5.1.1).
    candidates: the candidate (gallery) set C, disjoint from Q.
    batch_sharding: where batched encoder and bound calls put each batch
      (`config.parallel.num_devices`, `parallel.local_batch_sharding`); None: one device.
    checkpoint_step: the training step of the restored checkpoint (written to results.json);
      None for inputs built by hand.
  """
  config: ml_collections.ConfigDict
  model: nn.Module
  variables: Any
  embed: Callable[[jax.Array], jax.Array]
  dataset: data.Dataset
  queries: LabelledImages
  candidates: LabelledImages
  batch_sharding: jax.sharding.Sharding | None = None
  checkpoint_step: int | None = None


def default_workdir(config) -> str:
  """`<run>/certify_<mode>`, or `<run>/certify_<mode>_step<STEP>` for a checkpoint named 'DIR@STEP'."""
  directory, step = checkpointing.split_step(config.checkpoint)
  suffix = '' if step is None else f'_step{step}'
  return os.path.join(directory, f'certify_{config.certify.mode}{suffix}')


def load_inputs(config) -> CertifyInputs:
  """Restores `config.checkpoint`'s encoder and splits its test set into queries and candidates."""
  model, variables, dataset, step = checkpointing.load_trained(config, config.checkpoint)
  (query_images, query_labels), (candidate_images, candidate_labels) = data.query_candidate_sets(
      config, dataset)
  batch_sharding = parallel.local_batch_sharding(config.parallel.num_devices)
  if batch_sharding is not None:
    variables = parallel.replicate(variables, batch_sharding.mesh)
  embed = jax.tree_util.Partial(model.apply, variables)
  return CertifyInputs(config, model, variables, embed, dataset,
                       LabelledImages(query_images, query_labels),
                       LabelledImages(candidate_images, candidate_labels), batch_sharding, step)


def get_mode(mode: str) -> Callable[[CertifyInputs, str], dict]:
  """The `run` function of certification mode `mode`, one of MODES."""
  if mode not in MODES:
    raise ValueError(f'Unknown certification mode {mode!r}; valid modes: {sorted(MODES)}.')
  return importlib.import_module(MODES[mode]).run


def run(config, workdir: str | None = None) -> dict:
  """Certifies (or attacks) the encoder trained in `config.checkpoint`; returns the mode's results.

  Args:
    config: experiment config with `checkpoint` (a training workdir) and `certify.mode`.
    workdir: where results go; default `<checkpoint>/certify_<mode>`.

  Raises:
    ValueError: no checkpoint given, or an unknown mode.
    FileNotFoundError: the checkpoint directory holds no checkpoint (then nothing is written).
  """
  if not config.get('checkpoint'):
    raise ValueError('Set config.checkpoint to the workdir of a training run, e.g. '
                     '--config.checkpoint=runs/quickstart (train it with train.py first).')
  mode_run = get_mode(config.certify.mode)
  inputs = load_inputs(config)  # Before writing anything: a wrong checkpoint leaves no directory.
  workdir = workdir or default_workdir(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort(indent=2))
  results = {**mode_run(inputs, workdir), 'checkpoint_step': inputs.checkpoint_step}
  report.write_json(os.path.join(workdir, 'results.json'), results)
  return results
