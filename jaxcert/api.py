"""One call per question about your own encoder: how robust is its retrieval?

An encoder here is any function `embed(images) -> embeddings` from a batch of images (B, ...) with
pixels in [0, 1] to a batch of embeddings (B, d): a Flax Linen model
(`functools.partial(model.apply, variables)`), a Flax NNX model (`graphdef, state = nnx.split(model)`
and `lambda x: nnx.merge(graphdef, state)(x)`), or a plain JAX function. Queries retrieve their
nearest candidates by Euclidean distance between embeddings; a query is answered correctly at K when
a candidate of its label is among its K nearest (Recall@K). Three functions transform the encoder
and measure that retrieval:

* `certify_retrieval`: interval bound propagation (`jaxcert.bounds`). Recall@K and certified
  CR-Recall@K under the query attack (QA: the query moves in an L-infinity ball of radius eps) and
  under the candidate attack (CA: every candidate moves, each in its own ball), Kakizaki et al. 2023,
  Theorems 1-6 and Eq. 25, with the per-query certificates and rank bounds.
* `certify_smoothed_retrieval`: Gaussian smoothing of the embedding (`jaxcert.smoothing`). The
  certified L2 radius of 1-nearest-neighbour retrieval of RetrievalGuard (Wu et al. 2022,
  Algorithm 1) per query, and certified Recall@1(r).
* `attack_retrieval`: the PGD query and candidate attacks of Kakizaki et al. (Eqs. 2 and 4,
  `jaxcert.attacks`) and ER-Recall@K under each (Eqs. 23-24).

A certificate is a guarantee over the whole ball; an attack only finds some points in it, so for
the same eps every query certified under QA keeps a correct answer in its top K under the query
attack too (tests/test_api.py checks it). Each function validates its inputs and raises ValueError
with what to change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.evaluation import attack as attack_evaluation
from jaxcert import common
from jaxcert import metrics
from jaxcert import retrieval
from jaxcert import smoothing
from jaxcert.bounds import retrieval as bounds_retrieval

DTYPES = ('float64', 'float32')  # what `certify_retrieval` computes the bounds in
DEFAULT_RADII = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)  # L2 radii of certified Recall@1(r)


class CertifiedRetrieval(NamedTuple):
  """What `certify_retrieval` certified at L-infinity radius `eps`.

  Attributes:
    eps: the radius, in pixel units.
    ks: the K values, ascending as given.
    recall: {K: Recall@K} of the clean encoder (Kakizaki et al. Eq. 22).
    cr_recall_qa: {K: CR-Recall@K} under the query attack (Eq. 25 with Theorem 3).
    cr_recall_ca: {K: CR-Recall@K} under the candidate attack (Eq. 25 with Theorem 4).
    certified_qa: (num_queries, len(ks)) bool; [i, j] says that query i keeps a candidate of its
      label in its top ks[j] for every perturbation of the query in the ball.
    certified_ca: (num_queries, len(ks)) bool, the same for every perturbation of the candidates.
    rank_bounds: the `jaxcert.bounds.RankBounds` behind them: for each query's max(ks) nearest
      candidates (`indices`), the lowest and highest rank each can take under QA and under CA.
  """
  eps: float
  ks: tuple[int, ...]
  recall: dict[int, float]
  cr_recall_qa: dict[int, float]
  cr_recall_ca: dict[int, float]
  certified_qa: np.ndarray
  certified_ca: np.ndarray
  rank_bounds: bounds_retrieval.RankBounds


class SmoothedRetrieval(NamedTuple):
  """What `certify_smoothed_retrieval` certified for the smoothed encoder.

  Attributes:
    sigma: the standard deviation of the Gaussian noise, in pixel units.
    num_samples: Monte-Carlo samples per image of the estimate.
    alpha: the failure probability of each query's certificate.
    recall_at_1: Recall@1 of the smoothed encoder (the certificate's own 1-NN).
    certified_recall_at_1: {r: certified Recall@1(r)}, the fraction of queries whose 1-NN has their
      label and is certified for every L2 perturbation of the query of norm < r (RetrievalGuard,
      Sec. 4.3).
    radius: (num_queries,) certified L2 radius of each query; -1 where it abstains.
    correct: (num_queries,) bool, the smoothed 1-NN has the query's label.
    retrieved_index: (num_queries,) the candidate index of that 1-NN.
    margin_lower_bound: (num_queries,) the lower bound of the margin d(x; g) behind the radius
      (RetrievalGuard, Definition 3.1 and Lemma 3.8).
  """
  sigma: float
  num_samples: int
  alpha: float
  recall_at_1: float
  certified_recall_at_1: dict[float, float]
  radius: np.ndarray
  correct: np.ndarray
  retrieved_index: np.ndarray
  margin_lower_bound: np.ndarray


class AttackedRetrieval(NamedTuple):
  """What `attack_retrieval` measured under the PGD ranking attacks at L-infinity radius `eps`.

  Attributes:
    eps: the radius, in pixel units.
    ks: the K values.
    recall: {K: Recall@K} of the clean encoder.
    er_recall_qa: {K: ER-Recall@K} under the query attack (Kakizaki et al. Eq. 23).
    er_recall_ca: {K: ER-Recall@K} under the candidate attack (Eq. 24).
    hits_qa: (num_queries, len(ks)) bool, query i still has a candidate of its label in its top K
      after the query attack.
    hits_ca: the same after the candidate attack.
    adversarial_queries: the perturbed queries of the query attack, shaped like the queries.
  """
  eps: float
  ks: tuple[int, ...]
  recall: dict[int, float]
  er_recall_qa: dict[int, float]
  er_recall_ca: dict[int, float]
  hits_qa: np.ndarray
  hits_ca: np.ndarray
  adversarial_queries: np.ndarray


def _check_images(name: str, images) -> np.ndarray:
  """`images` as a float32 array (N, ...) with N >= 1, finite, in [0, 1]; else ValueError."""
  try:
    images = np.asarray(images, np.float32)
  except (TypeError, ValueError) as error:
    raise ValueError(f'{name} must be an array of images (N, H, W, C) with pixels in [0, 1]; '
                     f'converting it failed: {error}') from None
  if images.ndim < 2 or images.shape[0] == 0:
    raise ValueError(f'{name} must be a non-empty batch of images (N, H, W, C), got shape '
                     f'{images.shape}.')
  if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1:
    raise ValueError(f'{name} must have pixels in [0, 1] (the eps of every attack and certificate '
                     f'is in those units), found values in [{images.min()}, {images.max()}]; divide '
                     'uint8 images by 255 and normalise inside embed.')
  return images


def _check_labels(name: str, labels, num_images: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'{name} must be {num_images} integer class labels, one per image, got '
                     f'shape {labels.shape} and dtype {labels.dtype}.')
  return labels


def _check_embed(embed, images: np.ndarray) -> None:
  """ValueError unless `embed` maps a batch of these images to a batch of float embeddings."""
  if not callable(embed):
    raise ValueError(f'embed must be a function of a batch of images, got {type(embed).__name__}.')
  batch = jax.ShapeDtypeStruct((2,) + images.shape[1:], jnp.float32)
  try:
    output = jax.eval_shape(embed, batch)
  except Exception as error:  # any failure of the user's function is reported with the input shape
    raise ValueError(f'embed failed on a batch of shape {batch.shape} (float32): '
                     f'{type(error).__name__}: {error}') from error
  if (not isinstance(output, jax.ShapeDtypeStruct) or len(output.shape) != 2
      or output.shape[0] != 2 or not jnp.issubdtype(output.dtype, jnp.floating)):
    shape = getattr(output, 'shape', type(output).__name__)
    raise ValueError(f'embed must map a batch of images (B, ...) to one float embedding per image '
                     f'(B, d); it maps {batch.shape} to {shape}. Flatten or pool the output.')


def _check_retrieval(embed, queries, query_labels, candidates, candidate_labels, ks):
  """Validated (queries, query_labels, candidates, candidate_labels, ks)."""
  queries = _check_images('queries', queries)
  candidates = _check_images('candidates', candidates)
  if queries.shape[1:] != candidates.shape[1:]:
    raise ValueError(f'queries and candidates must be images of one shape, got {queries.shape[1:]} '
                     f'and {candidates.shape[1:]}.')
  query_labels = _check_labels('query_labels', query_labels, len(queries))
  candidate_labels = _check_labels('candidate_labels', candidate_labels, len(candidates))
  ks = tuple(ks)
  if not ks or any(int(k) != k or not 1 <= k <= len(candidates) for k in ks):
    raise ValueError(f'ks must be integers in [1, {len(candidates)}] (the number of candidates), '
                     f'got {ks}.')
  _check_embed(embed, queries)
  return queries, query_labels, candidates, candidate_labels, tuple(int(k) for k in ks)


def _check_radius(name: str, value) -> float:
  value = float(value)
  if not (math.isfinite(value) and value >= 0):
    raise ValueError(f'{name} must be a finite radius >= 0 in pixel units (e.g. 0.1), got {value}.')
  return value


def certify_retrieval(embed: Callable, queries, query_labels, candidates, candidate_labels, *,
                      eps: float, ks: Sequence[int] = metrics.DEFAULT_KS, dtype: str = 'float64',
                      batch_size: int = 256,
                      distance_slack: float = bounds_retrieval.DEFAULT_DISTANCE_SLACK
                      ) -> CertifiedRetrieval:
  """Recall@K and certified CR-Recall@K (QA, CA) of `embed` at L-infinity radius `eps`.

  Kakizaki et al. 2023: interval bounds of every embedding over its input box
  (`jaxcert.bounds.retrieval.embedding_bounds`, Eqs. 15-16), distance and rank bounds of each
  query's max(ks) nearest candidates (`rank_bounds`, Theorems 1-2 and 5-6), and the per-query
  certificate of Eq. 25 with alpha = K - rank (`certified_retrieval`, Theorems 3-4). Perturbed
  pixels stay in [0, 1]. Derivations: docs/bounds.md.

  Args:
    embed: `images (B, ...) -> embeddings (B, d)`, a pure JAX function (module docstring).
    queries: (Nq, H, W, C) images in [0, 1].
    query_labels: (Nq,) integer classes.
    candidates: (N, H, W, C) images in [0, 1], the set queries retrieve from.
    candidate_labels: (N,) integer classes.
    eps: L-infinity radius in pixel units, >= 0.
    ks: the K of Recall@K and CR-Recall@K, each in [1, N].
    dtype: 'float64' (default) computes embeddings and bounds in float64 under `jax.enable_x64`
      (float32 weights are promoted exactly), so rounding stays ~1e-16 of the magnitudes, far
      below `distance_slack`; 'float32' is faster and guarded by the slack alone
      (docs/bounds.md §10).
    batch_size: images per interval-bound call.
    distance_slack: every distance bound is widened by this fraction of the magnitudes before
      ranks are compared, against rounding (`jaxcert.bounds.retrieval`).

  Returns:
    A `CertifiedRetrieval`.

  Raises:
    ValueError: malformed images, labels, ks, eps or dtype; `embed` not mapping (B, ...) to
      (B, d); or an encoder that computes in float32 when asked for float64, or that computes
      inside in a narrower floating dtype than `dtype` (`retrieval.check_computes_in`).
  """
  queries, query_labels, candidates, candidate_labels, ks = _check_retrieval(
      embed, queries, query_labels, candidates, candidate_labels, ks)
  eps = _check_radius('eps', eps)
  if dtype not in DTYPES:
    raise ValueError(f'Unknown dtype {dtype!r}; valid: {list(DTYPES)}.')
  # Queries and candidates go through the encoder as one set: one compiled batch shape.
  images = np.concatenate([queries, candidates])
  num_queries = len(queries)
  with bounds_retrieval.certification_precision(dtype):
    embed = bounds_retrieval.cast_floating(retrieval.as_pytree_function(embed), dtype)
    embeddings = retrieval.embed_in_batches(embed, images.astype(dtype), batch_size)
    if embeddings.dtype != np.dtype(dtype):
      raise ValueError(f'embed computes in {embeddings.dtype} on {dtype} images (a fixed dtype in '
                       f'the model?); pass dtype={str(embeddings.dtype)!r}.')
    bounds_retrieval.check_computes_in(embed, images.shape[1:], dtype)
    lower, upper = bounds_retrieval.embedding_bounds(embed, images, eps, batch_size=batch_size,
                                                     dtype=dtype)
    rank_bounds = jax.device_get(bounds_retrieval.rank_bounds(
        embeddings[:num_queries], lower[:num_queries], upper[:num_queries],
        embeddings[num_queries:], lower[num_queries:], upper[num_queries:], max(ks),
        distance_slack=distance_slack))
  certified = bounds_retrieval.certified_retrieval(rank_bounds, query_labels, candidate_labels, ks)
  cr_recall = bounds_retrieval.cr_recall_at_k(certified, ks)
  retrieved_labels = candidate_labels[np.asarray(rank_bounds.indices)]
  return CertifiedRetrieval(
      eps=eps, ks=ks, recall=metrics.recall_at_k(query_labels, retrieved_labels, ks),
      cr_recall_qa=cr_recall['qa'], cr_recall_ca=cr_recall['ca'],
      certified_qa=certified['qa'], certified_ca=certified['ca'], rank_bounds=rank_bounds)


def certify_smoothed_retrieval(embed: Callable, queries, query_labels, candidates,
                               candidate_labels, *, key: jax.Array, sigma: float,
                               num_samples: int, num_select: int | None = None,
                               alpha: float = smoothing.PAPER_ALPHA,
                               certificate: str = 'retrievalguard',
                               radii: Sequence[float] = DEFAULT_RADII, F: float = 1.0,
                               bound_mode: str = 'normalize', chunk_size: int = 256,
                               batch_size: int = 8) -> SmoothedRetrieval:
  """Certified L2 radius of 1-NN retrieval by the Gaussian-smoothed `embed` (RetrievalGuard).

  Wu et al. 2022: the smoothed embedding g(x) = E h(x + z), z ~ N(0, sigma^2 I), of the bounded
  embedding h (`smoothing.bounded_embedding`: ||h|| <= F), estimated from `num_samples` Monte-Carlo
  samples per image for queries and candidates alike, with the nearest positive chosen on
  `num_select` independent samples (`smoothing.smooth_select_and_estimate`, docs/smoothing.md
  Sec. 3); each query's margin lower bound (Lemma 3.8) and radius (Theorem 3.5, Algorithm 1)
  from `smoothing.certify`, which holds with probability >= 1 - alpha per query.

  Args:
    embed: `images (B, ...) -> embeddings (B, d)`, a pure JAX function (module docstring).
    queries, query_labels, candidates, candidate_labels: as `certify_retrieval`.
    key: a `jax.random.key`; queries and candidates draw from independent streams of it.
    sigma: noise standard deviation in pixel units, > 0.
    num_samples: estimation samples per image (the paper: 100,000); too few for any certificate
      raises ValueError with the minimum.
    num_select: selection samples per image (default: max(100, num_samples // 100)).
    alpha: failure probability per query, in (0, 1).
    certificate: 'retrievalguard' (the paper's) or 'bisector' (ours, docs/smoothing.md Sec. 5).
    radii: the r of certified Recall@1(r), each >= 0.
    F: the norm bound of h.
    bound_mode: how h is bounded: 'normalize' (h F / ||h||) or 'clip' (into the F-ball).
    chunk_size: samples per step of the Monte-Carlo scan.
    batch_size: images smoothed per call.

  Returns:
    A `SmoothedRetrieval`.

  Raises:
    ValueError: malformed inputs or settings (the message names the valid ones).
  """
  queries, query_labels, candidates, candidate_labels, _ = _check_retrieval(
      embed, queries, query_labels, candidates, candidate_labels, (1,))
  radii = tuple(_check_radius('each of radii', r) for r in radii)
  if not radii:
    raise ValueError('radii must name at least one L2 radius, e.g. (0.0, 0.1, 0.2).')
  if certificate not in smoothing.CERTIFICATES:
    raise ValueError(f'Unknown certificate {certificate!r}; valid: {list(smoothing.CERTIFICATES)}.')
  num_samples = common.check_positive_int('num_samples', num_samples)
  if num_select is None:
    num_select = max(100, num_samples // 100)
  bounded = smoothing.bounded_embedding(embed, F, bound_mode)
  # Too few samples for any certificate is known from the labels: say so before sampling.
  smoothing.check_num_samples(
      certificate, query_labels, candidate_labels, query_samples=num_samples,
      gallery_samples=num_samples, embedding_dim=jax.eval_shape(bounded, queries[:1]).shape[-1],
      alpha=alpha, F=F)
  query_key, candidate_key = jax.random.split(key)
  settings = dict(sigma=sigma, num_samples=num_samples, num_select=num_select,
                  chunk_size=chunk_size, batch_size=batch_size, F=F)
  query_select, query_estimate = smoothing.smooth_select_and_estimate(
      bounded, query_key, queries, **settings)
  candidate_select, candidate_estimate = smoothing.smooth_select_and_estimate(
      bounded, candidate_key, candidates, **settings)
  result = smoothing.certify(query_select, query_estimate, query_labels, candidate_select,
                             candidate_estimate, candidate_labels, alpha=alpha,
                             certificate=certificate)
  curve = smoothing.certified_recall_at_1(result.radius, result.correct, radii)
  return SmoothedRetrieval(
      sigma=float(sigma), num_samples=int(num_samples), alpha=float(alpha),
      recall_at_1=float(np.mean(result.correct)),
      certified_recall_at_1={r: float(value) for r, value in zip(radii, curve)},
      radius=result.radius, correct=result.correct, retrieved_index=result.retrieved_index,
      margin_lower_bound=result.margin_lower_bound)


def attack_retrieval(embed: Callable, queries, query_labels, candidates, candidate_labels, *,
                     eps: float, key: jax.Array, ks: Sequence[int] = metrics.DEFAULT_KS,
                     num_steps: int = 100, step_size: float | None = None,
                     num_sources: int = 100, batch_size: int = 100) -> AttackedRetrieval:
  """ER-Recall@K of `embed` under the PGD query and candidate attacks (Kakizaki et al. Sec. 5.1.2).

  Query attack (Eq. 2): each query is pushed by PGD in its L-infinity ball towards one candidate
  of another class drawn at random, and retrieves from the clean candidates. Candidate attack
  (Eq. 4): for each query, `num_sources` candidates of other classes drawn at random are each
  pushed towards it. ER-Recall@K (Eqs. 23-24) is Recall@K after the attack
  (`jaxcert.evaluation.attack.evaluate_query_attack` and `evaluate_candidate_attack`). The
  attacks run in float32; an attack's success is an upper bound on robustness, never a certificate.

  Args:
    embed: `images (B, ...) -> embeddings (B, d)`, a pure JAX function (module docstring).
    queries, query_labels, candidates, candidate_labels: as `certify_retrieval`.
    eps: L-infinity radius in pixel units, >= 0.
    key: a `jax.random.key` for the random targets and PGD's random starts.
    ks: the K of Recall@K and ER-Recall@K, each in [1, N].
    num_steps: PGD steps (the paper: 100).
    step_size: PGD step (default eps / 10, the paper's).
    num_sources: candidates attacked per query in the candidate attack (the paper: 100); at most
      the number of candidates of another class than any query's.
    batch_size: images per attack call (at most the number of queries).

  Returns:
    An `AttackedRetrieval`.

  Raises:
    ValueError: malformed inputs or settings.
  """
  queries, query_labels, candidates, candidate_labels, ks = _check_retrieval(
      embed, queries, query_labels, candidates, candidate_labels, ks)
  eps = _check_radius('eps', eps)
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f'num_steps must be a positive integer, got {num_steps!r}.')
  other_class = np.sum(candidate_labels[None, :] != query_labels[:, None], axis=1).min()
  if int(num_sources) != num_sources or not 1 <= num_sources <= other_class:
    raise ValueError(f'num_sources must be an integer in [1, {other_class}] (the fewest candidates '
                     f'of another class than a query\'s), got {num_sources!r}.')
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}.')
  query_key, candidate_key = jax.random.split(key)
  # Fewer queries than a batch: one batch of their number, not a padded one of batch_size.
  settings = dict(eps=eps, ks=ks, step_size=step_size, num_steps=int(num_steps),
                  batch_size=min(int(batch_size), len(queries)))
  query_attack = attack_evaluation.evaluate_query_attack(embed, queries, query_labels, candidates,
                                               candidate_labels, key=query_key, **settings)
  candidate_attack = attack_evaluation.evaluate_candidate_attack(
      embed, queries, query_labels, candidates, candidate_labels, key=candidate_key,
      num_sources=int(num_sources), **settings)
  return AttackedRetrieval(
      eps=eps, ks=ks, recall=query_attack['recall'], er_recall_qa=query_attack['er_recall'],
      er_recall_ca=candidate_attack['er_recall'], hits_qa=query_attack['er_hits'],
      hits_ca=candidate_attack['er_hits'], adversarial_queries=query_attack['adversarial_queries'])
