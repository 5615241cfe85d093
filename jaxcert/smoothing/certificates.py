"""Certified 1-NN retrieval from smoothed embeddings: RetrievalGuard (Wu et al., Algorithm 1) and the
bisector certificate (docs/smoothing.md Sec. 5), with their concentration bounds.

`certify` takes the selection and estimation `SmoothedEmbeddings` of the queries and the gallery
(`jaxcert.smoothing.monte_carlo`) and gives each query its retrieved item, a lower bound on its
margin d(x; g) (Definition 3.1) and a certified L2 radius; `certified_recall_at_1` turns radii into
certified Recall@1(r). The bounds run on the host in float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import special

from jaxcert import common
from jaxcert.smoothing import monte_carlo

CERTIFICATES = ('retrievalguard', 'bisector')

# Paper defaults (RetrievalGuard, Sec. 4.3): n = 100,000 samples, alpha = 0.01, F = 1, k = 128.
PAPER_NUM_SAMPLES = 100_000
PAPER_ALPHA = 0.01
PAPER_SIGMAS = (0.1, 0.25, 0.5, 1.0)

# Relative slack on F: float32 rounding can put an L2-normalised embedding a few ulps above F.
# Certificates accept max_norm <= F (1 + NORM_TOLERANCE) and then use F (1 + NORM_TOLERANCE).
NORM_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------
# Bounds (float64, host).
# ---------------------------------------------------------------------------


def smoothed_lipschitz_bound(distance, sigma: float, F: float = 1.0) -> np.ndarray:
  """Lemma 3.3 (RetrievalGuard, Eq. 1): ||g(x) - g(y)|| <= 2F (Phi(D / 2 sigma) - Phi(-D / 2 sigma)).

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
  common.check_choice('certificate', certificate, CERTIFICATES)
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


def certify(query_select: monte_carlo.SmoothedEmbeddings, query_estimate: monte_carlo.SmoothedEmbeddings, query_labels,
            gallery_select: monte_carlo.SmoothedEmbeddings, gallery_estimate: monte_carlo.SmoothedEmbeddings,
            gallery_labels, *, alpha: float = PAPER_ALPHA, certificate: str = 'retrievalguard',
            num_negative_pairs: int = 16, query_gallery_index=None,
            block_size: int = 64) -> Certificate:
  """Certified 1-NN retrieval for each query against the smoothed gallery (RetrievalGuard, Algorithm 1).

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
  common.check_choice('certificate', certificate, CERTIFICATES)
  alpha = _check_alpha(alpha)
  num_negative_pairs = common.check_positive_int('num_negative_pairs', num_negative_pairs)
  block_size = common.check_positive_int('block_size', block_size)
  sets = {'query_select': query_select, 'query_estimate': query_estimate,
          'gallery_select': gallery_select, 'gallery_estimate': gallery_estimate}
  F, sigma, embedding_dim = _check_smoothed_sets(sets)
  query_labels = _check_labels('query_labels', query_labels, len(query_estimate))
  gallery_labels = _check_labels('gallery_labels', gallery_labels, len(gallery_estimate))
  query_gallery_index = _check_query_gallery_index(query_gallery_index, len(query_estimate),
                                                   len(gallery_estimate))
  F_cert = F * (1.0 + NORM_TOLERANCE)
  num_negatives = _num_negatives(query_labels, gallery_labels, query_gallery_index)
  eps_query, eps_gallery = _concentration_radii(
      certificate, num_negatives, query_estimate, gallery_estimate, alpha=alpha,
      embedding_dim=embedding_dim, F=F, num_negative_pairs=num_negative_pairs)

  num_pairs = num_negative_pairs if certificate == 'bisector' else 0
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


def _check_query_gallery_index(query_gallery_index, num_queries: int, num_gallery: int
                               ) -> np.ndarray:
  """`query_gallery_index` as (Nq,) int64 gallery indices (-1: not in the gallery; None: all -1)."""
  if query_gallery_index is None:
    return np.full(num_queries, -1, np.int64)
  query_gallery_index = np.asarray(query_gallery_index, np.int64)
  if query_gallery_index.shape != (num_queries,) or np.any(query_gallery_index >= num_gallery):
    raise ValueError(f'query_gallery_index must be ({num_queries},) gallery indices or -1, '
                     f'got shape {query_gallery_index.shape}.')
  return query_gallery_index


def _num_negatives(query_labels, gallery_labels, query_gallery_index) -> np.ndarray:
  """(Nq,) the gallery items of another label than each query's, its own item left out."""
  in_gallery = query_gallery_index >= 0
  return (np.sum(gallery_labels[None, :] != query_labels[:, None], axis=1)
          - (in_gallery & (gallery_labels[np.maximum(query_gallery_index, 0)] != query_labels)))


def check_num_samples(certificate: str, query_labels, gallery_labels, *, query_samples: int,
                      gallery_samples: int, embedding_dim: int, alpha: float = PAPER_ALPHA,
                      F: float = 1.0, num_negative_pairs: int = 16,
                      query_gallery_index=None) -> None:
  """Raises the error `certify` would raise for too few samples, before any sample is drawn.

  `certify` can give a query a radius >= 0 only if its concentration radii (Lemma 3.6 for
  'retrievalguard', docs/smoothing.md Sec. 5.3 for 'bisector', at `query_samples` and
  `gallery_samples` estimation samples) leave room for a margin (`_can_certify`); they depend on
  the labels alone (the negatives of each query), so the check costs nothing next to smoothing.

  Raises:
    ValueError: bad names, labels or alpha, or no query at all could be certified with these
      sample counts (the message gives the minimum n).
  """
  common.check_choice('certificate', certificate, CERTIFICATES)
  query_labels = _check_labels('query_labels', query_labels, np.size(query_labels))
  gallery_labels = _check_labels('gallery_labels', gallery_labels, np.size(gallery_labels))
  query_gallery_index = _check_query_gallery_index(query_gallery_index, len(query_labels),
                                                   len(gallery_labels))
  _union_bound_radii(certificate, _num_negatives(query_labels, gallery_labels, query_gallery_index),
                     alpha=_check_alpha(alpha), embedding_dim=embedding_dim, F=F,
                     num_negative_pairs=common.check_positive_int('num_negative_pairs',
                                                                  num_negative_pairs),
                     query_samples=query_samples, gallery_samples=gallery_samples)


def _union_bound_radii(certificate: str, num_negatives, *, alpha: float, embedding_dim: int,
                       F: float, num_negative_pairs: int, query_samples: int,
                       gallery_samples: int) -> tuple[np.ndarray, dict]:
  """(events, eps_pairs): each query's union-bound event count and, per count, the concentration
  radii (eps_query, eps_gallery) of `_radii` at F (1 + NORM_TOLERANCE).

  Raises:
    ValueError: no query at all can be certified with these sample counts (the message gives
      the minimum n).
  """
  F_cert = F * (1.0 + NORM_TOLERANCE)
  events = np.array([_event_count(certificate, num_negative_pairs, m) for m in num_negatives])
  eps_pairs = {e: _radii(certificate, alpha=alpha, embedding_dim=embedding_dim, F=F_cert, events=e,
                         query_samples=query_samples, gallery_samples=gallery_samples)
               for e in np.unique(events)}
  best_eps = eps_pairs[min(eps_pairs)]  # Raise only when no query at all can be certified.
  if not _can_certify(certificate, *best_eps, F_cert):
    minimum = minimum_num_samples(certificate, alpha=alpha, embedding_dim=embedding_dim, F=F,
                                  num_negative_pairs=num_negative_pairs)
    raise ValueError(
        f'num_samples (queries {query_samples}, gallery {gallery_samples}) is too small: with '
        f'alpha={alpha}, k={embedding_dim}, F={F} the {certificate!r} bound is negative for every '
        f'input (concentration radii {best_eps[0]:.3g}, {best_eps[1]:.3g}). Use num_samples >= '
        f'{minimum} for both.')
  return events, eps_pairs


def _concentration_radii(certificate: str, num_negatives, query_estimate: monte_carlo.SmoothedEmbeddings,
                         gallery_estimate: monte_carlo.SmoothedEmbeddings, *, alpha: float, embedding_dim: int,
                         F: float, num_negative_pairs: int) -> tuple[np.ndarray, np.ndarray]:
  """(Nq,) eps_query and eps_gallery of each query: the concentration radii of its union bound
  (`_union_bound_radii`) plus the float32 rounding allowance of the estimates.

  Raises:
    ValueError: no query at all can be certified with these sample counts (the message gives
      the minimum n).
  """
  events, eps_pairs = _union_bound_radii(
      certificate, num_negatives, alpha=alpha, embedding_dim=embedding_dim, F=F,
      num_negative_pairs=num_negative_pairs, query_samples=query_estimate.num_samples,
      gallery_samples=gallery_estimate.num_samples)
  return (np.array([eps_pairs[e][0] for e in events]) + query_estimate.rounding_allowance,
          np.array([eps_pairs[e][1] for e in events]) + gallery_estimate.rounding_allowance)


def certified_recall_at_1(radius, correct, radii) -> np.ndarray:
  """Certified Recall@1(r) = (1/N) sum_i R_1(x_i) 1[r(x_i) >= r] for each r (RetrievalGuard, Sec. 4.3).

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
    if not isinstance(value, monte_carlo.SmoothedEmbeddings):
      raise ValueError(f'{name} must be monte_carlo.SmoothedEmbeddings (from smooth_dataset or '
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
