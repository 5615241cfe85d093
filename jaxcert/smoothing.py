"""Gaussian smoothing of an embedding model and certified 1-NN retrieval (RetrievalGuard).

Specification: seed 000 (Wu, Zhang and Huang, "RetrievalGuard", ICML 2022),
`/work/shared/seeds/000_3a138ab1b237dc96.txt`; derivations in docs/smoothing.md.

The smoothed embedding of a base embedding h with ||h(x)|| <= F is
g(x) = E_{z ~ N(0, sigma^2 I)} h(x + z) (Sec. 3.2), estimated by Monte Carlo as
g_hat(x) = (1/n) sum_i h(x + z_i) (Sec. 3.3):

* `smooth(embed, sigma=..., num_samples=..., chunk_size=...)` -> `Smoother`, a callable
  `(key, x) -> Smoothed(mean, max_norm)` for a batch `x` of shape (batch, ...). It draws the noise
  on the device, `chunk_size` samples at a time from `fold_in(key, chunk_index)`, feeds the noisy
  copies to `embed` as one batch of chunk_size * batch inputs, and accumulates the chunk sums with
  `lax.scan` (compensated summation), so memory does not grow with n; the last chunk is masked when
  chunk_size does not divide n. One compiled function serves queries and gallery. The noise of a
  chunk is shared by every input of the batch (common random numbers): g_hat(x) is a function of
  (key, x) only, not of the batch it was computed in, and the statistics below never need
  independence between inputs (they combine per-input events with union bounds; docs Sec. 3).
* `sharded_smoother(smoother, mesh)` splits the samples into independent streams spread over the
  devices of a mesh (`jax.shard_map`) and all-reduces their sums (`psum`).
* `bounded_embedding(embed, F, mode)` enforces ||h|| <= F (scale to norm F, or clip to the F-ball);
  `Smoothed.max_norm` records the largest norm among the samples drawn, and the certificates raise
  when it exceeds F.
* `smooth_dataset` smooths a whole array of images in padded batches into `SmoothedEmbeddings`
  (host float64 arrays that also carry n, sigma, F and the float32 rounding allowance of the mean);
  `smooth_select_and_estimate` does it twice, with independent keys, for selection and estimation.
* `certify(...)` certifies each query against the smoothed gallery: the 1-NN retrieved by g_hat, a
  lower bound on the margin d(x; g) (Definition 3.1), and an L2 radius (-1 = abstain) within which
  the 1-NN of g(x + delta) keeps the query's label, with probability >= 1 - alpha over the noise.
  `certificate='retrievalguard'` is the paper's (Lemma 3.8, Theorem 3.5 / Proposition 3.9,
  Algorithm 1); `certificate='bisector'` is ours (docs/smoothing.md Sec. 5): per-pair bisector
  constraints for the `num_negative_pairs` nearest negatives, each with the 1/sigma-Lipschitz bound
  on Phi^-1 of a projection of g (Salman et al. 2019, Lemma 2), the paper's argument for the other
  negatives, and a dimension-free concentration bound. On the same estimates it certifies at least
  the paper's radius whenever its concentration radius is the smaller one (k = 128, alpha = 0.01,
  up to 64 pairs: every n; small k with many pairs: its larger union bound can cost more).

Which samples are shared: the nearest positive x+ (and, for 'bisector', the negatives that get
their own pair constraint) are chosen with *selection* samples independent of the *estimation*
samples the bounds use (docs/smoothing.md Sec. 3): the paper picks x+ with the same samples it
then bounds, which its union bound does not cover.
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
from scipy import special

from jaxcert import parallel
from jaxcert import retrieval

CERTIFICATES = ('retrievalguard', 'bisector')
BOUND_MODES = ('normalize', 'clip')

# Paper defaults (seed 000, Sec. 4.3): n = 100,000 samples, alpha = 0.01, F = 1, k = 128.
PAPER_NUM_SAMPLES = 100_000
PAPER_ALPHA = 0.01
PAPER_SIGMAS = (0.1, 0.25, 0.5, 1.0)

# Relative slack on F: float32 rounding can put an L2-normalised embedding a few ulps above F.
# Certificates accept max_norm <= F (1 + NORM_TOLERANCE) and then use F (1 + NORM_TOLERANCE).
NORM_TOLERANCE = 1e-5
# Unit roundoff of float32 (round to nearest).
_FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24
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
  """`embed` made to satisfy ||h(x)||_2 <= F, the assumption of Lemma 3.3 and Lemma 3.6 (seed 000).

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
    return (self.chunk_size + 4) * _FLOAT32_UNIT_ROUNDOFF * self.F


def smooth(embed: Callable, *, sigma: float, num_samples: int, chunk_size: int,
           F: float = 1.0) -> Smoother:
  """The Monte-Carlo smoothed embedding g_hat (seed 000, Sec. 3.3: g_hat(x) = 1/n sum h(x + z_i)).

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
  num_samples = _check_positive_int('num_samples', num_samples)
  chunk_size = min(_check_positive_int('chunk_size', chunk_size), num_samples)
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
    return self.stream.rounding_allowance + (self.num_streams + 1) * _FLOAT32_UNIT_ROUNDOFF * self.F

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
  as in `smooth` and the estimator g_hat(x) = (1/n) sum_i h(x + z_i) of seed 000
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
  batch_size = _check_positive_int('batch_size', batch_size)
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
# Bounds (float64, host).
# ---------------------------------------------------------------------------


def smoothed_lipschitz_bound(distance, sigma: float, F: float = 1.0) -> np.ndarray:
  """Lemma 3.3 (seed 000, Eq. 1): ||g(x) - g(y)|| <= 2F (Phi(D / 2 sigma) - Phi(-D / 2 sigma)).

  D = ||x - y||; attained by h = F sign(x) at x and -x.
  """
  half = np.asarray(distance, np.float64) / (2.0 * sigma)
  return 2.0 * F * (special.ndtr(half) - special.ndtr(-half))


def lipschitz_radius(margin_lower_bound, sigma: float, F: float = 1.0) -> np.ndarray:
  """Theorem 3.5 with Algorithm 1's abstention: 2 sigma Phi^-1(1/2 + d / 8F), and -1 where d < 0.

  Lemma 3.2 keeps the 1-NN label while ||g(x + delta) - g(x)|| < d / 2; Lemma 3.3 bounds that
  movement by 2F (2 Phi(||delta|| / 2 sigma) - 1).
  """
  margin = np.asarray(margin_lower_bound, np.float64)
  level = np.clip(0.5 + margin / (8.0 * F), 0.5, 1.0)
  return np.where(margin < 0, -1.0, 2.0 * sigma * special.ndtri(level))


def paper_concentration_radius(num_samples: int, embedding_dim: int, failure_probability: float,
                               F: float = 1.0) -> float:
  """Lemma 3.6 inverted: ||g_hat - g|| <= sqrt(8 F^2 ln((k + 1) / beta) / 3n) w.p. >= 1 - beta.

  The constant 3/8 follows from Tropp's rectangular matrix Bernstein inequality (variance F^2 / n,
  summands <= 2F / n) only when the radius is <= F / 2 (docs/smoothing.md Sec. 2); `certify`
  checks that.
  """
  return F * math.sqrt(8.0 * math.log((embedding_dim + 1) / failure_probability)
                       / (3.0 * num_samples))


def vector_concentration_radius(num_samples: int, failure_probability: float, *, F: float = 1.0,
                                embedding_dim: int | None = None) -> float:
  """epsilon with P(||g_hat - g||_2 > epsilon) <= beta, g_hat a mean of n i.i.d. vectors, norm <= F.

  The smaller of two valid (1 - beta) radii (both deterministic in n, beta, k, F):
  * McDiarmid (dimension-free): F (1 + sqrt(2 ln(1 / beta))) / sqrt(n)
    (E||g_hat - g|| <= F / sqrt(n); one sample moves ||g_hat - g|| by <= 2F / n);
  * Tropp's rectangular matrix Bernstein (Tropp 2012, Thm 1.6) for k x 1 matrices, solved exactly:
    (2FL/3 + sqrt(4F^2 L^2 / 9 + 2 n F^2 L)) / n with L = ln((k + 1) / beta) (if k is given).
  Derivations: docs/smoothing.md Sec. 5.3.
  """
  n = float(num_samples)
  mcdiarmid = F * (1.0 + math.sqrt(2.0 * math.log(1.0 / failure_probability))) / math.sqrt(n)
  if embedding_dim is None:
    return mcdiarmid
  log_term = math.log((embedding_dim + 1) / failure_probability)
  bernstein = (2.0 * F * log_term / 3.0
               + math.sqrt(4.0 * F * F * log_term ** 2 / 9.0 + 2.0 * n * F * F * log_term)) / n
  return min(mcdiarmid, bernstein)


def _event_count(certificate: str, num_negative_pairs: int, num_negatives: int) -> int:
  """Events in the union bound: RetrievalGuard's 4 (App. B); bisector: x, x+, |K|, x*_out."""
  if certificate == 'retrievalguard':
    return 4
  pairs = min(num_negative_pairs, num_negatives)
  return 2 + pairs + (1 if num_negatives > pairs else 0)


def _radii(certificate: str, *, alpha: float, embedding_dim: int, F: float, events: int,
           query_samples: int, gallery_samples: int) -> tuple[float, float]:
  """(epsilon_query, epsilon_gallery) before rounding allowances."""
  if certificate == 'retrievalguard':
    beta = alpha / 4.0
    return (paper_concentration_radius(query_samples, embedding_dim, beta, F),
            paper_concentration_radius(gallery_samples, embedding_dim, beta, F))
  beta = alpha / events
  return (vector_concentration_radius(query_samples, beta, F=F, embedding_dim=embedding_dim),
          vector_concentration_radius(gallery_samples, beta, F=F, embedding_dim=embedding_dim))


def _can_certify(certificate: str, eps_query: float, eps_gallery: float, F: float) -> bool:
  """Whether any input could get a radius >= 0 (docs/smoothing.md Sec. 6).

  RetrievalGuard: Lemma 3.6's constant needs epsilon <= F / 2, and d_hat <= 2F must exceed
  2 eps_q + 2 eps_g. Bisector: the pairwise margins (<= 2F) must exceed 2 eps_q + 2 eps_g
  (paper-style constraint) or eps_q + 2 eps_g (bisector constraint).
  """
  if certificate == 'retrievalguard':
    return max(eps_query, eps_gallery) <= F / 2 and eps_query + eps_gallery < F
  return eps_query + eps_gallery < F or eps_query + 2 * eps_gallery < 2 * F


def minimum_num_samples(certificate: str = 'retrievalguard', *, alpha: float = PAPER_ALPHA,
                        embedding_dim: int = 128, F: float = 1.0,
                        num_negative_pairs: int = 16) -> int:
  """Smallest n (same for queries and gallery) at which `certificate` can certify any input."""
  _check_choice('certificate', certificate, CERTIFICATES)
  alpha = _check_alpha(alpha)
  events = 3 + num_negative_pairs
  def possible(n):
    eps_q, eps_g = _radii(certificate, alpha=alpha, embedding_dim=embedding_dim, F=F,
                          events=events, query_samples=n, gallery_samples=n)
    return _can_certify(certificate, eps_q, eps_g, F)
  high = 1
  while not possible(high):
    high *= 2
  low = high // 2  # possible(low) is False or low == 0.
  while high - low > 1:
    middle = (low + high) // 2
    low, high = (low, middle) if possible(middle) else (middle, high)
  return high


# ---------------------------------------------------------------------------
# Certificates.
# ---------------------------------------------------------------------------


class Certificate(NamedTuple):
  """Per-query certification results (numpy arrays of length N_queries)."""
  retrieved_index: np.ndarray     # int: gallery index of the 1-NN of g_hat(x) (estimation samples)
  margin_lower_bound: np.ndarray  # float: d_lower, a (1 - alpha) lower bound on d(x; g) (Def. 3.1)
  radius: np.ndarray              # float: certified L2 radius; -1 = abstain
  correct: np.ndarray             # bool: the retrieved item has the query's label


def certify(query_select: SmoothedEmbeddings, query_estimate: SmoothedEmbeddings, query_labels,
            gallery_select: SmoothedEmbeddings, gallery_estimate: SmoothedEmbeddings,
            gallery_labels, *, alpha: float = PAPER_ALPHA, certificate: str = 'retrievalguard',
            num_negative_pairs: int = 16, query_gallery_index=None,
            block_size: int = 64) -> Certificate:
  """Certified 1-NN retrieval for each query against the smoothed gallery (seed 000, Algorithm 1).

  For each query x, with probability >= 1 - alpha over the Monte-Carlo noise: if radius >= 0, the
  1-NN of g(x + delta) among {g(x_i)} has the query's label for every ||delta||_2 < radius (and
  d(x; g) >= margin_lower_bound).

  * 'retrievalguard': d_lower = d(x; g_hat) - 4 sqrt(8 F^2 ln((k+1) / (alpha/4)) / 3n) (Lemma 3.8),
    radius = 2 sigma Phi^-1(1/2 + d_lower / 8F) (Theorem 3.5, Proposition 3.9), -1 if d_lower < 0.
    d(x; g_hat) uses the nearest negative under g_hat and the nearest positive chosen by the
    selection samples. With different n for queries and gallery the 4 epsilon become
    2 eps_q + 2 eps_g.
  * 'bisector': docs/smoothing.md Sec. 5, union bound over 2 + |K| (+1) events.

  Args:
    query_select: queries smoothed with the selection samples.
    query_estimate: queries smoothed with the estimation samples (independent of the selection).
    query_labels: (Nq,) int labels.
    gallery_select: gallery smoothed with selection samples.
    gallery_estimate: gallery smoothed with estimation samples.
    gallery_labels: (N,) int labels.
    alpha: failure probability per query, in (0, 1).
    certificate: 'retrievalguard' or 'bisector'.
    num_negative_pairs: for 'bisector', how many nearest negatives (by selection samples) get
      their own bisector constraint.
    query_gallery_index: optional (Nq,) gallery index of each query (-1: not in the gallery); that
      item is excluded from the query's search (leave-one-out retrieval).
    block_size: queries per block of the (queries x gallery) distance computation.

  Returns:
    A `Certificate`.

  Raises:
    ValueError: bad names, shapes, alpha, sigma mismatch, an embedding norm above F among the
      samples (use `bounded_embedding`), or n too small for any certificate (the message gives the
      minimum n).
  """
  _check_choice('certificate', certificate, CERTIFICATES)
  alpha = _check_alpha(alpha)
  num_negative_pairs = _check_positive_int('num_negative_pairs', num_negative_pairs)
  block_size = _check_positive_int('block_size', block_size)
  sets = {'query_select': query_select, 'query_estimate': query_estimate,
          'gallery_select': gallery_select, 'gallery_estimate': gallery_estimate}
  F, sigma, embedding_dim = _check_smoothed_sets(sets)
  query_labels = _check_labels('query_labels', query_labels, len(query_estimate))
  gallery_labels = _check_labels('gallery_labels', gallery_labels, len(gallery_estimate))
  if query_gallery_index is None:
    query_gallery_index = np.full(len(query_estimate), -1, np.int64)
  query_gallery_index = np.asarray(query_gallery_index, np.int64)
  if query_gallery_index.shape != (len(query_estimate),) or np.any(
      query_gallery_index >= len(gallery_estimate)):
    raise ValueError(f'query_gallery_index must be ({len(query_estimate)},) gallery indices or -1, '
                     f'got shape {query_gallery_index.shape}.')

  F_cert = F * (1.0 + NORM_TOLERANCE)
  num_pairs = num_negative_pairs if certificate == 'bisector' else 0
  in_gallery = query_gallery_index >= 0
  num_negatives = (np.sum(gallery_labels[None, :] != query_labels[:, None], axis=1)
                   - (in_gallery & (gallery_labels[np.maximum(query_gallery_index, 0)]
                                    != query_labels)))
  events = np.array([_event_count(certificate, num_negative_pairs, m) for m in num_negatives])
  eps_pairs = {e: _radii(certificate, alpha=alpha, embedding_dim=embedding_dim, F=F_cert, events=e,
                         query_samples=query_estimate.num_samples,
                         gallery_samples=gallery_estimate.num_samples)
               for e in np.unique(events)}
  best_eps = eps_pairs[min(eps_pairs)]  # Raise only when no query at all can be certified.
  if not _can_certify(certificate, *best_eps, F_cert):
    minimum = minimum_num_samples(certificate, alpha=alpha, embedding_dim=embedding_dim, F=F,
                                  num_negative_pairs=num_negative_pairs)
    raise ValueError(
        f'num_samples (queries {query_estimate.num_samples}, gallery '
        f'{gallery_estimate.num_samples}) is too small: with alpha={alpha}, k={embedding_dim}, '
        f'F={F} the {certificate!r} bound is negative for every input (concentration radii '
        f'{best_eps[0]:.3g}, {best_eps[1]:.3g}). Use num_samples >= {minimum} for both.')
  eps_query = np.array([eps_pairs[e][0] for e in events]) + query_estimate.rounding_allowance
  eps_gallery = np.array([eps_pairs[e][1] for e in events]) + gallery_estimate.rounding_allowance

  outputs = [[] for _ in Certificate._fields]
  for start in range(0, len(query_estimate), block_size):
    block = slice(start, start + block_size)
    result = _certify_block(
        query_select.mean[block], query_estimate.mean[block], query_labels[block],
        query_gallery_index[block], gallery_select.mean, gallery_estimate.mean, gallery_labels,
        eps_query=eps_query[block], eps_gallery=eps_gallery[block], sigma=sigma, F=F_cert,
        num_pairs=num_pairs)
    for output, value in zip(outputs, result):
      output.append(value)
  return Certificate(*(np.concatenate(output) for output in outputs))


def certified_recall_at_1(radius, correct, radii) -> np.ndarray:
  """Certified Recall@1(r) = (1/N) sum_i R_1(x_i) 1[r(x_i) >= r] for each r (seed 000, Sec. 4.3).

  The paper writes r(x_i) > r and Recall@1 = Recall@1(0); with abstentions at -1 the two agree but
  for radii exactly equal to r, where >= is right for the open ball ||delta|| < r(x_i) (Cohen et
  al.'s convention). Abstentions (-1) never count; `correct` is R_1 under g_hat.

  Args:
    radius: (N,) certified radii, -1 = abstain.
    correct: (N,) bool, the 1-NN has the query's label.
    radii: the r at which to evaluate.

  Returns:
    (len(radii),) float64 fractions of the N queries.
  """
  radius = np.asarray(radius, np.float64)
  correct = np.asarray(correct, bool)
  if radius.shape != correct.shape or radius.ndim != 1 or radius.size == 0:
    raise ValueError(f'radius and correct must be equal non-empty (N,) arrays, got '
                     f'{radius.shape} and {correct.shape}.')
  radii = np.asarray(radii, np.float64)
  certified = correct[None, :] & (radius[None, :] >= 0) & (radius[None, :] >= radii[:, None])
  return certified.mean(axis=1)


def float64_distances(a, b) -> np.ndarray:
  """||a_i - b_j||_2 in float64, (Na, k) x (Nb, k) -> (Na, Nb)."""
  squared = (np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2.0 * a @ b.T)
  return np.sqrt(np.maximum(squared, 0.0))


def _certify_block(query_select, query_estimate, query_labels, query_gallery_index,
                   gallery_select, gallery_estimate, gallery_labels, *, eps_query, eps_gallery,
                   sigma, F, num_pairs) -> Certificate:
  """`certify` for one block of queries (docs/smoothing.md Secs. 2, 3, 5)."""
  rows = np.arange(query_estimate.shape[0])
  distance_select = float64_distances(query_select, gallery_select)
  distance_estimate = float64_distances(query_estimate, gallery_estimate)
  excluded = np.zeros_like(distance_estimate, bool)
  in_gallery = query_gallery_index >= 0
  excluded[rows[in_gallery], query_gallery_index[in_gallery]] = True
  positive = (gallery_labels[None, :] == query_labels[:, None]) & ~excluded
  negative = (gallery_labels[None, :] != query_labels[:, None]) & ~excluded

  retrieved = np.argmin(np.where(excluded, np.inf, distance_estimate), axis=1)
  correct = gallery_labels[retrieved] == query_labels
  has_positive = positive.any(axis=1)
  # x+: the nearest positive under the selection samples.
  selected_positive = np.argmin(np.where(positive, distance_select, np.inf), axis=1)
  positive_distance = np.where(has_positive, distance_estimate[rows, selected_positive], np.inf)
  negative_distance = np.where(negative, distance_estimate, np.inf)
  slack = 2.0 * eps_query + 2.0 * eps_gallery  # Lemma 3.8 with x, x+, x* (App. B, Eq. 7-8).
  # d_lower: nearest negative's estimated distance - the selected positive's - slack.
  margin_lower_bound = negative_distance.min(axis=1) - positive_distance - slack
  if num_pairs == 0:
    radius = lipschitz_radius(margin_lower_bound, sigma, F)
  else:
    radius = _bisector_radius(
        query_estimate, distance_select, distance_estimate, negative, positive_distance,
        selected_positive, gallery_estimate, eps_query=eps_query, eps_gallery=eps_gallery,
        sigma=sigma, F=F, num_pairs=num_pairs)
  radius = np.where(has_positive & (radius >= 0), radius, -1.0)
  margin_lower_bound = np.where(has_positive, margin_lower_bound, -np.inf)
  return Certificate(retrieved, margin_lower_bound, radius, correct)


def _bisector_radius(query_estimate, distance_select, distance_estimate, negative,
                     positive_distance, selected_positive, gallery_estimate, *, eps_query,
                     eps_gallery, sigma, F, num_pairs) -> np.ndarray:
  """The 'bisector' radius (docs/smoothing.md Sec. 5) for a block of queries.

  K = the `num_pairs` nearest negatives under the selection samples. For i in K the pair (x+, i)
  holds while ||delta|| < max(paper-style radius for i, bisector radius for i); the negatives
  outside K share the paper-style radius of their nearest one. The radius is the minimum.
  """
  num_queries, gallery_size = distance_estimate.shape
  rows = np.arange(num_queries)[:, None]
  pairs = min(num_pairs, gallery_size)
  # K: the `pairs` nearest negatives under the selection samples (non-negatives sort last).
  ranked = np.where(negative, distance_select, np.inf)
  pair_index = np.argpartition(ranked, pairs - 1, axis=1)[:, :pairs]
  pair_valid = negative[rows, pair_index]
  in_pairs = np.zeros_like(negative)
  in_pairs[rows, pair_index] = pair_valid
  slack = (2.0 * eps_query + 2.0 * eps_gallery)[:, None]

  # Negatives outside K: paper-style (Lemma 3.2 + 3.3) radius with their nearest estimated distance.
  outside = np.where(negative & ~in_pairs, distance_estimate, np.inf).min(axis=1)
  outside_radius = np.full(num_queries, np.inf)  # No negative outside K: no constraint.
  finite = np.isfinite(outside)
  outside_radius[finite] = lipschitz_radius(
      outside[finite] - positive_distance[finite] - slack[finite, 0], sigma, F)

  # Pairs in K, paper-style: margin ||g_hat(x) - g_hat_i|| - ||g_hat(x) - g_hat_+|| - slack.
  pair_margin = distance_estimate[rows, pair_index] - positive_distance[:, None] - slack
  pair_paper_radius = lipschitz_radius(pair_margin, sigma, F)

  # Pairs in K, bisector: <g(x + delta), u> < tau with u = (g_i - g_+) / ||g_i - g_+|| (estimates).
  positive_embedding = gallery_estimate[selected_positive][:, None, :]       # (Q, 1, k)
  negative_embedding = gallery_estimate[pair_index]                           # (Q, P, k)
  difference = negative_embedding - positive_embedding
  separation = np.linalg.norm(difference, axis=-1)                            # ||w_hat||
  safe_separation = np.maximum(separation, 1e-300)
  direction = difference / safe_separation[..., None]
  positive_norm = np.linalg.norm(positive_embedding, axis=-1)
  negative_norm = np.linalg.norm(negative_embedding, axis=-1)
  offset = (negative_norm ** 2 - positive_norm ** 2) / (2.0 * safe_separation)  # b_hat
  # reach >= ||y - g_hat_i|| + ||y - g_hat_+|| for every ||y|| <= F.
  reach = 2.0 * F + negative_norm + positive_norm
  eps_g = eps_gallery[:, None]
  threshold = offset - reach * 2.0 * eps_g / (2.0 * safe_separation)          # tau
  projection = np.einsum('qk,qpk->qp', query_estimate, direction) + eps_query[:, None]
  projection_level = (np.clip(projection, -F, F) / F + 1.0) / 2.0             # q_bar
  threshold_level = (threshold / F + 1.0) / 2.0                               # t_bar
  with np.errstate(divide='ignore', invalid='ignore'):
    gap = special.ndtri(np.minimum(threshold_level, 1.0)) - special.ndtri(projection_level)
  pair_bisector_radius = np.where(
      threshold_level > 1.0, np.inf,
      np.where((separation > 0) & (threshold_level > projection_level), sigma * gap, -1.0))

  pair_radius = np.maximum(pair_paper_radius, pair_bisector_radius)
  pair_radius = np.where(pair_valid, pair_radius, np.inf)
  return np.minimum(outside_radius, pair_radius.min(axis=1))


# ---------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------


def _check_choice(name: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f'{name}={value!r} is not one of {tuple(valid)}.')


def _check_positive(name: str, value) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError) as error:
    raise ValueError(f'{name} must be a positive number, got {value!r}.') from error
  if not value > 0 or not math.isfinite(value):
    raise ValueError(f'{name} must be a finite number > 0, got {value}.')
  return value


def _check_positive_int(name: str, value) -> int:
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f'{name} must be an integer >= 1, got {value!r}.')
  return int(value)


def _check_alpha(alpha) -> float:
  alpha = float(alpha)
  if not 0.0 < alpha < 1.0:
    raise ValueError(f'alpha must be in (0, 1) (the failure probability; the paper uses 0.01), '
                     f'got {alpha}.')
  return alpha


def _check_labels(name: str, labels, size: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (size,):
    raise ValueError(f'{name} must have shape ({size},), got {labels.shape}.')
  return labels


def _check_smoothed_sets(sets: dict) -> tuple[float, float, int]:
  """(F, sigma, k) shared by the four smoothed sets; raises on mismatch or an unbounded h."""
  for name, value in sets.items():
    if not isinstance(value, SmoothedEmbeddings):
      raise ValueError(f'{name} must be SmoothedEmbeddings (from smooth_dataset or '
                       f'smooth_select_and_estimate), got {type(value).__name__}.')
  F_values = {value.F for value in sets.values()}
  sigma_values = {value.sigma for value in sets.values()}
  dims = {value.mean.shape[1] for value in sets.values()}
  if len(F_values) > 1 or len(sigma_values) > 1 or len(dims) > 1:
    raise ValueError(f'The smoothed sets disagree: F {sorted(F_values)}, sigma '
                     f'{sorted(sigma_values)}, embedding dims {sorted(dims)}; smooth queries and '
                     f'gallery with the same sigma, F and encoder.')
  for pair in (('query_select', 'query_estimate'), ('gallery_select', 'gallery_estimate')):
    if len(sets[pair[0]]) != len(sets[pair[1]]):
      raise ValueError(f'{pair[0]} and {pair[1]} have {len(sets[pair[0]])} and '
                       f'{len(sets[pair[1]])} rows; they must smooth the same inputs.')
  (F,) = F_values
  for name, value in sets.items():
    largest = float(np.max(value.max_norm))
    if not largest <= F * (1.0 + NORM_TOLERANCE):
      raise ValueError(
          f'The embedding is not bounded by F={F}: {name} saw ||h(x + z)|| = {largest:.6g}. The '
          f'certificates (Lemmas 3.3, 3.6) need ||h|| <= F everywhere; wrap the encoder with '
          f'bounded_embedding(embed, F) or use an L2-normalised encoder with F=1.')
  return F, sigma_values.pop(), dims.pop()
