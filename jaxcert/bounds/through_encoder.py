"""Rank bounds tightened by bounds through the encoder, for the pairs the boxes leave undecided.

Query attack (`tighten_query_attack_upper`, certify.py's `qa_bound='network'`; issue 22, part 2):

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
is (tested against PGD on the query: tests/test_through_encoder.py).

Each image's pass through the encoder reuses the intermediate bounds of the pass that computed
its box, where given (`embedding_bounds_and_intermediates`; certify.py does): the rows differ,
the box does not (docs/linear_bounds.md §6.3).

Rounding, float64 (round to nearest): the box test is `rank_bounds`'s; the network test widens
its bound of `s . (m - f(x))` by `distance_slack * ||s|| * ||B||` (as if f(x) moved by the
distance slack times the box magnitude ||B||, the slack's meaning for the boxes, docs/bounds.md
§10) and compares through `_linear_order_from_sums` with the magnitudes of every term it sums
(`s . m` and the bound included) in its rounding guard. The rigorous mode (`rounding='outward'`,
certify.py's float32; docs/linear_bounds.md §8.2): outward-rounded boxes and bounds through the
encoder of the real-valued encoder, slack 0, and the computed embeddings' own rounding by their
point margins, as `rank_bounds` takes it: each QA pair widened by its two candidates' margins,
each CA distance bound from a query point moved out by the query's.

Candidate attack (`tighten_candidate_attack_upper`, `ca_bound='network'`): Theorem 2 compares the
target's largest distance to the query over its box with each candidate's smallest; the latter is
also bounded through the encoder, by the row u = f(c) - q on c's input box
(||f(x) - q|| >= u . (f(x) - q) / ||u||), for the (candidate, query) pairs the box leaves
undecided, `max_rows` queries per candidate; the former along u = f(c^) - q on c^'s input box,
with the box across u.
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
from jaxcert.bounds.interval import eps_rounded_up
from jaxcert.bounds.interval import input_box

# Undecided candidates per query whose specification rows are bounded through the encoder
# (config.ibp.spec_rows' default; docs/linear_bounds.md §6.1).
DEFAULT_MAX_ROWS = 256


def first_same_class_column(indices, query_labels, candidate_labels) -> np.ndarray:
  """Per query, the column (clean rank - 1) of its nearest same-class candidate in `indices`
  (a `RankBounds.indices`, (Nq, k)), or -1 where none of its k nearest has its class."""
  indices = np.asarray(indices)
  same = np.asarray(candidate_labels)[indices] == np.asarray(query_labels)[:, None]
  return np.where(same.any(axis=1), np.argmax(same, axis=1), -1)


@functools.partial(jax.jit, static_argnames=('rows',))
def _undecided_rows(query_lower, query_upper, candidate_emb, target_index, distance_slack,
                    point_margin, *, rows: int) -> dict:
  """For a block of queries (B) and their targets: the box test against every candidate (N), and
  the `rows` undecided candidates with the largest box margin (closest to decided).
  `point_margin` (N,) widens each pair's comparison by its two candidates' (rigorous float32,
  docs/bounds.md §13; zeros otherwise), as `rank_bounds` does.

  Returns (B,) counts 'box_farther' and 'undecided', and for the chosen (B, rows): their
  candidate indices 'chosen', 'valid' (undecided, not padding), 'spec' s = c^ - c (zero where
  not valid), and the sums of the linear specification (`linear_specification_sums`) that
  `_network_farther` reuses.
  """
  target_emb = candidate_emb[target_index]
  centre, magnitude, sums = box_retrieval.linear_specification_sums(
      query_lower[:, None], query_upper[:, None], candidate_emb[None], target_emb[:, None],
      distance_slack)  # (B, N) or (B, 1) each; centre (B, 1, d), magnitude (B, 1)
  candidate_sq, target_sq, cross_radius, candidate_far, target_far, width, rounding = sums
  width = width + point_margin[None, :] + point_margin[target_index][:, None]
  farther, _ = box_retrieval._linear_order_from_sums(  # pylint: disable=protected-access
      candidate_sq, target_sq, cross_radius, candidate_far, target_far, width, rounding)
  undecided = ~farther & (jnp.arange(candidate_emb.shape[0])[None] != target_index[:, None])
  margin = candidate_sq - target_sq - 2 * cross_radius
  chosen = jnp.argsort(jnp.where(undecided, -margin, jnp.inf), axis=1)[:, :rows]
  take = lambda values: jnp.take_along_axis(values, chosen, axis=1)
  valid = take(undecided)
  spec = (target_emb[:, None] - candidate_emb[chosen]) * valid[..., None]  # (B, rows, d)
  return {'box_farther': jnp.sum(farther, axis=1), 'undecided': jnp.sum(undecided, axis=1),
          'chosen': chosen, 'valid': valid, 'spec': spec, 'centre': centre[:, 0],
          'magnitude': magnitude,
          'candidate_sq': take(candidate_sq), 'target_sq': target_sq,
          'cross_radius': take(cross_radius), 'candidate_far': take(candidate_far),
          'target_far': target_far, 'width': take(width)}


def _targets(rank_bounds, target_columns, method: str, max_rows: int):
  """(has_target, column (0 where none), candidate index of the target), each (Nq,), after the
  arguments' checks shared by both attacks."""
  linear._check_method(method)  # pylint: disable=protected-access
  if int(max_rows) != max_rows or max_rows < 1:
    raise ValueError(f'max_rows must be a positive integer, got {max_rows!r}.')
  indices = np.asarray(rank_bounds.indices)
  target_columns = np.asarray(target_columns)
  if target_columns.shape != (indices.shape[0],) or np.any(target_columns >= indices.shape[1]):
    raise ValueError(f'target_columns must have shape ({indices.shape[0]},) with columns below '
                     f'{indices.shape[1]} (-1 for none), got {target_columns}.')
  columns = np.maximum(target_columns, 0)
  return target_columns >= 0, columns, indices[np.arange(indices.shape[0]), columns]


def _spec_lower_of_batch(method, rounding, embed, eps, packed, *, image_shape, rows):
  """Lower bounds of `s . f(x)` over each image's eps-box for its `rows` rows: images, rows and
  (if present) the intermediate bounds of the boxes come packed as one (B, H*W*C + rows*d [+ m])
  array (so `embed_in_batches` pads and shards them together)."""
  pixels = int(np.prod(image_shape))
  images = packed[:, :pixels].reshape((-1, *image_shape))
  dim = jax.eval_shape(embed, jax.ShapeDtypeStruct((1, *image_shape), packed.dtype)).shape[-1]
  spec = packed[:, pixels:pixels + rows * dim].reshape((packed.shape[0], rows, dim))
  intermediates = packed[:, pixels + rows * dim:]
  return linear.linear_spec_lower_bounds(embed, method, skip_zero_rows=True, rounding=rounding)(
      *input_box(images, eps), spec, intermediates if intermediates.shape[1] else None)


def embedding_bounds_and_intermediates(embed: Callable, images, eps: float, method: str, *,
                                       batch_size: int = 50, sharding=None, dtype=jnp.float64,
                                       rounding: str = 'nearest', progress: str | None = None):
  """`retrieval.embedding_bounds(embed, images, eps, bound=linear_bounds(method,
  rounding=rounding))` with, per image, the intermediate bounds of its box, for
  `tighten_query_attack_upper` and `tighten_candidate_attack_upper` to reuse (their backward
  passes then skip the intermediate bounds, most of a 'crown' pass; docs/linear_bounds.md §6.3).
  `rounding` 'outward': the rigorous mode (bounds of the real-valued encoder in any dtype,
  docs/linear_bounds.md §8.1). `progress`: a progress bar's description
  (`retrieval.embed_in_batches`), None for none.

  Returns:
    `(lower, upper, intermediates)`: (N, d), (N, d), (N, m) numpy arrays in `dtype`.
  """
  linear._check_method(method, rounding)  # pylint: disable=protected-access
  return box_retrieval.embedding_bounds(
      embed, images, eps, batch_size=batch_size, sharding=sharding, dtype=dtype,
      bound=_bounds_with_intermediates(method, rounding), progress=progress, extras=True)


@functools.cache
def _bounds_with_intermediates(method: str, rounding: str) -> Callable:
  """`linear_bounds` returning the intermediate bounds, one function object per method and
  rounding, so that jit's cache (keyed by it) is reused."""
  return functools.partial(linear.linear_bounds, method=method, rounding=rounding,
                           return_intermediates=True)


@functools.cache
def _spec_batch_function(method: str, rounding: str, image_shape: tuple[int, ...],
                         rows: int) -> Callable:
  """One function object per (method, rounding, shape), so jit's cache (keyed by it) is
  reused."""
  return functools.partial(_spec_lower_of_batch, method, rounding, image_shape=image_shape,
                           rows=rows)


def _spec_lower_bounds(embed, method: str, images, spec, eps: float, batch_size: int,
                       intermediates=None, progress: str | None = None,
                       rounding: str = 'nearest', sharding=None):
  """(N, rows) lower bounds of `spec[i, r] . f(x)` over image i's eps-box, `batch_size` images a
  call (`linear_spec_lower_bounds` with `method` and `rounding`, reusing image i's
  `intermediates` where given; each call placed by `sharding`, `retrieval.embed_in_batches`).

  Rows past an image's last nonzero row are padding, which the passes skip
  (`linear_spec_bounds`' `skip_zero_rows`); the images are batched in the order of their number
  of rows in use, so that a batch's passes stop near each of its images' own count."""
  count, rows = spec.shape[:2]
  images = box_retrieval._check_pixel_range(images)  # pylint: disable=protected-access
  spec = np.asarray(spec)
  in_use = np.max(np.where(np.any(spec != 0, axis=2), np.arange(1, rows + 1), 0), axis=1)
  order = np.argsort(-in_use, kind='stable')
  parts = [images.astype(spec.dtype).reshape(count, -1), spec.reshape(count, -1)]
  if intermediates is not None:
    parts.append(np.asarray(intermediates, spec.dtype).reshape(count, -1))
  spec_batch = jax.tree_util.Partial(
      _spec_batch_function(method, rounding, tuple(np.shape(images)[1:]), rows),
      retrieval.as_pytree_function(embed), eps_rounded_up(eps, spec.dtype))
  lower = np.empty((count, rows), spec.dtype)
  lower[order] = retrieval.embed_in_batches(spec_batch, np.concatenate(parts, axis=1)[order],
                                            batch_size, sharding=sharding, progress=progress)
  return jnp.asarray(lower)


def tighten_query_attack_upper(rank_bounds: box_retrieval.RankBounds, embed: Callable,
                               query_images, eps: float, query_lower, query_upper,
                               candidate_emb, target_columns, *, method: str = 'crown',
                               max_rows: int = DEFAULT_MAX_ROWS, batch_size: int = 50,
                               distance_slack: float = box_retrieval.DEFAULT_DISTANCE_SLACK,
                               query_intermediates=None, progress: bool = False,
                               rounding: str = 'nearest', point_margin=0., sharding=None
                               ) -> tuple[box_retrieval.RankBounds, dict]:
  """`rank_bounds` with each query's target QA rank upper bound tightened through the encoder.

  Args:
    rank_bounds: `rank_bounds(..., qa_bound='linear')` of the same boxes and candidates.
    embed: the encoder, `(batch, H, W, C) -> (batch, d)`, in the dtype of the boxes (float64
      rounding to nearest, or any dtype with `rounding='outward'`).
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
    query_intermediates: (Nq, m), the intermediate bounds of the query boxes at `eps`
      (`embedding_bounds_and_intermediates` with `method` and `rounding`), reused instead of
      recomputed; None: recomputed.
    progress: a progress bar over the images bounded through the encoder.
    rounding: 'outward', the rigorous mode (float32 anywhere): the query boxes are rigorous
      (outward-rounded) and the network test bounds the real-valued encoder
      (`linear_spec_lower_bounds(..., rounding='outward')`); the candidates' computed embeddings
      are within `point_margin` of the real ones.
    point_margin: a scalar or (N,) upper bounds of ||y_c - candidate_emb[c]||_2 for the real
      embedding y_c of each candidate (`rank_bounds`' `point_margin`, the rigorous mode's
      `point_margins(...)['candidate_distance']`); each pair's decision is widened by the sum
      of its two candidates' (docs/bounds.md §13, "Rigorous float32: the point margin").
    sharding: where each batch of the passes through the encoder goes (data parallel over a
      mesh, `parallel.batch_sharded`; `embed`'s weights replicated there); None: the default
      device.

  Returns:
    (the tightened RankBounds, {'undecided': (Nq,) candidates the box test leaves undecided
    against the target, 'network_farther': (Nq,) of them the network test decides farther,
    'network_farther_candidates': (Nq, min(max_rows, N - 1)) their indices, -1 elsewhere}).

  Raises:
    ValueError: an unknown method, max_rows < 1, or target_columns of the wrong shape or range.
  """
  has_target, columns, targets = _targets(rank_bounds, target_columns, method, max_rows)
  num_queries, num_candidates = len(columns), candidate_emb.shape[0]
  rows = min(int(max_rows), num_candidates - 1)
  if rows == 0:  # A single candidate: no pair to compare.
    return rank_bounds, {'undecided': np.zeros(num_queries, np.int32),
                         'network_farther': np.zeros(num_queries, np.int32),
                         'network_farther_candidates': np.zeros((num_queries, 0), np.int32)}
  candidate_emb = jnp.asarray(candidate_emb)
  slack = jnp.asarray(distance_slack, candidate_emb.dtype)
  margins = jnp.broadcast_to(jnp.asarray(point_margin, candidate_emb.dtype), (num_candidates,))
  blocks = [_undecided_rows(jnp.asarray(query_lower[start:start + batch_size]),
                            jnp.asarray(query_upper[start:start + batch_size]), candidate_emb,
                            jnp.asarray(targets[start:start + batch_size]), slack, margins,
                            rows=rows)
            for start in range(0, num_queries, batch_size)]
  chosen = {key: jnp.concatenate([block[key] for block in blocks]) for key in blocks[0]}
  spec_lower = _spec_lower_bounds(embed, method, query_images, chosen['spec'], eps, batch_size,
                                  query_intermediates,
                                  progress='QA bounds through the encoder' if progress else None,
                                  rounding=rounding, sharding=sharding)
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

  In the rigorous mode `spec_lower` bounds `s~ . f_R(x)` for the computed row
  `s~ = fl(c^ - c)`, while the decision is about the exact `s = c^ - c`: over the query's
  (rigorous) box `|(s - s~) . (m - f_R(x))| <= u / (1 - u) |s~| . r`, u the unit roundoff:
  about u times the box's cross term, far inside the guard's `(d + 8)` machine epsilons of it
  (the box test's own `s~` is covered the same way, docs/bounds.md §13).
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


@functools.partial(jax.jit, static_argnames=('slack', 'outward'))
def _candidate_distance_bounds(query_emb, candidate_lower, candidate_upper, query_margin, slack,
                               outward):
  """Theorem 2's widened distance bounds from each query point to each candidate box, as
  `rank_bounds` computes them (`_widened_distance_bounds`, rigorous and moved out by each
  query's `query_margin` (B,) if `outward`): (B, N) each."""
  magnitude = box_retrieval._box_magnitude(candidate_lower, candidate_upper)  # pylint: disable=protected-access
  lower, upper = box_retrieval._widened_distance_bounds(  # pylint: disable=protected-access
      candidate_lower[None], candidate_upper[None], query_emb[:, None], magnitude[None],
      jnp.linalg.norm(query_emb, axis=-1)[:, None], slack, outward)
  if not outward:
    return lower, upper
  margin = query_margin[:, None]
  return (box_retrieval.moved_out(lower, margin, upper=False),
          box_retrieval.moved_out(upper, margin, upper=True))



def tighten_candidate_attack_upper(rank_bounds: box_retrieval.RankBounds, embed: Callable,
                                   candidate_images, eps: float, candidate_lower,
                                   candidate_upper, query_emb, candidate_emb, target_columns, *,
                                   method: str = 'crown', max_rows: int = DEFAULT_MAX_ROWS,
                                   batch_size: int = 50,
                                   distance_slack: float = box_retrieval.DEFAULT_DISTANCE_SLACK,
                                   candidate_intermediates=None, progress: bool = False,
                                   rounding: str = 'nearest', query_point_margin=0.,
                                   sharding=None) -> tuple[box_retrieval.RankBounds, dict]:
  """`rank_bounds` with each query's target CA rank upper bound tightened through the encoder.

  Under CA (Kakizaki et al. Theorem 2) the target c^ keeps rank <= N - #{c : d-bar_q(c^) <
  d-underbar_q(c)}, where d-underbar_q(c) is any lower bound of ||f(x) - q|| over c's input box.
  Besides the box's, every unit row u gives one: ||f(x) - q|| >= u . (f(x) - q). For the pairs
  the box leaves undecided, the row u = f(c) - q (normalised after bounding) is bounded through
  the encoder on c's input box (`linear_spec_bounds`); each candidate takes the `max_rows` queries
  closest to decided (largest d-underbar_q(c) - d-bar_q(c^)). The bound `(min u . f(x) - u . q) /
  ||u||` is widened like the box's (`distance_slack` (||B_c|| + ||q||)) and by its own rounding,
  and the larger lower bound counts. d-bar_q(c^), the target's largest distance, is the smaller of
  the box's and one through the encoder: the bounds of u . f(x) along u = f(c^) - q on c^'s
  input box, with the box across u (`_network_distance_upper`).

  Args:
    rank_bounds: `rank_bounds(...)` of the same candidate boxes (with the same `rounding`).
    embed: the encoder, in the dtype of the boxes.
    candidate_images: (N, H, W, C) in [0, 1].
    eps: the L-inf radius of the boxes.
    candidate_lower, candidate_upper: (N, d) the candidate embedding boxes the rank bounds used.
    query_emb, candidate_emb: (Nq, d), (N, d) clean embeddings.
    target_columns: (Nq,) as in `tighten_query_attack_upper`.
    method, max_rows, batch_size, distance_slack: as there (`max_rows` queries per candidate,
      `batch_size` candidate images a call).
    candidate_intermediates: (N, m), the intermediate bounds of the candidate boxes at `eps`
      (`embedding_bounds_and_intermediates` with `method` and `rounding`), reused where given.
    progress: progress bars over the images bounded through the encoder.
    rounding: 'outward', the rigorous mode: rigorous candidate boxes, distance bounds and
      bounds through the encoder of the real-valued encoder, and the queries' computed
      embeddings within `query_point_margin` of the real ones.
    query_point_margin: a scalar or (Nq,) upper bounds of ||y_q - query_emb[q]||_2
      (`rank_bounds`' `query_point_margin`); every distance bound from a query point moves out
      by its query's (docs/rigorous_float32.md §6). Only in the rigorous mode.
    sharding: as in `tighten_query_attack_upper`.

  Returns:
    (the tightened RankBounds, {'undecided': (Nq,) candidates the box leaves undecided against
    the target, 'network_farther': (Nq,) of them the network bound decides farther,
    'network_farther_queries': (N, rows) per candidate the queries it is so decided for, -1
    elsewhere, 'target_max': (Nq,) the upper bound of the target's distance used, +inf where
    there is no target}).

  Raises:
    ValueError: as `tighten_query_attack_upper`.
  """
  has_target, columns, targets = _targets(rank_bounds, target_columns, method, max_rows)
  num_queries, num_candidates = len(columns), candidate_emb.shape[0]
  query_emb, candidate_emb = np.asarray(query_emb), np.asarray(candidate_emb)
  outward = rounding == 'outward'
  if not outward and np.any(np.asarray(query_point_margin) != 0):
    raise ValueError("query_point_margin is the rigorous mode's (rounding='outward').")
  query_margin = np.broadcast_to(np.asarray(query_point_margin, query_emb.dtype), (num_queries,))
  box = [_candidate_distance_bounds(jnp.asarray(query_emb[start:start + batch_size]),
                                    jnp.asarray(candidate_lower), jnp.asarray(candidate_upper),
                                    jnp.asarray(query_margin[start:start + batch_size]),
                                    float(distance_slack), outward)
         for start in range(0, num_queries, batch_size)]
  box_min = np.concatenate([np.asarray(lower) for lower, _ in box])
  target_max = np.concatenate([np.asarray(upper) for _, upper in box])[np.arange(num_queries),
                                                                       targets]
  # The target's largest distance, also through the encoder along u = f(c^) - q.
  along = candidate_emb[targets] - query_emb  # (Nq, d)
  spec_lower = np.asarray(_spec_lower_bounds(
      embed, method, np.asarray(candidate_images)[targets], np.stack([along, -along], axis=1),
      eps, batch_size,
      None if candidate_intermediates is None else np.asarray(candidate_intermediates)[targets],
      progress='CA targets through the encoder' if progress else None, rounding=rounding,
      sharding=sharding))
  network_max = _network_distance_upper(
      jnp.asarray(along), jnp.asarray(spec_lower), jnp.asarray(query_emb),
      jnp.asarray(candidate_lower)[targets], jnp.asarray(candidate_upper)[targets],
      float(distance_slack))
  if outward:
    network_max = box_retrieval.moved_out(network_max, jnp.asarray(query_margin), upper=True)
  target_max = np.minimum(target_max, np.asarray(network_max))
  box_farther = target_max[:, None] < box_min
  undecided = (~box_farther & has_target[:, None]
               & (np.arange(num_candidates)[None] != targets[:, None]))
  rows = min(int(max_rows), num_queries)
  # Per candidate (column), the undecided queries closest to decided.
  margin = np.where(undecided, box_min - target_max[:, None], -np.inf)
  chosen = np.argsort(-margin, axis=0, kind='stable')[:rows].T  # (N, rows) query indices
  valid = np.take_along_axis(undecided.T, chosen, axis=1)
  spec = (candidate_emb[:, None] - query_emb[chosen]) * valid[..., None]
  spec_lower = np.asarray(_spec_lower_bounds(
      embed, method, candidate_images, spec, eps, batch_size, candidate_intermediates,
      progress='CA bounds through the encoder' if progress else None, rounding=rounding,
      sharding=sharding))
  lower = _network_distance_lower(
      jnp.asarray(spec), jnp.asarray(spec_lower), jnp.asarray(query_emb[chosen]),
      jnp.asarray(box_retrieval._box_magnitude(candidate_lower, candidate_upper)),  # pylint: disable=protected-access
      float(distance_slack))
  if outward:
    lower = box_retrieval.moved_out(lower, jnp.asarray(query_margin[chosen]), upper=False)
  lower = np.asarray(lower)
  network = valid & (lower > target_max[chosen])
  farther = box_farther.copy()
  candidate_index = np.broadcast_to(np.arange(num_candidates)[:, None], chosen.shape)
  farther[chosen[network], candidate_index[network]] = True
  farther &= has_target[:, None]
  upper = np.array(rank_bounds.candidate_attack_upper)
  current = upper[np.arange(num_queries), columns]
  upper[np.arange(num_queries), columns] = np.where(
      has_target, np.minimum(current, num_candidates - farther.sum(axis=1)), current)
  stats = {'undecided': undecided.sum(axis=1),
           'network_farther': (farther & ~box_farther).sum(axis=1),
           'network_farther_queries': np.where(network, chosen, -1),
           'target_max': np.where(has_target, target_max, np.inf)}
  return rank_bounds._replace(candidate_attack_upper=upper.astype(np.int32)), stats


@functools.partial(jax.jit, static_argnames=('slack',))
def _network_distance_upper(along, spec_lower, query_points, target_lower, target_upper, slack):
  """An upper bound of ||f(x) - q|| over the target's input box, per query, from the bounds of
  u . f(x) along u = `along` (`spec_lower`: the lower bounds of u . f(x) and of -u . f(x)) and the
  target's embedding box [m - r, m + r] across u:

      ||f(x) - q||^2 = (u^ . (f(x) - q))^2 + ||P (f(x) - q)||^2,
      ||P (f(x) - q)|| <= ||P (m - q)|| + ||f(x) - m|| <= ||P (m - q)|| + ||r||,

  u^ = u / ||u||, P the projection across u^. Widened like Theorem 2's bounds (`slack` (||B|| +
  ||q||)) and by the rounding of its sums; +inf where u = 0."""
  norm = jnp.linalg.norm(along, axis=-1)
  divisor = jnp.where(norm > 0, norm, 1)
  unit = along / divisor[:, None]
  along_query = jnp.sum(unit * query_points, axis=-1)
  lower = spec_lower[:, 0] / divisor
  upper = -spec_lower[:, 1] / divisor
  extent = jnp.maximum(jnp.abs(lower - along_query), jnp.abs(upper - along_query))
  centre, radius = box_retrieval._enclosing_centre_radius(target_lower, target_upper)  # pylint: disable=protected-access
  offset = centre - query_points
  across = jnp.linalg.norm(offset - jnp.sum(offset * unit, axis=-1)[:, None] * unit, axis=-1)
  value = jnp.sqrt(jnp.square(extent) + jnp.square(across + jnp.linalg.norm(radius, axis=-1)))
  rounding = box_retrieval._rounding_factor(along.dtype, along.shape[-1])  # pylint: disable=protected-access
  magnitude = (jnp.abs(lower) + jnp.abs(upper) + jnp.abs(along_query)
               + jnp.linalg.norm(offset, axis=-1) + jnp.linalg.norm(radius, axis=-1))
  widening = slack * (box_retrieval._box_magnitude(target_lower, target_upper)  # pylint: disable=protected-access
                      + jnp.linalg.norm(query_points, axis=-1))
  upper_bound = value + widening + rounding * (magnitude + value)
  return jnp.where((norm > 0) & jnp.isfinite(upper_bound), upper_bound, jnp.inf)


@functools.partial(jax.jit, static_argnames=('slack',))
def _network_distance_lower(spec, spec_lower, query_points, candidate_magnitude, slack):
  """`(min u . f(x) - u . q) / ||u||` per row, widened by `slack (||B_c|| + ||q||)` and by the
  rounding of its sums; -inf where the row is zero or the bound is not finite."""
  norm = jnp.linalg.norm(spec, axis=-1)
  products = spec * query_points
  value = (spec_lower - jnp.sum(products, axis=-1)) / jnp.where(norm > 0, norm, 1)
  rounding = box_retrieval._rounding_factor(spec.dtype, spec.shape[-1])  # pylint: disable=protected-access
  magnitude = (jnp.abs(spec_lower) + jnp.sum(jnp.abs(products), axis=-1)) / jnp.where(
      norm > 0, norm, 1)
  widening = slack * (candidate_magnitude[:, None] + jnp.linalg.norm(query_points, axis=-1))
  lower = value - widening - rounding * (magnitude + jnp.abs(value))
  return jnp.where((norm > 0) & jnp.isfinite(lower), lower, -jnp.inf)


__all__ = ['DEFAULT_MAX_ROWS', 'first_same_class_column', 'tighten_candidate_attack_upper',
           'tighten_query_attack_upper']
