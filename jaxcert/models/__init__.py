"""Flax Linen encoders from NHWC images in [0, 1] to (batch, embedding_dim) embeddings.

`get_model(name, ...)` builds an encoder by name (`build_model(config.model)` from an experiment
config), `init_variables(model, key, image_shape)` its variables; then `embed(x) = model.apply(variables, x)` is the pure function that certificates,
attacks and metrics take (docs/architecture.md). Every encoder normalises its input inside the model
(`(x - input_mean) / input_std`), so perturbations live in pixel space, and can end in an L2
normalisation head. Models ('linear': AckMetric; 'small_cnn', 'large_cnn': Kakizaki et al. Sec. 5.1.4;
'resnet18', 'resnet50': RetrievalGuard Sec. 4.3) are documented in their modules.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcert.models import base
from jaxcert.models.base import Encoder
from jaxcert.models.base import l2_normalize
from jaxcert.models.cnn import LargeCNN
from jaxcert.models.cnn import SmallCNN
from jaxcert.models.linear import LinearEncoder
from jaxcert.models.mlp import MLPEncoder
from jaxcert.models.resnet import ResNet

# name -> (encoder class, fields fixed by the name).
_REGISTRY: dict[str, tuple[type[Encoder], dict]] = {
    'linear': (LinearEncoder, {}),
    'mlp': (MLPEncoder, {}),
    'small_cnn': (SmallCNN, {}),
    'large_cnn': (LargeCNN, {}),
    'resnet18': (ResNet, {'depth': 18}),
    'resnet50': (ResNet, {'depth': 50}),
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)

_COMMON_FIELDS = ('embedding_dim', 'l2_normalize', 'input_mean', 'input_std')


def model_options(name: str) -> tuple[str, ...]:
  """The keyword arguments `get_model(name, ...)` accepts beyond the common ones."""
  cls, fixed = _lookup(name)
  excluded = set(_COMMON_FIELDS) | set(fixed) | {'parent', 'name'}
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in excluded)


def get_model(name: str, *, embedding_dim: int = 128, l2_normalize: bool = False,
              input_mean=0.0, input_std=1.0, **kwargs) -> nn.Module:
  """The encoder `name`, one of MODEL_NAMES.

  Args:
    name: 'linear', 'mlp', 'small_cnn', 'large_cnn', 'resnet18' or 'resnet50'.
    embedding_dim: size of the embedding.
    l2_normalize: end with x / sqrt(sum x^2 + tiny) (unit-norm embeddings).
    input_mean: pixel mean subtracted inside the model; scalar or one value per channel.
    input_std: pixel standard deviation divided inside the model; scalar or one value per channel.
    **kwargs: options of the model (`model_options(name)`): `num_channels` for every model (the
      channel count images must have; default any), `hidden_width` and `num_hidden_layers` for
      'mlp', `num_filters` and `stem` for the ResNets.

  Returns:
    A Flax Linen module; `module.apply(variables, x, train=False) -> (batch, embedding_dim)`.

  Raises:
    ValueError: unknown name or option, or an invalid value.
  """
  cls, fixed = _lookup(name)
  unknown = sorted(set(kwargs) - set(model_options(name)))
  if unknown:
    raise ValueError(f'Unknown option(s) {unknown} for model {name!r}; it accepts '
                     f'{list(_COMMON_FIELDS + model_options(name))}.')
  if int(embedding_dim) != embedding_dim or embedding_dim < 1:
    raise ValueError(f'embedding_dim must be a positive integer, got {embedding_dim!r}.')
  input_mean = base.as_channel_statistic(input_mean, 'input_mean')
  input_std = base.as_channel_statistic(input_std, 'input_std')
  if min(input_std if isinstance(input_std, tuple) else (input_std,)) <= 0:
    raise ValueError(f'input_std must be positive, got {input_std}.')
  lengths = {len(s) for s in (input_mean, input_std) if isinstance(s, tuple)}
  if len(lengths) > 1:
    raise ValueError(f'input_mean {input_mean} and input_std {input_std} have different numbers '
                     f'of channels.')
  num_channels = kwargs.get('num_channels')
  if num_channels is not None and lengths and lengths != {num_channels}:
    raise ValueError(f'num_channels={num_channels} but input_mean/input_std give '
                     f'{lengths.pop()} per-channel values.')
  return cls(embedding_dim=int(embedding_dim), l2_normalize=bool(l2_normalize),
             input_mean=input_mean, input_std=input_std, **fixed, **kwargs)


def build_model(model_config) -> nn.Module:
  """The encoder an experiment config names: `config.model`, its `name` and `get_model` options.

  Args:
    model_config: a mapping (`ml_collections.ConfigDict`) with `name` (one of MODEL_NAMES) and
      keyword arguments of `get_model` (`embedding_dim`, `l2_normalize`, `model_options(name)`).

  Raises:
    ValueError: as `get_model`.
  """
  options = dict(model_config)
  name = options.pop('name')
  return get_model(name, **options)


def init_variables(model: nn.Module, key: jax.Array, image_shape) -> dict:
  """Variables of `model` for images of `image_shape`: {'params'} and, for ResNets, {'batch_stats'}.

  Args:
    model: an encoder from `get_model`.
    key: a `jax.random.key`.
    image_shape: (height, width, channels) of one image, or (batch, height, width, channels).

  Raises:
    ValueError: the model cannot take images of this shape (the message says which it expects).
  """
  shape = tuple(int(d) for d in image_shape)
  if len(shape) == 3:
    shape = (1,) + shape
  if len(shape) != 4:
    raise ValueError(f'image_shape must be (height, width, channels) or (batch, height, width, '
                     f'channels), got {tuple(image_shape)}.')
  init = jax.jit(functools.partial(model.init, train=False))
  return init(key, jnp.zeros(shape, jnp.float32))


def _lookup(name: str) -> tuple[type[Encoder], dict]:
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}; valid models: {list(MODEL_NAMES)}.')
  return _REGISTRY[name]


__all__ = [
    'MODEL_NAMES', 'Encoder', 'LargeCNN', 'LinearEncoder', 'MLPEncoder', 'ResNet', 'SmallCNN',
    'build_model', 'get_model', 'init_variables', 'l2_normalize', 'model_options',
]
