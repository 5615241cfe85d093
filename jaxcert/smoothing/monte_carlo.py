"""Monte-Carlo smoothing of an embedding: g_hat(x) = (1/n) sum_i h(x + z_i) (Wu et al., Sec. 3.3).

`bounded_embedding` makes h satisfy ||h|| <= F; `smooth` builds the jitted, chunked estimator
(`Smoother`), `sharded_smoother` splits its samples into independent streams across devices, and
`smooth_dataset` / `smooth_select_and_estimate` smooth whole image sets into `SmoothedEmbeddings`,
the host arrays the certificates of `jaxcert.smoothing.certificates` take. The package docstring
(`jaxcert.smoothing`) describes the design.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from jaxcert import common
from jaxcert import parallel
from jaxcert import retrieval

BOUND_MODES = ('normalize', 'clip')

# Added to squared norms before rsqrt in `bounded_embedding`: keeps h = 0 finite.
_TINY = 1e-30


# ---------------------------------------------------------------------------
# Bounded embeddings.
# ---------------------------------------------------------------------------


def _as_pytree_function(embed: Callable) -> jax.tree_util.Partial:
  """`embed` as a pytree that crosses `jit` as an argument (`retrieval.as_pytree_function`)."""
  if not callable(embed):
    raise ValueError(f'embed must be a function (batch, ...) -> (batch, k), got {embed!r}.')
  return retrieval.as_pytree_function(embed)


def _scale_to_norm(embed, bound, x):
  """h(x) F / ||h(x)||: every embedding on the sphere of radius F (0 stays 0)."""
  h = embed(x)
  return h * (bound * lax.rsqrt(jnp.sum(h * h, axis=-1, keepdims=True) + _TINY))


def _clip_to_norm(embed, bound, x):
  """h(x) min(1, F / ||h(x)||): embeddings inside the F-ball are unchanged."""
  h = embed(x)
  norm = jnp.sqrt(jnp.sum(h * h, axis=-1, keepdims=True))
  return h * jnp.minimum(1.0, bound / jnp.maximum(norm, _TINY))


_BOUND_FUNCTIONS = {'normalize': _scale_to_norm, 'clip': _clip_to_norm}


def bounded_embedding(embed: Callable, F: float = 1.0, mode: str = 'normalize'
                      ) -> jax.tree_util.Partial:
  """`embed` made to satisfy ||h(x)||_2 <= F, the assumption of Lemma 3.3 and Lemma 3.6 (RetrievalGuard).

  Args:
    embed: `(batch, ...) -> (batch, k)`; a `jax.tree_util.Partial(model.apply, variables)` keeps the
      weights runtime arguments of the jitted smoother.
    F: the norm bound (> 0); the paper uses F = 1 with L2-normalised embeddings.
    mode: 'normalize' (h F / ||h||, the paper's normalised embeddings) or 'clip'
      (h min(1, F / ||h||), which leaves embeddings inside the ball, e.g. a small linear map,
      intact).

  Returns:
    The bounded embedding as a `jax.tree_util.Partial` (a pytree; pass it to `smooth`).
  """
  if mode not in _BOUND_FUNCTIONS:
    raise ValueError(f'mode={mode!r} is not one of {BOUND_MODES}.')
  F = _check_positive('F', F)
  return jax.tree_util.Partial(_BOUND_FUNCTIONS[mode], _as_pytree_function(embed), F)


# ---------------------------------------------------------------------------
# Monte-Carlo smoothing.
# ---------------------------------------------------------------------------


class Smoothed(NamedTuple):
  """Monte-Carlo smoothing of one batch (device arrays)."""
  mean: jax.Array      # (batch, k) g_hat(x) = (1/n) sum_i h(x + z_i)
  max_norm: jax.Array  # (batch,) max_i ||h(x + z_i)||_2 over the n samples drawn


@functools.partial(jax.jit, static_argnames=('num_samples', 'chunk_size'))
def _smoothed_mean(embed, key, x, sigma, *, num_samples: int, chunk_size: int) -> Smoothed:
  """g_hat(x) for a batch x: chunks of noisy copies through `embed`, summed with `lax.scan`.

  Chunk c draws z = sigma * N(0, I) of shape (chunk_size,) + x.shape[1:] from fold_in(key, c),
  shared by the batch, and embeds the (chunk_size * batch) inputs x[b] + z[s] in one call. Sample
  s of chunk c is sample number c * chunk_size + s; samples >= num_samples are masked out. Chunk
  sums are accumulated with Kahan's compensated summation, so the rounding error of the mean does
  not grow with the number of chunks (docs/smoothing.md Sec. 4).
  """
  batch = x.shape[0]
  num_chunks = -(-num_samples // chunk_size)
  sample_offsets = jnp.arange(chunk_size)

  def chunk_step(carry, _):
    chunk_index, total, compensation, max_norm = carry
    noise = sigma * jax.random.normal(jax.random.fold_in(key, chunk_index),
                                      (chunk_size,) + x.shape[1:], x.dtype)
    noisy = (x[None] + noise[:, None]).reshape((chunk_size * batch,) + x.shape[1:])
    h = embed(noisy)
    if h.ndim != 2 or h.shape[0] != chunk_size * batch:
      raise ValueError(f'embed must map (batch, ...) to (batch, k); got {h.shape} for '
                       f'{noisy.shape} inputs.')
    h = h.reshape(chunk_size, batch, h.shape[-1]).astype(jnp.float32)
    valid = chunk_index * chunk_size + sample_offsets < num_samples
    h = jnp.where(valid[:, None, None], h, 0.0)
    chunk_sum = jnp.sum(h, axis=0)
    # Kahan summation: `compensation` carries the low-order bits lost by `total`.
    corrected = chunk_sum - compensation
    new_total = total + corrected
    compensation = (new_total - total) - corrected
    chunk_max = jnp.max(jnp.sqrt(jnp.sum(h * h, axis=-1)), axis=0)
    return (chunk_index + 1, new_total, compensation, jnp.maximum(max_norm, chunk_max)), None

  embedding_dim = jax.eval_shape(embed, x[:1]).shape[-1]
  zeros = jnp.zeros((batch, embedding_dim), jnp.float32)
  # The chunk index rides in the carry (no length-n/chunk_size array): memory is independent of n.
  init = (jnp.zeros((), jnp.int32), zeros, zeros, jnp.zeros((batch,), jnp.float32))
  (_, total, _, max_norm), _ = lax.scan(chunk_step, init, None, length=num_chunks)
  return Smoothed(total / num_samples, max_norm)


@dataclasses.dataclass(frozen=True, eq=False)
class Smoother:
  """Monte-Carlo estimator of g(x) = E h(x + z), z ~ N(0, sigma^2 I); build it with `smooth`."""
  embed: jax.tree_util.Partial
  sigma: float
  num_samples: int
  chunk_size: int
  F: float

  def __call__(self, key: jax.Array, x: jax.Array) -> Smoothed:
    """g_hat(x) and the largest sample norm for a batch x of shape (batch, ...); jitted.

    `key` is a `jax.random.key`; the same key gives the same noise for every input and batch.
    """
    if jnp.ndim(x) < 2 or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise ValueError(f'x must be a floating-point batch (batch, ...), got shape {jnp.shape(x)} '
                       f'and dtype {jnp.result_type(x)}; convert images to float32 in [0, 1].')
    return _smoothed_mean(self.embed, key, x, self.sigma, num_samples=self.num_samples,
                          chunk_size=self.chunk_size)

  def lower(self, key: jax.Array, x: jax.Array):
    """The lowered computation (for `.compile().memory_analysis()`, `.as_text()`)."""
    return _smoothed_mean.lower(self.embed, key, x, self.sigma, num_samples=self.num_samples,
                                chunk_size=self.chunk_size)

  @property
  def rounding_allowance(self) -> float:
    """Bound on ||computed g_hat - exact average of the float32 samples||_2.

    A chunk sum of m terms in any order errs by <= (m - 1) u sum |terms| per coordinate; Kahan
    summation over chunks adds 2u + O(u^2 n/m), the division u (Higham 2002, Eqs. 4.4, 4.8). With
    ||(1/n) sum_i |h_i| ||_2 <= F this gives (chunk_size + 4) u F (docs/smoothing.md Sec. 4).
    """
    return (self.chunk_size + 4) * common.FLOAT32_UNIT_ROUNDOFF * self.F


def smooth(embed: Callable, *, sigma: float, num_samples: int, chunk_size: int,
           F: float = 1.0) -> Smoother:
  """The Monte-Carlo smoothed embedding g_hat (RetrievalGuard, Sec. 3.3: g_hat(x) = 1/n sum h(x + z_i)).

  Args:
    embed: the base embedding h, `(batch, ...) -> (batch, k)` with ||h(x)|| <= F
      (`bounded_embedding`, or an L2-normalised encoder with F = 1). A
      `jax.tree_util.Partial(model.apply, variables)` keeps the weights runtime arguments, so one
      compilation serves every checkpoint; a plain closure bakes them in.
    sigma: noise standard deviation (> 0), in input (pixel) units.
    num_samples: n, Monte-Carlo samples per input (the paper: 100,000).
    chunk_size: samples per scan step; one step embeds chunk_size * batch inputs, so memory is
      set by chunk_size * batch, not by n. Capped at n.
    F: the norm bound the certificates will assume (checked against the samples drawn).

  Returns:
    A `Smoother`: `smoother(key, x) -> Smoothed(mean (batch, k), max_norm (batch,))`.
  """
  sigma = _check_positive('sigma', sigma)
  F = _check_positive('F', F)
  num_samples = common.check_positive_int('num_samples', num_samples)
  chunk_size = min(common.check_positive_int('chunk_size', chunk_size), num_samples)
  return Smoother(_as_pytree_function(embed), sigma, num_samples, chunk_size, F)


# ---------------------------------------------------------------------------
# Monte-Carlo smoothing over several devices.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ShardedSmoother:
  """Monte-Carlo smoothing with the samples split into independent streams across devices.

  Build it with `sharded_smoother`. It has the interface of `Smoother`
  (`(key, x) -> Smoothed`, `num_samples`, `sigma`, `F`, `chunk_size`, `rounding_allowance`), so
  `smooth_dataset` and the certificates take it unchanged.
  """
  stream: Smoother  # the smoother of one stream (num_samples / num_streams samples)
  mesh: Mesh
  num_streams: int

  @property
  def num_samples(self) -> int:
    return self.stream.num_samples * self.num_streams

  @property
  def sigma(self) -> float:
    return self.stream.sigma

  @property
  def F(self) -> float:  # pylint: disable=invalid-name
    return self.stream.F

  @property
  def chunk_size(self) -> int:
    return self.stream.chunk_size

  @property
  def embed(self) -> jax.tree_util.Partial:
    return self.stream.embed

  @property
  def rounding_allowance(self) -> float:
    """Bound on ||computed g_hat - exact average of the float32 samples||_2.

    Each stream's mean is within `stream.rounding_allowance` of its exact average; averaging S
    means of norm <= F adds at most (S - 1) u F for the sum in any order (the all-reduce's included)
    and u F for the division (Higham 2002, Eq. 4.4), and the n / S-weighted average of the
    streams' exact averages is the exact average of all n samples. One more u F covers the
    second-order terms: allowance = stream allowance + (S + 1) u F.
    """
    return (self.stream.rounding_allowance
            + (self.num_streams + 1) * common.FLOAT32_UNIT_ROUNDOFF * self.F)

  def __call__(self, key: jax.Array, x: jax.Array) -> Smoothed:
    """g_hat(x) over `num_samples` samples and the largest sample norm, for a batch x."""
    return _sharded_smoothed_mean(self.stream, self.mesh, self.num_streams, key, jnp.asarray(x))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _sharded_smoothed_mean(stream, mesh, num_streams, key, x) -> Smoothed:
  def local_streams(stream_ids, embed, key, x):
    def one_stream(stream_id):
      result = dataclasses.replace(stream, embed=embed)(jax.random.fold_in(key, stream_id), x)
      return result.mean, result.max_norm
    means, max_norms = lax.map(one_stream, stream_ids)
    return (lax.psum(jnp.sum(means, axis=0), parallel.DATA_AXIS) / num_streams,
            lax.pmax(jnp.max(max_norms, axis=0), parallel.DATA_AXIS))

  mean, max_norm = jax.shard_map(
      local_streams, mesh=mesh, in_specs=(P(parallel.DATA_AXIS), P(), P(), P()),
      out_specs=(P(), P()),
      check_vma=False,  # the smoother's scan starts from constants and carries per-device sums
  )(jnp.arange(num_streams, dtype=jnp.int32), stream.embed, key, x)
  return Smoothed(mean, max_norm)


def sharded_smoother(smoother: Smoother, mesh: Mesh,
                     num_streams: int | None = None) -> ShardedSmoother:
  """`smoother` with its `num_samples` samples split into `num_streams` streams across `mesh`.

  Stream s draws num_samples / num_streams samples with `smoother`'s chunking from the key
  fold_in(key, s): the streams' noise is independent, so the n samples are i.i.d. N(0, sigma^2 I)
  as in `smooth` and the estimator g_hat(x) = (1/n) sum_i h(x + z_i) of RetrievalGuard
  Sec. 3.3, with every concentration bound of this module, is unchanged. Each device runs
  num_streams / devices streams (`jax.shard_map`); the sums are all-reduced (`psum`) and the sample
  norms max-reduced. The result depends on `(key, x, num_streams)` only, not on the device count:
  8 streams on 1, 2, 4 or 8 devices give the same g_hat up to float rounding. It differs from the
  unsharded `smoother(key, x)` (other noise), as two keys do; both estimate the same g.

  Args:
    smoother: from `smooth` (its embed, sigma, F, chunk_size and total num_samples).
    mesh: from `parallel.make_mesh` (one process).
    num_streams: a multiple of the device count dividing num_samples; default: the device count.

  Returns:
    A `ShardedSmoother`.

  Raises:
    ValueError: num_streams is not a positive multiple of the device count or does not divide
      num_samples.
  """
  devices = mesh.devices.size
  num_streams = devices if num_streams is None else num_streams
  if isinstance(num_streams, bool) or int(num_streams) != num_streams or num_streams < 1 or num_streams % devices:
    raise ValueError(f'num_streams must be a positive multiple of the {devices} devices, got '
                     f'{num_streams!r}.')
  num_streams = int(num_streams)
  if smoother.num_samples % num_streams:
    raise ValueError(f'num_samples={smoother.num_samples} does not divide into {num_streams} '
                     f'streams; use a multiple of {num_streams} (e.g. '
                     f'{-(-smoother.num_samples // num_streams) * num_streams}).')
  stream = smooth(smoother.embed, sigma=smoother.sigma,
                  num_samples=smoother.num_samples // num_streams,
                  chunk_size=smoother.chunk_size, F=smoother.F)
  return ShardedSmoother(stream, mesh, num_streams)


# ---------------------------------------------------------------------------
# Whole sets.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SmoothedEmbeddings:
  """Smoothed embeddings of a set of inputs (host float64), with how they were estimated."""
  mean: np.ndarray       # (N, k) g_hat
  max_norm: np.ndarray   # (N,) largest ||h(x + z_i)|| among the samples of each input
  num_samples: int       # n
  sigma: float
  F: float
  rounding_allowance: float  # bound on the float32 rounding error of each row of `mean`
  seconds: np.ndarray | None = None  # (N,) wall time of each row's batch / rows in it

  def __len__(self) -> int:
    return self.mean.shape[0]

  def take(self, rows) -> SmoothedEmbeddings:
    """The smoothed embeddings of `rows` (e.g. the gallery items that are also queries)."""
    return dataclasses.replace(self, mean=self.mean[rows], max_norm=self.max_norm[rows],
                               seconds=None if self.seconds is None else self.seconds[rows])


def smooth_dataset(smoother: Smoother, key: jax.Array, inputs, *, batch_size: int,
                   on_batch: Callable[[int, int], None] | None = None) -> SmoothedEmbeddings:
  """g_hat of every row of `inputs` (N, ...), in batches of one compiled shape.

  The last batch is padded with copies of row 0 and the padding dropped. Every batch uses `key`:
  with the noise shared across a batch, g_hat(x) depends only on (key, x).

  Args:
    smoother: from `smooth`.
    key: a `jax.random.key`.
    inputs: (N, ...) array (images NHWC in [0, 1]).
    batch_size: inputs per call (each call embeds batch_size * chunk_size noisy copies).
    on_batch: called as `on_batch(inputs_done, samples_per_input)` after each batch (e.g. to
      advance a progress bar and show samples/s).

  Returns:
    `SmoothedEmbeddings` with float64 means and per-row seconds (the first batch includes the
    compilation).
  """
  batch_size = common.check_positive_int('batch_size', batch_size)
  inputs = np.asarray(inputs, np.float32)
  if inputs.ndim < 2 or inputs.shape[0] == 0:
    raise ValueError(f'inputs must be a non-empty batch (N, ...), got shape {inputs.shape}.')
  means, max_norms, seconds = [], [], []
  for start in range(0, inputs.shape[0], batch_size):
    started = time.perf_counter()
    batch = inputs[start:start + batch_size]
    count = batch.shape[0]
    if count < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - count, axis=0)])
    result = smoother(key, jnp.asarray(batch))
    means.append(np.asarray(result.mean, np.float64)[:count])
    max_norms.append(np.asarray(result.max_norm, np.float64)[:count])
    seconds.append(np.full(count, (time.perf_counter() - started) / count))
    if on_batch is not None:
      on_batch(count, smoother.num_samples)
  return SmoothedEmbeddings(np.concatenate(means), np.concatenate(max_norms),
                            smoother.num_samples, smoother.sigma, smoother.F,
                            smoother.rounding_allowance, np.concatenate(seconds))


def smooth_select_and_estimate(embed: Callable, key: jax.Array, inputs, *, sigma: float,
                               num_samples: int, num_select: int, chunk_size: int,
                               batch_size: int, F: float = 1.0,
                               on_batch: Callable[[int, int], None] | None = None
                               ) -> tuple[SmoothedEmbeddings, SmoothedEmbeddings]:
  """Selection and estimation smoothings of `inputs` from independent keys (docs Sec. 3).

  Selection uses `num_select` samples from fold_in(key, 0), estimation `num_samples` from
  fold_in(key, 1). Call it once for the gallery and once for the queries; `certify` takes the four
  results. `on_batch` is called for the batches of both passes.

  Returns:
    (selection, estimation) `SmoothedEmbeddings`.
  """
  select = smooth(embed, sigma=sigma, num_samples=num_select, chunk_size=chunk_size, F=F)
  estimate = smooth(embed, sigma=sigma, num_samples=num_samples, chunk_size=chunk_size, F=F)
  return (smooth_dataset(select, jax.random.fold_in(key, 0), inputs, batch_size=batch_size,
                         on_batch=on_batch),
          smooth_dataset(estimate, jax.random.fold_in(key, 1), inputs, batch_size=batch_size,
                         on_batch=on_batch))


# ---------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------


def _check_positive(name: str, value) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError) as error:
    raise ValueError(f'{name} must be a positive number, got {value!r}.') from error
  if not value > 0 or not math.isfinite(value):
    raise ValueError(f'{name} must be a finite number > 0, got {value}.')
  return value
