"""Deep-metric-learning losses over a batch of embeddings (B, k) and labels (B,).

Every loss here is a pure function that builds all valid in-batch tuples with label masks (static
shapes, no Python loop over the batch) and returns a scalar:

* `triplet_loss`: the triplet hinge max(0, d(a, p) - d(a, n) + m) (Schroff et al. 2015, "FaceNet";
  Kakizaki et al. T(a, p, n) in Eq. 20) with 'batch_all', 'batch_all_mean', 'batch_hard' (Hermans et al.
  2017, "In defense of the triplet loss") or 'semi_hard' (Schroff et al. 2015, Sec. 3.2) mining;
* `triplet_loss_explicit`: the same hinge for given (anchor, positive, negative) triplets;
* `contrastive_loss`: Hadsell et al. 2006, with the positive margin of Musgrave et al. 2020;
* `margin_loss`: Wu et al. 2017, "Sampling matters in deep embedding learning", with learnable
  beta and distance-weighted negative sampling (`distance_weighted_negatives`), the base loss of
  RetrievalGuard (Sec. 4.1).

Distances d are Euclidean (not squared). Their square root is taken safely (`common.safe_sqrt`):
d = 0 where the squared distance is 0, with gradient 0 there, so duplicate embeddings give finite gradients.
`get_loss(name)` looks a loss up by its name in LOSS_NAMES.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxcert import common

MINING_STRATEGIES = ('batch_all', 'batch_all_mean', 'batch_hard', 'semi_hard')


def _pairwise_distances(embeddings: jax.Array) -> jax.Array:
  """(B, B) Euclidean distances ||e_i - e_j||, exactly 0 on the diagonal.

  Uses ||e_i||^2 + ||e_j||^2 - 2 e_i.e_j with a full-precision matmul (TF32 would cost three
  digits), clipped at 0 before the safe square root. The rows are first shifted by the first one
  (constant under autodiff), so rounding follows the batch's spread, not its offset from the
  origin. (`retrieval.pairwise_sq_distances` sums squared differences instead: exact to rounding
  of each distance; the matmul form here ran 3.6x faster at 1024 x 1024 x 128 on CPU.)
  """
  embeddings = embeddings - lax.stop_gradient(embeddings[0])
  squared_norms = jnp.sum(jnp.square(embeddings), axis=-1)
  gram = jnp.matmul(embeddings, embeddings.T, precision=lax.Precision.HIGHEST)
  squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram
  squared = jnp.where(jnp.eye(embeddings.shape[0], dtype=bool), 0.0, jnp.maximum(squared, 0.0))
  return common.safe_sqrt(squared)


def _label_masks(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(positive_mask, negative_mask), both (B, B) bool: same label and i != j / different label."""
  same = labels[:, None] == labels[None, :]
  not_self = ~jnp.eye(labels.shape[0], dtype=bool)
  return same & not_self, ~same


def _check_batch(embeddings: jax.Array, labels: jax.Array) -> None:
  if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
    raise ValueError(f'Expected embeddings of shape (B, k) and labels of shape (B,), got '
                     f'{embeddings.shape} and {labels.shape}.')


def _mean_over_active(terms: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum of the masked terms over the number of masked terms that are > 0 (0 if there are none)."""
  terms = jnp.where(mask, terms, 0.0)
  num_active = jnp.sum((terms > 0).astype(terms.dtype))
  return jnp.sum(terms) / jnp.maximum(num_active, 1.0)


def triplet_loss_explicit(anchor: jax.Array, positive: jax.Array, negative: jax.Array, *,
                          margin: float) -> jax.Array:
  """Per-triplet hinge T(a, p, n) = max(0, ||a - p|| - ||a - n|| + margin) (Kakizaki et al., Eq. 20).

  Args:
    anchor, positive, negative: (B, k) embeddings of B triplets.
    margin: m (Kakizaki et al. Sec. 5.1.4 uses 1.0).

  Returns:
    (B,) hinge values.
  """
  positive_distance = common.safe_sqrt(jnp.sum(jnp.square(anchor - positive), axis=-1))
  negative_distance = common.safe_sqrt(jnp.sum(jnp.square(anchor - negative), axis=-1))
  return jax.nn.relu(positive_distance - negative_distance + margin)


def triplet_loss(embeddings: jax.Array, labels: jax.Array, *, margin: float = 1.0,
                 mining: str = 'batch_all') -> jax.Array:
  """Triplet loss over the valid triplets of a batch (Schroff et al. 2015).

  A triplet (a, p, n) is valid when a != p, y_a = y_p and y_n != y_a; its hinge is
  l(a, p, n) = max(0, d(a, p) - d(a, n) + margin). Mining picks which hinges are averaged:

  * 'batch_all': every valid triplet; mean over the active ones (l > 0), 0 if none is active
    (Hermans et al. 2017, Sec. 2, the batch-all loss averaged over non-zero terms, BA_{!=0}).
  * 'batch_all_mean': every valid triplet; mean over all of them (Hermans et al. 2017, BA). Its
    scale does not depend on how many triplets are active, so a sum of it and another per-triplet
    term keeps a fixed balance (Kakizaki et al. Eq. 20's TBT objective, `objectives.certified`).
  * 'batch_hard': per anchor, the farthest positive and the closest negative,
    max(0, max_p d(a, p) - min_n d(a, n) + margin); mean over anchors with at least one positive
    and one negative (Hermans et al. 2017, Sec. 2, batch hard with the hinge).
  * 'semi_hard': per valid (a, p), the closest negative farther than p,
    n* = argmin {d(a, n) : d(a, n) > d(a, p)} (Schroff et al. 2015, Sec. 3.2); if every
    negative is at most d(a, p) away, the farthest negative (as tfa.losses.TripletSemiHardLoss);
    mean of l(a, p, n*) over valid (a, p) pairs whose anchor has a negative.

  Args:
    embeddings: (B, k).
    labels: (B,) integer class labels.
    margin: m.
    mining: one of MINING_STRATEGIES.

  Returns:
    Scalar loss.
  """
  if mining not in MINING_STRATEGIES:
    raise ValueError(f'Unknown triplet mining {mining!r}; valid strategies: {list(MINING_STRATEGIES)}.')
  _check_batch(embeddings, labels)
  distances = _pairwise_distances(embeddings)
  positive_mask, negative_mask = _label_masks(labels)

  if mining in ('batch_all', 'batch_all_mean'):
    # hinge[a, p, n] = d(a, p) - d(a, n) + m
    hinge = jax.nn.relu(distances[:, :, None] - distances[:, None, :] + margin)
    valid = positive_mask[:, :, None] & negative_mask[:, None, :]
    if mining == 'batch_all':
      return _mean_over_active(hinge, valid)
    return jnp.sum(jnp.where(valid, hinge, 0.0)) / jnp.maximum(jnp.sum(valid), 1)

  has_negative = jnp.any(negative_mask, axis=1)
  if mining == 'batch_hard':
    hardest_positive = jnp.max(jnp.where(positive_mask, distances, 0.0), axis=1)
    hardest_negative = jnp.min(jnp.where(negative_mask, distances, jnp.inf), axis=1)
    hardest_negative = jnp.where(has_negative, hardest_negative, 0.0)
    valid_anchor = jnp.any(positive_mask, axis=1) & has_negative
    hinge = jax.nn.relu(hardest_positive - hardest_negative + margin)
    return jnp.sum(jnp.where(valid_anchor, hinge, 0.0)) / jnp.maximum(jnp.sum(valid_anchor), 1)

  # semi_hard: farther[a, p, n] says whether negative n is farther from a than p is.
  positive_distance = distances[:, :, None]
  negative_distance = distances[:, None, :]
  farther = negative_mask[:, None, :] & (negative_distance > positive_distance)
  closest_farther = jnp.min(jnp.where(farther, negative_distance, jnp.inf), axis=2)
  farthest_negative = jnp.max(jnp.where(negative_mask, distances, 0.0), axis=1)
  chosen_negative = jnp.where(jnp.any(farther, axis=2), closest_farther, farthest_negative[:, None])
  valid_pair = positive_mask & has_negative[:, None]
  hinge = jax.nn.relu(distances - jnp.where(valid_pair, chosen_negative, 0.0) + margin)
  return jnp.sum(jnp.where(valid_pair, hinge, 0.0)) / jnp.maximum(jnp.sum(valid_pair), 1)


def contrastive_loss(embeddings: jax.Array, labels: jax.Array, *, pos_margin: float = 0.0,
                     neg_margin: float = 1.0) -> jax.Array:
  """Contrastive loss (Hadsell, Chopra and LeCun 2006), with non-squared hinges.

  L = mean_{active positive pairs} max(0, d(i, j) - pos_margin)
    + mean_{active negative pairs} max(0, neg_margin - d(i, j)),
  positive pairs i != j with y_i = y_j, negative pairs y_i != y_j, each mean taken over the pairs
  with a nonzero hinge (0 if none), as pytorch-metric-learning's ContrastiveLoss with its default
  AvgNonZeroReducer (Musgrave et al. 2020, "A metric learning reality check").

  Args:
    embeddings: (B, k).
    labels: (B,) integer class labels.
    pos_margin: positives closer than this are not pulled further.
    neg_margin: negatives farther than this are not pushed further.

  Returns:
    Scalar loss.
  """
  _check_batch(embeddings, labels)
  distances = _pairwise_distances(embeddings)
  positive_mask, negative_mask = _label_masks(labels)
  positive_term = _mean_over_active(jax.nn.relu(distances - pos_margin), positive_mask)
  negative_term = _mean_over_active(jax.nn.relu(neg_margin - distances), negative_mask)
  return positive_term + negative_term


def distance_weighted_log_weights(distances: jax.Array, embedding_dim: int, *,
                                  cutoff: float = 0.5) -> jax.Array:
  """log q(d)^{-1} up to a constant, for distances on the unit sphere in R^n, n = embedding_dim.

  Pairwise distances of points uniform on the sphere S^{n-1} have density
  q(d) ∝ d^{n-2} (1 - d^2 / 4)^{(n-3)/2} (Wu et al. 2017, Sec. 4), so
  log q(d)^{-1} = (2 - n) log d - ((n - 3) / 2) log(1 - d^2 / 4). Distances are first clipped below
  at `cutoff`, which caps the weight of very close pairs (the min(lambda, q^{-1}) of Wu et al.),
  and 1 - d^2/4 is kept >= 1e-6 so distances near or beyond 2 stay finite.
  """
  clipped = jnp.maximum(distances, cutoff)
  one_minus_quarter_square = jnp.maximum(1.0 - 0.25 * jnp.square(clipped), 1e-6)
  return ((2.0 - embedding_dim) * jnp.log(clipped)
          - 0.5 * (embedding_dim - 3.0) * jnp.log(one_minus_quarter_square))


def distance_weighted_negatives(embeddings: jax.Array, labels: jax.Array, key: jax.Array, *,
                                cutoff: float = 0.5,
                                nonzero_loss_cutoff: float = 1.4) -> tuple[jax.Array, jax.Array]:
  """Distance-weighted negative sampling (Wu et al. 2017, Sec. 4).

  For every (anchor i, positive slot j) draws a negative n with label != y_i and probability
  ∝ q(d(i, n))^{-1} (`distance_weighted_log_weights`, with the distance clipped at `cutoff`) among
  the negatives closer than `nonzero_loss_cutoff` (farther ones give zero margin loss); an anchor
  with no negative that close draws uniformly among all its negatives. One draw per (i, j) gives one
  triplet per positive pair, as in the authors' code (k - 1 negatives per anchor). Sampling is done
  with Gumbel-max on log weights (`jax.random.categorical`), so weights never under- or overflow,
  and through `stop_gradient`: the choice is not differentiated. Embeddings should be L2-normalised.
  The DML framework RetrievalGuard builds on (Roth et al. 2020) samples without the upper cutoff:
  `nonzero_loss_cutoff=jnp.inf` reproduces that.

  Args:
    embeddings: (B, k).
    labels: (B,) integer class labels.
    key: a `jax.random.key`.
    cutoff: distances are clipped below at this value in the weights.
    nonzero_loss_cutoff: only negatives closer than this are sampled when there are any.

  Returns:
    (negatives, has_negative): (B, B) int32 indices, negatives[i, j] the negative drawn for the
    pair (i, j); (B,) bool, whether anchor i has any negative (if not, its row is meaningless).
  """
  _check_batch(embeddings, labels)
  distances = lax.stop_gradient(_pairwise_distances(embeddings))
  _, negative_mask = _label_masks(labels)
  log_weights = distance_weighted_log_weights(distances, embeddings.shape[1], cutoff=cutoff)
  near_negative = negative_mask & (distances < nonzero_loss_cutoff)
  has_near_negative = jnp.any(near_negative, axis=1, keepdims=True)
  logits = jnp.where(has_near_negative,
                     jnp.where(near_negative, log_weights, -jnp.inf),
                     jnp.where(negative_mask, 0.0, -jnp.inf))
  has_negative = jnp.any(negative_mask, axis=1)
  logits = jnp.where(has_negative[:, None], logits, 0.0)  # Rows without negatives: any finite row.
  batch_size = labels.shape[0]
  negatives = jax.random.categorical(key, logits[:, None, :], axis=-1,
                                     shape=(batch_size, batch_size))
  return negatives.astype(jnp.int32), has_negative


def margin_loss(embeddings: jax.Array, labels: jax.Array, beta: jax.Array, key: jax.Array, *,
                margin: float = 0.2, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                nu: float = 0.0) -> jax.Array:
  """Margin loss with learnable beta (Wu et al. 2017, Sec. 5; RetrievalGuard, Sec. 4.1).

  L = [sum_{(a, p, n)} (d(a, p) - beta_a + gamma)_+ + (beta_a - d(a, n) + gamma)_+ + nu beta_a]
      / #{nonzero hinge terms},
  gamma = `margin` (RetrievalGuard: 0.2), over one triplet per valid positive pair (a, p) with the
  negative n drawn by `distance_weighted_negatives`. beta is a scalar, or one value per class with
  beta_a = beta[y_a] (class-specific beta of Wu et al.); RetrievalGuard initialises it at 1.2 and trains it
  with learning rate 5e-4. nu weights the beta regulariser of Wu et al. (0 by default). The
  normalisation by the number of nonzero hinges follows the authors' code.

  Args:
    embeddings: (B, k), L2-normalised.
    labels: (B,) integer class labels (indices into beta when it is per class).
    beta: scalar, or (num_classes,) per-class boundaries.
    key: a `jax.random.key` for the negative sampling.
    margin: gamma, the margin around the boundary beta.
    cutoff: distance clip in the sampling weights.
    nonzero_loss_cutoff: negatives at least this far are not sampled (when closer ones exist).
    nu: weight of the beta regulariser nu * beta.

  Returns:
    Scalar loss.
  """
  _check_batch(embeddings, labels)
  beta = jnp.asarray(beta)
  if beta.ndim > 1:
    raise ValueError(f'beta must be a scalar or one value per class, got shape {beta.shape}.')
  negatives, has_negative = distance_weighted_negatives(
      embeddings, labels, key, cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff)
  distances = _pairwise_distances(embeddings)
  positive_mask, _ = _label_masks(labels)
  triplet_mask = positive_mask & has_negative[:, None]
  negative_distance = jnp.take_along_axis(distances, negatives, axis=1)
  anchor_beta = (beta[labels] if beta.ndim == 1 else jnp.broadcast_to(beta, labels.shape))[:, None]
  positive_term = jnp.where(triplet_mask, jax.nn.relu(distances - anchor_beta + margin), 0.0)
  negative_term = jnp.where(triplet_mask, jax.nn.relu(anchor_beta - negative_distance + margin), 0.0)
  num_active = jnp.sum(positive_term > 0) + jnp.sum(negative_term > 0)
  regulariser = nu * jnp.sum(jnp.where(triplet_mask, anchor_beta, 0.0))
  return (jnp.sum(positive_term + negative_term) + regulariser) / jnp.maximum(num_active, 1)


_LOSSES: dict[str, Callable[..., jax.Array]] = {
    'triplet': triplet_loss,
    'contrastive': contrastive_loss,
    'margin': margin_loss,
}
LOSS_NAMES: tuple[str, ...] = tuple(_LOSSES)


def get_loss(name: str) -> Callable[..., jax.Array]:
  """The loss `name` in LOSS_NAMES: 'triplet' (`triplet_loss`), 'contrastive', 'margin'.

  'triplet' and 'contrastive' are called as `fn(embeddings, labels, **hyper_parameters)`,
  'margin' as `fn(embeddings, labels, beta, key, **hyper_parameters)`.
  """
  if name not in _LOSSES:
    raise ValueError(f'Unknown loss {name!r}; valid losses: {list(LOSS_NAMES)}.')
  return _LOSSES[name]
