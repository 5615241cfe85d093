"""What every training method shares: the inputs an objective sees, the forward pass, the DML loss.

A training method is a `Method`: an `objective` (the loss minimised at each step) and `init_params`
(the trainable parameters it adds beside the encoder's, e.g. the margin loss's beta or C-IBP's
classifier head). The train state holds them as `params = {'model': encoder, 'objective': extra}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxcert import losses


class ObjectiveInputs(NamedTuple):
  """What a training objective sees at one step (inside the jitted step).

  Attributes:
    model: the encoder module.
    params: `{'model': encoder parameters, 'objective': the method's own parameters}`.
    batch_stats: BatchNorm statistics (`{}` for encoders without BatchNorm).
    images: (B, H, W, C) in [0, 1].
    labels: (B,) int32.
    key: a PRNG key for this step only.
    step: the optimiser step, an int32 scalar (schedules depend on it).
    config: the experiment config.
  """
  model: nn.Module
  params: Any
  batch_stats: Any
  images: jax.Array
  labels: jax.Array
  key: jax.Array
  step: jax.Array
  config: ml_collections.ConfigDict


# inputs -> (loss, (metrics to log, updated batch_stats)).
Objective = Callable[[ObjectiveInputs], tuple[jax.Array, tuple[dict, Any]]]


class ParamsContext(NamedTuple):
  """What a method may need to create its parameters."""
  key: jax.Array
  embedding_dim: int
  num_classes: int


# (config, context) -> the method's own trainable parameters (a pytree, `{}` for none).
InitParams = Callable[[ml_collections.ConfigDict, ParamsContext], Any]


def init_loss_params(config: ml_collections.ConfigDict, context: ParamsContext) -> dict:
  """Trainable parameters of the DML loss: the margin loss has beta (RetrievalGuard: initial value 1.2)."""
  del context
  if config.loss.name == 'margin':
    return {'beta': jnp.asarray(config.loss.get('beta_init', 1.2), jnp.float32)}
  return {}


class Method(NamedTuple):
  """A training method: its objective and the parameters it adds to the encoder's."""
  objective: Objective
  init_params: InitParams = init_loss_params


def model_variables(model_params, batch_stats) -> dict:
  """Flax variables `{'params', 'batch_stats'?}` for `model.apply`."""
  variables = {'params': model_params}
  if batch_stats:
    variables['batch_stats'] = batch_stats
  return variables


def embed_for_training(model: nn.Module, params, batch_stats, images) -> tuple[jax.Array, Any]:
  """Encoder forward pass in training mode; returns `(embeddings, updated batch_stats)`."""
  variables = model_variables(params['model'], batch_stats)
  if not batch_stats:
    return model.apply(variables, images, train=True), batch_stats
  embeddings, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  return embeddings, updates['batch_stats']


_LOSS_CONFIG_KEYS_NOT_KWARGS = ('name', 'beta_init', 'beta_learning_rate')


def metric_learning_loss(loss_config, embeddings, labels, objective_params, key) -> jax.Array:
  """The deep-metric-learning loss named by `loss_config.name`, with its hyper-parameters."""
  fn = losses.get_loss(loss_config.name)
  kwargs = {k: v for k, v in loss_config.items() if k not in _LOSS_CONFIG_KEYS_NOT_KWARGS}
  if loss_config.name == 'margin':
    return fn(embeddings, labels, objective_params['beta'], key, **kwargs)
  return fn(embeddings, labels, **kwargs)
