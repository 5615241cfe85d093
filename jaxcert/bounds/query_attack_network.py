"""The query attack's linear specification bounded through the encoder (issue 22, part 2).

Under the query attack the candidates are fixed, and whether candidate c stays farther from the
attacked query than c^ is the sign of

    ||f(x) - c||^2 - ||f(x) - c^||^2 = 2 s . (f(x) - m) + s . ((m - c) + (m - c^)),  s = c^ - c,

for x in the query's input box, m any fixed point (docs/bounds.md §13). `rank_bounds`'s 'linear'
certificate bounds `s . f(x)` over the query's *embedding box*, which forgets that the
coordinates of f(x) move together; `linear_spec_bounds` bounds the same specification row
through the encoder (CROWN-family backward pass from the row `s`, docs/linear_bounds.md §6),
which on a standard (not certifiably trained) encoder is far tighter than any box.

One row per (query, candidate) pair is too many for the whole grid, so it is a cascade:
`tighten_query_attack_upper` takes, for each query, one target c^ (the nearest same-class
candidate of its top k: the one CR-Recall@K certifies first, `first_same_class_column`), and
the `max_rows` candidates the box test leaves undecided that come closest to being decided
(largest box margin); their rows are bounded through the encoder, and every pair either test
decides "farther" counts. The target's QA rank upper bound `N - #farther` is replaced where it
is smaller; every other bound stays the box certificate's. Both tests are sound, so their union
is (tested against PGD on the query: tests/test_query_attack_network.py).

Rounding (float64, as the linear methods certify): the box test is `rank_bounds`'s; the
network test widens its bound of `s . (m - f(x))` by `distance_slack * ||s|| * ||B||` (as if f(x)
moved by the distance slack times the box magnitude ||B||, the slack's meaning for the boxes,
docs/bounds.md §10) and compares through `_linear_order_from_sums` with the magnitudes of every
term it sums (`s . m` and the bound included) in its rounding guard.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert import retrieval
from jaxcert.bounds import linear
from jaxcert.bounds import retrieval as box_retrieval
from jaxcert.bounds.interval import input_box

# Undecided candidates per query whose specification rows are bounded through the encoder.
DEFAULT_MAX_ROWS = 64


def first_same_class_column(indices, query_labels, candidate_labels) -> np.ndarray:
  """Per query, the column (clean rank - 1) of its nearest same-class candidate in `indices`
  (a `RankBounds.indices`, (Nq, k)), or -1 where none of its k nearest has its class."""
  indices = np.asarray(indices)
  same = np.asarray(candidate_labels)[indices] == np.asarray(query_labels)[:, None]
  return np.where(same.any(axis=1), np.argmax(same, axis=1), -1)


@functools.partial(jax.jit, static_argnames=('rows',))
def _undecided_rows(query_lower, query_upper, candidate_emb, target_index, distance_slack, *,
                    rows: int) -> dict:
  """For a block of queries (B) and their targets: the box test against every candidate (N), and
  the `rows` undecided candidates with the largest box margin (closest to decided).

  Returns (B,) counts 'box_farther' and 'undecided', and for the chosen (B, rows): their
  candidate indices 'chosen', 'valid'
  (undecided, not padding), 'spec' s = c^ - c (zero where not valid), and the sums of the
  linear specification (`_linear_order_from_sums`) that `_network_farther` reuses.
  """
  centre, radius = box_retrieval._enclosing_centre_radius(query_lower, query_upper)  # pylint: disable=protected-access
  target_emb = candidate_emb[target_index]
  spec = target_emb[:, None] - candidate_emb[None]  # (B, N, d)
  candidate_offset = centre[:, None] - candidate_emb[None]
  target_offset = centre - target_emb
  candidate_sq = jnp.sum(jnp.square(candidate_offset), axis=-1)
  target_sq = jnp.sum(jnp.square(target_offset), axis=-1)[:, None]
  cross_radius = jnp.sum(radius[:, None] * jnp.abs(spec), axis=-1)
  candidate_far = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(candidate_offset) + radius[:, None]),
                                   axis=-1))
  target_far = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(target_offset) + radius), axis=-1))[:, None]
  magnitude = box_retrieval._box_magnitude(query_lower, query_upper)[:, None]  # pylint: disable=protected-access
  width = distance_slack * (2 * magnitude + jnp.linalg.norm(candidate_emb, axis=-1)[None]
                            + jnp.linalg.norm(target_emb, axis=-1)[:, None])
  rounding = box_retrieval._rounding_factor(centre.dtype, centre.shape[-1])  # pylint: disable=protected-access
  farther, _ = box_retrieval._linear_order_from_sums(  # pylint: disable=protected-access
      candidate_sq, target_sq, cross_radius, candidate_far, target_far, width, rounding)
  undecided = ~farther & (jnp.arange(candidate_emb.shape[0])[None] != target_index[:, None])
  margin = candidate_sq - target_sq - 2 * cross_radius
  chosen = jnp.argsort(jnp.where(undecided, -margin, jnp.inf), axis=1)[:, :rows]
  take = lambda values: jnp.take_along_axis(values, chosen, axis=1)
  valid = take(undecided)
  return {'box_farther': jnp.sum(farther, axis=1), 'undecided': jnp.sum(undecided, axis=1),
          'chosen': chosen, 'valid': valid, 'spec': jnp.take_along_axis(spec, chosen[..., None], axis=1)
          * valid[..., None], 'centre': centre, 'magnitude': magnitude,
          'candidate_sq': take(candidate_sq), 'target_sq': target_sq,
          'cross_radius': take(cross_radius), 'candidate_far': take(candidate_far),
          'target_far': target_far, 'width': take(width)}


def _spec_lower_of_batch(method, embed, eps, packed, *, image_shape, rows):
  """Lower bounds of `s . f(x)` over each image's eps-box for its `rows` rows: images and rows
  come packed as one (B, H*W*C + rows*d) array (so `embed_in_batches` pads and shards both)."""
  pixels = int(np.prod(image_shape))
  images = packed[:, :pixels].reshape((-1, *image_shape))
  spec = packed[:, pixels:].reshape((packed.shape[0], rows, -1))
  lower, _ = linear.linear_spec_bounds(embed, method)(*input_box(images, eps), spec)
  return lower


@functools.cache
def _spec_batch_function(method: str, image_shape: tuple[int, ...], rows: int) -> Callable:
  """One function object per (method, shape), so jit's cache (keyed by it) is reused."""
  return functools.partial(_spec_lower_of_batch, method, image_shape=image_shape, rows=rows)


def tighten_query_attack_upper(rank_bounds: box_retrieval.RankBounds, embed: Callable,
                               query_images, eps: float, query_lower, query_upper,
                               candidate_emb, target_columns, *, method: str = 'crown',
                               max_rows: int = DEFAULT_MAX_ROWS, batch_size: int = 50,
                               distance_slack: float = box_retrieval.DEFAULT_DISTANCE_SLACK
                               ) -> tuple[box_retrieval.RankBounds, dict]:
  """`rank_bounds` with each query's target QA rank upper bound tightened through the encoder.

  Args:
    rank_bounds: `rank_bounds(..., qa_bound='linear')` of the same boxes and candidates.
    embed: the encoder, `(batch, H, W, C) -> (batch, d)`, in the dtype of the boxes (float64:
      the linear bounds round to nearest).
    query_images: (Nq, H, W, C) in [0, 1].
    eps: the L-inf radius of the boxes.
    query_lower, query_upper: (Nq, d) the query embedding boxes the rank bounds used.
    candidate_emb: (N, d) clean candidate embeddings.
    target_columns: (Nq,) the column of `rank_bounds` to tighten per query, -1 for none
      (`first_same_class_column`).
    method: the relaxation of `linear_spec_bounds`, one of `jaxcert.bounds.linear.METHODS`.
    max_rows: undecided candidates per query bounded through the encoder.
    batch_size: queries per `linear_spec_bounds` call.
    distance_slack: as in `rank_bounds`.

  Returns:
    (the tightened RankBounds, {'undecided': (Nq,) candidates the box test leaves undecided
    against the target, 'network_farther': (Nq,) of them the network test decides farther,
    'network_farther_candidates': (Nq, min(max_rows, N - 1)) their indices, -1 elsewhere}).

  Raises:
    ValueError: an unknown method, max_rows < 1, or target_columns of the wrong shape or range.
  """
  linear._check_method(method)  # pylint: disable=protected-access
  if int(max_rows) != max_rows or max_rows < 1:
    raise ValueError(f'max_rows must be a positive integer, got {max_rows!r}.')
  indices = np.asarray(rank_bounds.indices)
  target_columns = np.asarray(target_columns)
  num_queries, num_candidates = indices.shape[0], candidate_emb.shape[0]
  if target_columns.shape != (num_queries,) or np.any(target_columns >= indices.shape[1]):
    raise ValueError(f'target_columns must have shape ({num_queries},) with columns below '
                     f'{indices.shape[1]} (-1 for none), got {target_columns}.')
  has_target = target_columns >= 0
  columns = np.maximum(target_columns, 0)
  targets = indices[np.arange(num_queries), columns]
  rows = min(int(max_rows), num_candidates - 1)
  if rows == 0:  # A single candidate: no pair to compare.
    return rank_bounds, {'undecided': np.zeros(num_queries, np.int32),
                         'network_farther': np.zeros(num_queries, np.int32),
                         'network_farther_candidates': np.zeros((num_queries, 0), np.int32)}
  candidate_emb = jnp.asarray(candidate_emb)
  slack = jnp.asarray(distance_slack, candidate_emb.dtype)
  blocks = [_undecided_rows(jnp.asarray(query_lower[start:start + batch_size]),
                            jnp.asarray(query_upper[start:start + batch_size]), candidate_emb,
                            jnp.asarray(targets[start:start + batch_size]), slack, rows=rows)
            for start in range(0, num_queries, batch_size)]
  chosen = {key: jnp.concatenate([block[key] for block in blocks]) for key in blocks[0]}
  image_shape = tuple(np.shape(query_images)[1:])
  packed = np.concatenate([np.asarray(query_images, candidate_emb.dtype).reshape(num_queries, -1),
                           np.asarray(chosen['spec']).reshape(num_queries, -1)], axis=1)
  spec_batch = jax.tree_util.Partial(_spec_batch_function(method, image_shape, rows),
                                     retrieval.as_pytree_function(embed),
                                     jnp.asarray(eps, candidate_emb.dtype))
  spec_lower = jnp.asarray(retrieval.embed_in_batches(spec_batch, packed, batch_size))
  network = np.asarray(_network_farther(spec_lower, chosen, slack)) & has_target[:, None]
  farther_count = np.asarray(chosen['box_farther']) + network.sum(axis=1)
  upper = np.array(rank_bounds.query_attack_upper)
  current = upper[np.arange(num_queries), columns]
  upper[np.arange(num_queries), columns] = np.where(
      has_target, np.minimum(current, num_candidates - farther_count), current)
  stats = {'undecided': np.where(has_target, np.asarray(chosen['undecided']), 0),
           'network_farther': network.sum(axis=1),
           'network_farther_candidates': np.where(network, np.asarray(chosen['chosen']), -1)}
  return rank_bounds._replace(query_attack_upper=upper.astype(np.int32)), stats


@jax.jit
def _network_farther(spec_lower, chosen: dict, distance_slack):
  """Whether each chosen candidate is surely farther than the target by the network bound.

  `max over x of s . (m - f(x)) <= s . m - spec_lower`, widened by `distance_slack ||s|| ||B||`
  and intersected with the box's `r . |s|`, replaces the box's cross term in the linear
  specification's decision (`_linear_order_from_sums`), whose rounding guard gets the
  magnitudes of `s . m` and of the bound besides its own.
  """
  spec, centre = chosen['spec'], chosen['centre'][:, None]
  widening = distance_slack * jnp.linalg.norm(spec, axis=-1) * chosen['magnitude']
  cross = jnp.minimum(jnp.sum(spec * centre, axis=-1) - spec_lower + widening,
                      chosen['cross_radius'])
  cross_magnitude = jnp.maximum(
      jnp.sum(jnp.abs(spec * centre), axis=-1) + jnp.abs(spec_lower) + widening,
      chosen['cross_radius'])
  rounding = box_retrieval._rounding_factor(spec.dtype, spec.shape[-1])  # pylint: disable=protected-access
  farther, _ = box_retrieval._linear_order_from_sums(  # pylint: disable=protected-access
      chosen['candidate_sq'], chosen['target_sq'], cross, chosen['candidate_far'],
      chosen['target_far'], chosen['width'], rounding, cross_magnitude=cross_magnitude)
  return farther & chosen['valid'] & jnp.isfinite(spec_lower)


__all__ = ['DEFAULT_MAX_ROWS', 'first_same_class_column', 'tighten_query_attack_upper']
