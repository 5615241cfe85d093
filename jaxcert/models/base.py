"""The pieces every encoder shares: the image check, pixel-space normalisation, the L2 head.

Images enter every encoder as NHWC float32 in [0, 1] (docs/architecture.md). The first operation is
`(x - input_mean) / input_std`, so perturbation balls and certificates stay in pixel space, and the
optional last one projects the embedding onto the unit sphere. Both are written with plain `jnp`
operations (sub, div, square, reduce_sum, rsqrt, mul) that the interval interpreter in
`jaxcert.bounds` has rules for.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

# Added to the squared norm before the reciprocal square root: keeps the L2 head finite (and its
# gradient finite) at the zero embedding, and is far below float32 resolution of any norm >= 1e-4.
L2_NORMALIZE_EPSILON = 1e-12

ChannelStatistic = float | tuple[float, ...]


def as_channel_statistic(value, name: str) -> ChannelStatistic:
  """`value` as a float or a tuple of floats (one per channel); lists and arrays become tuples."""
  if isinstance(value, (Sequence, np.ndarray, jax.Array)) and not isinstance(value, str):
    values = tuple(float(v) for v in np.ravel(np.asarray(value)))
    if not values:
      raise ValueError(f'{name} is empty; give a scalar or one value per image channel.')
    return values[0] if len(values) == 1 else values
  try:
    return float(value)
  except (TypeError, ValueError) as error:
    raise ValueError(f'{name} must be a number or a sequence of numbers (one per channel), '
                     f'got {value!r}.') from error


def check_images(x: jax.Array, *, model_name: str, num_channels: int | None,
                 input_mean: ChannelStatistic, input_std: ChannelStatistic,
                 min_side: int = 1) -> None:
  """Raises ValueError unless `x` is an NHWC batch the encoder can take.

  Shapes are static under `jit`, so this runs once per traced shape (at `init` and at the first
  `apply`), not per step.

  Args:
    x: the images given to the encoder.
    model_name: how the error messages name the encoder.
    num_channels: the channel count the encoder was configured for; None accepts any.
    input_mean: scalar or per-channel mean.
    input_std: scalar or per-channel standard deviation.
    min_side: the smallest height and width the encoder's layers can take.
  """
  shape = tuple(x.shape)
  if len(shape) != 4:
    raise ValueError(f'{model_name} expects a batch of NHWC images (batch, height, width, channels), '
                     f'got an array of shape {shape}. Add a batch axis or a channel axis.')
  _, height, width, channels = shape
  if num_channels is not None and channels != num_channels:
    raise ValueError(f'{model_name} was configured with num_channels={num_channels} and expects '
                     f'images of shape (batch, height, width, {num_channels}); got {shape} with '
                     f'{channels} channel(s). Change num_channels or the data.')
  for name, statistic in (('input_mean', input_mean), ('input_std', input_std)):
    if isinstance(statistic, tuple) and len(statistic) != channels:
      raise ValueError(f'{model_name}: {name} has {len(statistic)} values but the images '
                       f'{shape} have {channels} channel(s); give a scalar or one value per channel.')
  if min(height, width) < min_side:
    raise ValueError(f'{model_name} expects images at least {min_side}x{min_side} pixels, got '
                     f'{height}x{width} (input shape {shape}). Resize the images or pick another '
                     f'model.')


def normalize_images(x: jax.Array, input_mean: ChannelStatistic,
                     input_std: ChannelStatistic) -> jax.Array:
  """`(x - input_mean) / input_std`, broadcast over the channel (last) axis.

  Computed in float32, or in `x`'s dtype if that is wider (float64 certification, where the
  interval bounds then describe the encoder with the statistics as given, not rounded to
  float32; docs/bounds.md §10). Integer and half-precision images are promoted to float32.
  """
  dtype = jnp.promote_types(x.dtype, jnp.float32) if jnp.issubdtype(
      x.dtype, jnp.floating) else jnp.float32
  mean = jnp.asarray(input_mean, dtype)
  std = jnp.asarray(input_std, dtype)
  return (x.astype(dtype) - mean) / std


def l2_normalize(embeddings: jax.Array) -> jax.Array:
  """`e / sqrt(sum e^2 + tiny)` along the last axis: unit-norm rows (norm F = 1, RetrievalGuard Sec. 4.3).

  Written as square, reduce_sum, rsqrt and mul rather than `jnp.linalg.norm`, so interval bound
  propagation has a rule for every operation.
  """
  squared_norm = jnp.sum(jnp.square(embeddings), axis=-1, keepdims=True)
  return embeddings * lax.rsqrt(squared_norm + L2_NORMALIZE_EPSILON)


def flatten(x: jax.Array) -> jax.Array:
  """(batch, ...) -> (batch, features)."""
  return x.reshape((x.shape[0], -1))


class Encoder(nn.Module):
  """Fields every encoder has, and its first and last operations.

  Subclasses implement `__call__(self, x, *, train=False) -> (batch, embedding_dim)` as
  `h = self.prepare(x)`, their layers, then `return self.embed(h)`.

  Attributes:
    embedding_dim: size k of the embedding.
    l2_normalize: project embeddings onto the unit sphere (`l2_normalize`).
    input_mean: pixel mean, scalar or one per channel, subtracted inside the model.
    input_std: pixel standard deviation, scalar or one per channel, divided inside the model.
    num_channels: the image channel count the encoder accepts; None accepts any.
  """
  embedding_dim: int = 128
  l2_normalize: bool = False
  input_mean: ChannelStatistic = 0.0
  input_std: ChannelStatistic = 1.0
  num_channels: int | None = None

  # The smallest image height and width the layers of the encoder can take.
  min_image_side = 1

  def prepare(self, x: jax.Array) -> jax.Array:
    """Checks the image batch (`check_images`) and normalises it (`normalize_images`)."""
    check_images(x, model_name=type(self).__name__, num_channels=self.num_channels,
                 input_mean=self.input_mean, input_std=self.input_std,
                 min_side=self.min_image_side)
    return normalize_images(x, self.input_mean, self.input_std)

  def embed(self, features: jax.Array, *, use_bias: bool = True) -> jax.Array:
    """Dense projection to `embedding_dim` (named 'embedding'), then the optional L2 head."""
    embeddings = nn.Dense(self.embedding_dim, use_bias=use_bias, name='embedding')(features)
    return l2_normalize(embeddings) if self.l2_normalize else embeddings
