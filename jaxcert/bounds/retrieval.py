"""Certified retrieval from interval bounds: distance bounds, rank bounds, verification, CR-Recall@K.

Kakizaki et al. (WACV 2023), Sec. 3, for the query attack
(QA: the query q is perturbed) and the candidate attack (CA: every candidate c_i is perturbed, each
by its own delta_i), all perturbations in the L-infinity ball of radius eps intersected with the
pixel box [0, 1]:

* `embedding_bounds`: elementwise interval bounds of f(x + delta) by interval bound propagation
  through the encoder (`jaxcert.bounds.interval`, Eqs. 15-16);
* `distance_bounds`: lower and upper bounds of ||z - y|| over z in an embedding box (Theorems 5
  and 6, Eqs. 17-18);
* `rank_bounds`: for every query and each of its k nearest candidates c^ = IR_f(q, C)_j, bounds of
  the rank of c^ under QA (by default from the linear specification ||z - c||^2 - ||z - c^||^2,
  exact over the query's embedding box and never looser than Theorem 1, `linear_query_attack_order`,
  docs/bounds.md §13; or Theorem 1, Eqs. 9-10) and under CA (Theorem 2, Eqs. 11-12, Eq. 11 read
  with the query-side lower bound d_q(c) in place of d_c(c)), blocked over the query x candidate
  grid;
* `verify`: the sufficient conditions of Theorems 3 and 4 (Eqs. 13-14), i.e. Verify (Eq. 19);
* `certified_retrieval` and `cr_recall_at_k`: CR-Recall@K (Eq. 25) with alpha = K - rank.

Derivations, including why Eq. 11 must use d_q(c), are in docs/bounds.md §10-13.

Floating point. Interval bounds are computed with round-to-nearest like the forward pass (sound up
to rounding, docs/bounds.md §1), in the dtype of the encoder: certify.py casts the float32 weights
to float64 (exact) by default, where rounding is ~1e-16 of the magnitudes. Before any comparison
the bounds of a distance between a box B and a point y are widened by
`distance_slack * (||B|| + ||y||)` (1e-5 by default), ||B|| the norm of the box's largest corner
magnitudes max(|lower|, |upper|): rounding is relative to the magnitudes of the numbers rounded,
so the slack scales with them (multiplying the encoder by any c > 0 leaves every certificate
unchanged). It is meant to exceed rounding, which in float32 `float32_rounding_error` measures
(2e-7 to 5e-6 of those magnitudes on our CNNs, docs/bounds.md §10; certify.py warns under a 10x
margin), and to stay far below the bound widths that decide a certificate, so that a near-tie is
not certified on rounding noise. The linear QA specification widens its pairwise comparison by the
same total slack and also bounds its own arithmetic's rounding explicitly (docs/bounds.md §13).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jaxcert import retrieval
from jaxcert.bounds.interval import arithmetic_narrower_than
from jaxcert.bounds.interval import eps_rounded_up
from jaxcert.bounds.interval import input_box
from jaxcert.bounds.interval import interval
from jaxcert.bounds.interval import is_concrete
from jaxcert.bounds.interval import ROUNDING_MODES
from jaxcert.bounds.rounding import outward_distance_bounds
from jaxcert.bounds.rounding import round_down
from jaxcert.bounds.rounding import round_up
from jaxcert import common

DEFAULT_DISTANCE_SLACK = 1e-5


def _check_eps(eps) -> float:
  eps = float(eps)
  if not eps >= 0:
    raise ValueError(f'eps must be >= 0 (an L-infinity radius in pixel units, e.g. 0.2), got {eps}.')
  return eps


def _check_pixel_range(images) -> np.ndarray:
  images = np.asarray(images, np.float32)
  if images.size and not (images.min() >= 0 and images.max() <= 1):
    raise ValueError(f'Images must lie in [0, 1], found values in [{images.min()}, {images.max()}]; '
                     'scale pixels to [0, 1] (encoders normalise internally).')
  return images


def _embedding_bounds_of_batch(bound, embed, eps, images):
  """`[lower | upper | extras]` (B, 2d + m) of embed over the boxes of `images` by the transform
  `bound`: its outputs side by side (the bounds, and any per-example columns it returns after
  them).

  The input box is built in the dtype of `eps` (float32 pixels are exact in float64)."""
  return jnp.concatenate(bound(embed)(*input_box(images.astype(eps.dtype), eps)), axis=-1)


@functools.cache
def _batch_bounds(bound: Callable) -> Callable:
  """One function object per bound transform, so that jit's cache (keyed by it) is reused."""
  return functools.partial(_embedding_bounds_of_batch, bound)


# Interval bound propagation with every rule rounded outwards (docs/rigorous_float32.md).
outward_interval = functools.partial(interval, rounding='outward')


def embedding_bounds(embed: Callable, images, eps, *, batch_size: int = 256,
                     sharding: jax.sharding.Sharding | None = None, dtype=jnp.float32,
                     bound: Callable = interval, progress: str | None = None,
                     extras: bool = False) -> tuple[np.ndarray, ...]:
  """Interval bounds of f(x + delta), ||delta||_inf <= eps, x + delta in [0, 1], for each image.

  By default interval bound propagation through the whole encoder (Kakizaki et al. Eqs. 15-16,
  `interval`), in batches of one static shape (`retrieval.embed_in_batches`): with `embed` a
  `jax.tree_util.Partial(model.apply, variables)`, one compilation serves every eps and checkpoint.

  Args:
    embed: pure function `(batch, H, W, C) -> (batch, d)`.
    images: (N, H, W, C) array-like in [0, 1].
    eps: L-infinity radius, >= 0.
    batch_size: images per call.
    sharding: data-parallel placement of each batch (`retrieval.embed_in_batches`).
    dtype: the dtype of the input box; float64 (under `jax.enable_x64`, with float64 variables in
      `embed`) bounds the encoder with rounding ~1e-16 of the magnitudes (docs/bounds.md §10).
    bound: a sound bound transform `fn -> ((lower, upper) -> (out_lower, out_upper))` with the
      calling convention of `interval` (the default), e.g. a linear-relaxation (CROWN-family)
      transform; pass one function object per method (jit's cache is keyed by it).
      `outward_interval` bounds the real-valued encoder in any dtype (docs/rigorous_float32.md).
    progress: a progress bar's description (`retrieval.embed_in_batches`); None: no bar.
    extras: `bound`'s transform returns per-example columns after the bounds (e.g.
      `linear_bounds(..., return_intermediates=True)`'s intermediate bounds): return them too.

  Returns:
    `(lower, upper)`, each (N, d) numpy arrays (the encoder's output dtype) with
    lower <= f(x + delta) <= upper; with `extras`, `(lower, upper, extras)`, extras (N, m).

  Raises:
    ValueError: eps < 0 or images outside [0, 1].
  """
  eps = _check_eps(eps)
  images = _check_pixel_range(images)
  bounded = jax.tree_util.Partial(_batch_bounds(bound), retrieval.as_pytree_function(embed),
                                  eps_rounded_up(eps, dtype))
  columns = retrieval.embed_in_batches(bounded, images, batch_size, sharding=sharding,
                                      progress=progress)
  if not extras:
    dim = columns.shape[1] // 2
    return columns[:, :dim], columns[:, dim:]
  dim = jax.eval_shape(embed, jax.ShapeDtypeStruct((1,) + images.shape[1:], dtype)).shape[-1]
  return columns[:, :dim], columns[:, dim:2 * dim], columns[:, 2 * dim:]


@contextlib.contextmanager
def certification_precision(dtype: str):
  """Full-precision matmuls, and float64 enabled (`jax.enable_x64`) where `dtype` is 'float64'.

  Reduced GPU/TPU matmul precision (TF32, bf16 passes) is coarser than the bounds' slack
  (docs/bounds.md §1); on CPU 'highest' is the default.
  """
  with contextlib.ExitStack() as stack:
    stack.enter_context(jax.default_matmul_precision('highest'))
    if dtype == 'float64':
      stack.enter_context(jax.enable_x64(True))
    yield


def cast_floating(tree, dtype):
  """Every floating-point leaf of `tree` as `dtype`, the others as they are.

  float32 -> float64 is exact, so float64 bounds the same encoder; call under `jax.enable_x64`
  for float64 (certify.py's default, docs/bounds.md §10).
  """
  def cast(leaf):
    leaf = jnp.asarray(leaf)
    return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

  return jax.tree.map(cast, tree)


def check_computes_in(embed: Callable, image_shape: Sequence[int], dtype) -> None:
  """Raises where `embed` computes in a floating dtype narrower than `dtype` on the images.

  Round-to-nearest bounds hold up to the rounding of the dtype each step computes in, and the
  distance slack (module docstring) is calibrated for float64's (and float32's) rounding: an
  encoder with steps in bfloat16 (8 significant bits) or float16, or in float32 when certified
  in float64, would be bounded up to that coarser rounding, which the slack does not cover.

  Args:
    embed: the encoder as certified, `(batch, *image_shape) -> (batch, d)`, its variables
      already in `dtype`.
    image_shape: the shape of one image.
    dtype: the dtype of the bounds.

  Raises:
    ValueError: naming the first such steps and where the model computes them.
  """
  example = jax.ShapeDtypeStruct((1, *image_shape), dtype)
  steps = arithmetic_narrower_than(embed, dtype, example)
  if steps:
    more = f' (and {len(steps) - 3} more)' if len(steps) > 3 else ''
    raise ValueError(
        f'The encoder computes in a narrower floating dtype than the {jnp.dtype(dtype).name} '
        f'bounds: {"; ".join(steps[:3])}{more}. Bounds rounded to nearest hold up to the '
        'rounding of the dtype each step computes in, and the distance slack does not cover '
        "that of bfloat16, float16 or float32 in float64. Certify the encoder computing in "
        f'{jnp.dtype(dtype).name} (e.g. Flax modules without a fixed `dtype`).')


def float32_rounding_error(apply_fn: Callable, variables, images, eps) -> dict[str, float]:
  """How far float32 embeddings and IBP boxes are from the same computation in float64.

  The distance slack (module docstring) must cover the rounding of the embeddings f(y) and of the
  box ends of f(x + delta): a widening of `slack * (||B|| + ||y||)` covers errors of at most
  `slack * ||B||` in the box ends and `slack * ||y||` in the point. This measures both on
  `images`, recomputing the encoder and its interval bounds with every parameter and input in
  float64 (`jax.enable_x64`), whose own rounding is ~1e-16 of the magnitudes. A box end counts
  where it falls short of the float64 box (lower above its lower, upper below its upper); a
  float32 box wider than the float64 one is loose, not unsound.

  Args:
    apply_fn: `model.apply`.
    variables: its float32 variables.
    images: (N, H, W, C) in [0, 1]: the images to measure on (one call: keep N moderate).
    eps: the L-infinity radius of the boxes, >= 0.

  Returns:
    {'embedding': max over images of ||f32(x) - f64(x)|| / ||f64(x)||,
     'box': max over images of ||max(lower32 - lower64, upper64 - upper32, 0)|| /
            ||max(|lower64|, |upper64|)||}
    (0 where the reference norm is 0 and the error too).
  """
  eps = _check_eps(eps)
  images = _check_pixel_range(images)

  def embed_and_box(variables, images, eps):
    embed = functools.partial(apply_fn, variables)
    return (embed(images),) + tuple(interval(embed)(*input_box(images, eps)))

  outputs32 = jax.jit(embed_and_box)(variables, jnp.asarray(images), jnp.float32(eps))
  with jax.enable_x64(True):
    outputs64 = jax.jit(embed_and_box)(*cast_floating((variables, images), jnp.float64),
                                       np.float64(eps))
  if any(a.dtype != np.float64 for a in outputs64):
    raise ValueError('The encoder computes in float32 even with float64 inputs and parameters (a '
                     'fixed dtype in the model?), so its float32 rounding cannot be measured.')
  embedding32, lower32, upper32 = (np.asarray(a, np.float64) for a in outputs32)
  embedding64, lower64, upper64 = (np.asarray(a) for a in outputs64)

  def relative(error, scale):
    error, scale = np.linalg.norm(error, axis=-1), np.linalg.norm(scale, axis=-1)
    return float(np.max(np.where(error > 0, error / np.maximum(scale, np.finfo(np.float64).tiny), 0.),
                        initial=0.))

  box_scale = np.maximum(np.abs(lower64), np.abs(upper64))
  shortfall = np.maximum(np.maximum(lower32 - lower64, upper64 - upper32), 0.)
  return {'embedding': relative(embedding32 - embedding64, embedding64),
          'box': relative(shortfall, box_scale)}


def distance_bounds(lower, upper, points) -> tuple[jax.Array, jax.Array]:
  """Bounds of ||z - y||_2 over the box lower <= z <= upper (Kakizaki et al. Theorems 5 and 6).

  With centre m = (upper + lower) / 2 and radius r = (upper - lower) / 2, the farthest point of
  the box from y in coordinate i is at distance max(|upper_i - y_i|, |y_i - lower_i|)
  = |y_i - m_i| + r_i (Eq. 17), the nearest at max(0, |y_i - m_i| - r_i), which is Eq. 18's
  |min(0, upper_i - y_i, y_i - lower_i)|; coordinates are independent in a box, so both sums of
  squares are attained (docs/bounds.md §10). Applied to the IBP box of f(x1 + delta) and
  y = f(x2) they give d-bar_{x2}(x1) >= max_delta ||f(x1 + delta) - f(x2)|| and
  d-underbar_{x2}(x1) <= min_delta of the same (Eqs. 7-8).

  The sums are accumulated by a scan over the d coordinates, so a pairwise call
  (`lower[:, None], upper[:, None], points[None]`) never materialises the (N1, N2, d) broadcast:
  on a 2-core CPU, XLA reduced that broadcast over its last axis 80x slower (1000 x 1000 x 128:
  2.1 s against 27 ms).

  Args:
    lower, upper: (..., d) box ends; broadcast against `points`.
    points: (..., d) points y.

  Returns:
    `(min_distance, max_distance)`, each of the broadcast leading shape. Differentiable (the
    square root has gradient 0 where the distance is 0).
  """
  center = (upper + lower) / 2
  radius = (upper - lower) / 2
  shape = jnp.broadcast_shapes(center.shape, points.shape)[:-1]

  def add_coordinate(sums, coordinate):
    center_i, radius_i, points_i = coordinate
    offset = jnp.abs(points_i - center_i)
    return (sums[0] + jnp.square(jax.nn.relu(offset - radius_i)),
            sums[1] + jnp.square(offset + radius_i)), None

  zeros = jnp.zeros(shape, jnp.result_type(center, points))
  coordinates = tuple(jnp.moveaxis(a, -1, 0) for a in (center, radius, points))
  (min_sq, max_sq), _ = lax.scan(add_coordinate, (zeros, zeros), coordinates)
  return common.safe_sqrt(min_sq), common.safe_sqrt(max_sq)


def _box_magnitude(lower, upper):
  """||max(|lower|, |upper|)|| over the last axis: the norm of the box's largest corner magnitudes."""
  return jnp.linalg.norm(jnp.maximum(jnp.abs(lower), jnp.abs(upper)), axis=-1)


def _widened_distance_bounds(lower, upper, points, box_magnitude, point_norm, slack,
                             outward=False):
  """`distance_bounds`, each side widened by `slack * (||B|| + ||y||)` (module docstring).

  Every distance between a point of the box B and y is at most ||B|| + ||y||, so the widening
  is at least `slack` times the distances themselves. `outward`: the rigorous
  `outward_distance_bounds` instead (docs/rigorous_float32.md §6).
  """
  bounds_fn = outward_distance_bounds if outward else distance_bounds
  min_distance, max_distance = bounds_fn(lower, upper, points)
  widening = slack * (box_magnitude + point_norm)
  return jnp.maximum(min_distance - widening, 0.), max_distance + widening


def moved_out(distance, margin, *, upper: bool):
  """A distance bound from a computed point `y~` moved out by the point's `margin`, rounded
  outwards: for the real point `y` within `margin` of `y~`, ||z - y|| lies within
  ||z - y~|| -+ margin (the lower end kept >= 0; docs/rigorous_float32.md §6)."""
  if upper:
    return round_up(distance + margin)
  return jnp.maximum(round_down(distance - margin), 0)


QUERY_ATTACK_BOUNDS = ('linear', 'kakizaki')  # rank_bounds(qa_bound=...), docs/bounds.md §13


class RankBounds(NamedTuple):
  """Rank bounds of each query's k nearest candidates c^ = IR_f(q, C)_j, j = 1..k.

  All arrays are (Nq, k); column j - 1 belongs to the clean rank j. Ranks are 1-based. Under QA
  "surely closer / farther" is decided by `rank_bounds`'s `qa_bound`: the linear specification
  (docs/bounds.md §13, the default) or Kakizaki et al.'s Theorem 1 (the distance bounds below).

  Attributes:
    indices: int32 candidate indices of IR_f(q, C)_j (ties by candidate index).
    query_attack_lower: 1 + #{c surely closer to q + delta than c^} <= Rank(q + delta, c^)
      (Kakizaki et al. Eq. 10: #{c : d-bar_c(q) < d-underbar_c^(q)}).
    query_attack_upper: N - #{c surely farther} >= Rank(q + delta, c^)
      (Eq. 9: #{c : d-bar_c^(q) < d-underbar_c(q)}).
    candidate_attack_lower: Eq. 12, 1 + #{c : d-bar_q(c) < d-underbar_q(c^)}.
    candidate_attack_upper: Eq. 11 (with d-underbar_q(c)), N - #{c : d-bar_q(c^) < d-underbar_q(c)}.
  """
  indices: jax.Array
  query_attack_lower: jax.Array
  query_attack_upper: jax.Array
  candidate_attack_lower: jax.Array
  candidate_attack_upper: jax.Array


def _cut_into_blocks(arrays, block_size: int):
  """Each (N, ...) array zero-padded and reshaped to (num_blocks, block_size, ...), and the starts."""
  pad_rows = retrieval.pad_rows
  blocks = tuple(pad_rows(a, block_size).reshape((-1, block_size) + a.shape[1:]) for a in arrays)
  starts = jnp.arange(blocks[0].shape[0], dtype=jnp.int32) * block_size
  return blocks, starts


def _enclosing_centre_radius(lower, upper):
  """Float centre m and radius r with [m - r, m + r] containing [lower, upper] in real numbers.

  m = (lower + upper) / 2 rounds; r = max(upper - m, m - lower) rounded to nearest, then one ulp
  up (`nextafter`), is at least the real max(upper - m, m - lower) (docs/bounds.md §13).
  """
  centre = (lower + upper) / 2
  radius = jnp.nextafter(jnp.maximum(upper - centre, centre - lower), jnp.asarray(jnp.inf, lower.dtype))
  return centre, radius


def _rounding_factor(dtype, dim: int):
  """(d + 8) machine epsilons: covers the rounding of the linear specification's margin
  (docs/bounds.md §13: at most gamma_{d+8} = (d + 8) u / (1 - (d + 8) u) of the sum of its terms'
  magnitudes, u = eps / 2), also after the rounding of that sum."""
  return (dim + 8) * jnp.finfo(dtype).eps


def _linear_order_from_sums(candidate_sq, target_sq, cross_radius, candidate_far, target_far,
                            width, rounding, cross_magnitude=None):
  """(c surely farther than c^, c surely closer) for every query z in the box [m - r, m + r].

  The linear specification of docs/bounds.md §13, from sums computed in floating point:
  candidate_sq = ||m - c||^2, target_sq = ||m - c^||^2, cross_radius = r . |c - c^|,
  candidate_far = max_z ||z - c||, target_far = max_z ||z - c^|| (Kakizaki et al. Eq. 17), width =
  the slack w of the inputs' rounding, rounding = `_rounding_factor`. Over the box,
  ||z - c||^2 - ||z - c^||^2 ranges over candidate_sq - target_sq -+ 2 cross_radius (exactly);
  c is surely farther where its minimum exceeds w (2 target_far + w), closer where minus its
  maximum exceeds w (2 candidate_far + w), each by more than the rounding of the whole sum.
  For the farther decision alone, `cross_radius` may be any upper bound of
  max_z (c^ - c) . (m - z) over the set z ranges in (`jaxcert.bounds.through_encoder` passes
  one bounded through the encoder); `cross_magnitude` is then the sum of the magnitudes of the
  terms it was computed from (default: `cross_radius`, a sum of non-negative terms).
  """
  centre_gap = candidate_sq - target_sq
  cross_magnitude = cross_radius if cross_magnitude is None else cross_magnitude
  magnitude = candidate_sq + target_sq + 2 * cross_magnitude
  farther_margin = width * (2 * target_far + width)
  closer_margin = width * (2 * candidate_far + width)
  farther = centre_gap - 2 * cross_radius - farther_margin > rounding * (magnitude + farther_margin)
  closer = -centre_gap - 2 * cross_radius - closer_margin > rounding * (magnitude + closer_margin)
  return farther, closer


def linear_query_attack_order(query_lower, query_upper, candidates, targets, *,
                              distance_slack: float = DEFAULT_DISTANCE_SLACK
                              ) -> tuple[jax.Array, jax.Array]:
  """Whether candidate c is surely farther from / closer to the attacked query than target c^.

  The query attack's linear specification (docs/bounds.md §13), pair by pair: for every query
  embedding z in the box [query_lower, query_upper], is ||z - c|| > ||z - c^|| (farther) or
  ||z - c|| < ||z - c^|| (closer)? ||z - c||^2 - ||z - c^||^2 is linear in z, so its range over
  the box is exact; the decision is guarded against the inputs' rounding by `distance_slack` (as
  Kakizaki et al.'s Theorem 1 is in `rank_bounds`) and against its own rounding by a bound of it.
  `rank_bounds` evaluates the same decision blocked over the query x top-k x candidate grid; this
  per-pair form is for checks and small grids.

  Args:
    query_lower, query_upper: (..., d) query embedding box.
    candidates, targets: (..., d) candidate embeddings c and c^, broadcast against the box.
    distance_slack: relative rounding of the inputs (module docstring), >= 0.

  Returns:
    `(farther, closer)` boolean arrays of the broadcast leading shape.
  """
  return _linear_order_from_sums(*linear_specification_sums(query_lower, query_upper, candidates,
                                                           targets, distance_slack)[2])


def linear_specification_sums(query_lower, query_upper, candidates, targets, distance_slack):
  """The sums of the query attack's linear specification, pair by pair (shapes broadcast as in
  `linear_query_attack_order`): `(centre m, box magnitude ||B||, sums)` with `sums` the
  arguments of `_linear_order_from_sums` in its order (candidate_sq, target_sq, cross_radius,
  candidate_far, target_far, width, rounding)."""
  centre, radius = _enclosing_centre_radius(query_lower, query_upper)
  dtype = jnp.result_type(centre, candidates, targets)
  candidate_offset, target_offset = centre - candidates, centre - targets
  candidate_sq = jnp.sum(jnp.square(candidate_offset), axis=-1)
  target_sq = jnp.sum(jnp.square(target_offset), axis=-1)
  cross_radius = jnp.sum(radius * jnp.abs(candidates - targets), axis=-1)
  candidate_far = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(candidate_offset) + radius), axis=-1))
  target_far = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(target_offset) + radius), axis=-1))
  magnitude = _box_magnitude(query_lower, query_upper)
  width = distance_slack * (2 * magnitude + jnp.linalg.norm(candidates, axis=-1)
                            + jnp.linalg.norm(targets, axis=-1))
  return centre, magnitude, (candidate_sq, target_sq, cross_radius, candidate_far, target_far,
                             width, _rounding_factor(dtype, centre.shape[-1]))


def _linear_query_attack_counts(q_lower, q_upper, top_emb, top_norm, top_margin, candidate_blocks,
                                num_candidates: int, slack):
  """#{c surely closer than c^} and #{c surely farther}, (B, k) each, by the linear specification.

  `top_margin` (B, k) and the blocks' margins bound how far the real embeddings of c^ and c lie
  from the computed ones (rigorous mode; zeros otherwise): each pair's decision is widened by
  their sum (docs/bounds.md §13, "Rigorous float32: the point margin").

  Per query (`lax.map`) and candidate block, one scan over the d coordinates accumulates
  r . |c - c^| for the (k, block) pairs with ||m - c||^2 and max_z ||z - c||; on a 2-core CPU this
  ran 50x faster than a scan over the candidates reducing (d, B, k) arrays (0.3 s against 17 s
  for 250 queries x 250 candidates, k = 40, d = 128, float64).
  """
  centre, radius = _enclosing_centre_radius(q_lower, q_upper)
  q_magnitude = _box_magnitude(q_lower, q_upper)
  top_offset = centre[:, None] - top_emb
  top_sq = jnp.sum(jnp.square(top_offset), axis=-1)
  top_far = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(top_offset) + radius[:, None]), axis=-1))
  rounding = _rounding_factor(centre.dtype, centre.shape[-1])
  (candidate_emb, candidate_norm, candidate_margin), starts = candidate_blocks
  block_size = candidate_emb.shape[1]
  num_top = top_emb.shape[1]

  def count_candidate_block(counts, block):
    c_emb, c_norm, c_margin, start = block
    valid = start + jnp.arange(block_size) < num_candidates

    def per_query(args):
      q_centre, q_radius, q_top, q_top_sq, q_top_far, q_top_norm, q_top_margin, magnitude = args

      def add_coordinate(sums, coordinate):
        centre_i, radius_i, top_i, c_i = coordinate
        cross_radius, c_sq, c_far_sq = sums
        offset = centre_i - c_i
        return (cross_radius + radius_i * jnp.abs(top_i[:, None] - c_i[None, :]),
                c_sq + jnp.square(offset), c_far_sq + jnp.square(jnp.abs(offset) + radius_i)), None

      zeros = jnp.zeros((block_size,), q_centre.dtype)
      (cross_radius, c_sq, c_far_sq), _ = lax.scan(
          add_coordinate, (jnp.zeros((num_top, block_size), q_centre.dtype), zeros, zeros),
          (q_centre, q_radius, q_top.T, c_emb.T), unroll=8)
      width = (slack * (2 * magnitude + q_top_norm[:, None] + c_norm[None, :])
               + (q_top_margin[:, None] + c_margin[None, :]))
      farther, closer = _linear_order_from_sums(c_sq[None], q_top_sq[:, None], cross_radius,
                                                jnp.sqrt(c_far_sq)[None], q_top_far[:, None],
                                                width, rounding)
      return (jnp.sum(closer & valid, axis=-1, dtype=jnp.int32),
              jnp.sum(farther & valid, axis=-1, dtype=jnp.int32))

    closer, farther = lax.map(per_query, (centre, radius, top_emb, top_sq, top_far, top_norm,
                                          top_margin, q_magnitude))
    return (counts[0] + closer, counts[1] + farther), None

  zeros = jnp.zeros(top_emb.shape[:2], jnp.int32)
  return lax.scan(count_candidate_block, (zeros, zeros),
                  (candidate_emb, candidate_norm, candidate_margin, starts))[0]


@functools.partial(jax.jit,
                   static_argnames=('k', 'block_size', 'candidate_block_size', 'qa_bound',
                                    'outward'))
def _rank_bounds(query_emb, query_lower, query_upper, candidate_emb, candidate_lower,
                 candidate_upper, slack, point_margin, query_point_margin, *, k: int,
                 block_size: int, candidate_block_size: int, qa_bound: str, outward: bool):
  num_candidates = candidate_emb.shape[0]
  candidate_block_size = min(candidate_block_size, num_candidates)
  candidate_norm = jnp.linalg.norm(candidate_emb, axis=-1)
  candidate_magnitude = _box_magnitude(candidate_lower, candidate_upper)
  candidate_blocks = _cut_into_blocks((candidate_emb, candidate_lower, candidate_upper,
                                       candidate_norm, candidate_magnitude, point_margin),
                                      candidate_block_size)
  kakizaki_qa = qa_bound == 'kakizaki'

  def query_point_widened(bounds, q_margin):
    """CA distance bounds from the computed query point widened by its margin (rigorous mode)."""
    if not outward:
      return bounds
    return moved_out(bounds[0], q_margin[:, None], upper=False), moved_out(
        bounds[1], q_margin[:, None], upper=True)

  def per_query_block(sq, index, q_emb, q_lower, q_upper, q_margin):
    del sq  # The clean ranking is `index`.
    q_norm = jnp.linalg.norm(q_emb, axis=-1)[:, None]
    q_magnitude = _box_magnitude(q_lower, q_upper)[:, None]
    # Distance bounds between each query and its top-k c^: QA boxes the query (d_c^(q)), CA boxes
    # the candidate (d_q(c^)).
    if kakizaki_qa:
      qa_top_min, qa_top_max = _widened_distance_bounds(
          q_lower[:, None], q_upper[:, None], candidate_emb[index], q_magnitude,
          candidate_norm[index], slack, outward)
    ca_top_min, ca_top_max = query_point_widened(_widened_distance_bounds(
        candidate_lower[index], candidate_upper[index], q_emb[:, None],
        candidate_magnitude[index], q_norm, slack, outward), q_margin)

    def count_candidate_block(counts, block):
      (c_emb, c_lower, c_upper, c_norm, c_magnitude, _), start = block
      valid = start + jnp.arange(candidate_block_size) < num_candidates
      ca_min, ca_max = query_point_widened(_widened_distance_bounds(
          c_lower[None], c_upper[None], q_emb[:, None], c_magnitude[None], q_norm, slack,
          outward), q_margin)
      columns = (valid, ca_min.T, ca_max.T)
      if kakizaki_qa:
        qa_min, qa_max = _widened_distance_bounds(q_lower[:, None], q_upper[:, None], c_emb[None],
                                                  q_magnitude, c_norm[None], slack, outward)
        columns += (qa_min.T, qa_max.T)

      # One candidate c (a column of the block) at a time, the counts as separate carries: on CPU
      # this ran 70x faster than reducing a (B, k, block) broadcast over its last axis.
      def count_candidate(counts, column):
        c_valid, c_ca_min, c_ca_max, *c_qa = column
        ca_closer, ca_farther, *qa_counts = counts
        counts = (ca_closer + (c_valid & (c_ca_max[:, None] < ca_top_min)),
                  ca_farther + (c_valid & (ca_top_max < c_ca_min[:, None])))
        if kakizaki_qa:
          (c_qa_min, c_qa_max), (qa_closer, qa_farther) = c_qa, qa_counts
          counts += (qa_closer + (c_valid & (c_qa_max[:, None] < qa_top_min)),
                     qa_farther + (c_valid & (qa_top_max < c_qa_min[:, None])))
        return counts, None

      return lax.scan(count_candidate, counts, columns, unroll=8)[0], None

    zeros = jnp.zeros(index.shape, jnp.int32)
    counts, _ = lax.scan(count_candidate_block, (zeros,) * (4 if kakizaki_qa else 2),
                         candidate_blocks)
    ca_closer, ca_farther, *qa_counts = counts
    if not kakizaki_qa:
      (blocks, starts) = candidate_blocks
      qa_counts = _linear_query_attack_counts(
          q_lower, q_upper, candidate_emb[index], candidate_norm[index], point_margin[index],
          ((blocks[0], blocks[3], blocks[5]), starts), num_candidates, slack)
    qa_closer, qa_farther = qa_counts
    return RankBounds(index, qa_closer + 1, num_candidates - qa_farther, ca_closer + 1,
                      num_candidates - ca_farther)

  return retrieval.map_over_query_blocks(
      per_query_block, query_emb, candidate_emb, query_emb, query_lower, query_upper,
      query_point_margin, k=k,
      block_size=block_size, gallery_block_size=candidate_block_size, exclude_self=False)


def _as_box(emb, lower, upper, name: str, distance_slack: float):
  """(emb, lower, upper) as (N, d) arrays of one dtype; ValueError unless lower <= upper and each
  embedding lies in its box up to the slack's widening slack * (||B|| + ||emb||)."""
  emb = retrieval.as_embeddings(emb, f'{name}_emb')
  lower = retrieval.as_embeddings(lower, f'{name}_lower').astype(emb.dtype)
  upper = retrieval.as_embeddings(upper, f'{name}_upper').astype(emb.dtype)
  if lower.shape != emb.shape or upper.shape != emb.shape:
    raise ValueError(f'{name} embeddings {emb.shape} and bounds {lower.shape}, {upper.shape} must '
                     'have the same shape; compute the bounds with embedding_bounds.')
  if not bool(jnp.all(lower <= upper)):
    raise ValueError(f'{name}_lower > {name}_upper somewhere; pass (lower, upper) in that order.')
  outside = jnp.linalg.norm(jnp.maximum(jnp.maximum(lower - emb, emb - upper), 0), axis=-1)
  # A validation of the inputs, not part of the certificate: a few ulps pass also at slack 0.
  tolerance = max(distance_slack, 64 * float(jnp.finfo(emb.dtype).eps))
  allowed = tolerance * (_box_magnitude(lower, upper) + jnp.linalg.norm(emb, axis=-1))
  if not bool(jnp.all(outside <= allowed)):
    row = int(jnp.argmax(outside > allowed))  # the first
    raise ValueError(
        f'{name}_emb[{row}] lies outside its own box [{name}_lower, {name}_upper] (by '
        f'{float(outside[row]):.3g} in L2 norm, more than the rounding allowance max(distance_slack, 64 ulps) * '
        f'(||box|| + ||emb||) = {float(allowed[row]):.3g}): the box of f(x + delta) must contain '
        f'f(x). Pass the clean embeddings and the embedding_bounds of the same images and encoder.')
  return emb, lower, upper


def _per_row(margin, embeddings, name: str):
  """A margin as an (N,) array of the embeddings' dtype; ValueError for another shape."""
  margin = jnp.asarray(margin, embeddings.dtype)
  if margin.ndim and margin.shape != embeddings.shape[:1]:
    raise ValueError(f'{name} must be a scalar or have shape {embeddings.shape[:1]} (one per '
                     f'embedding), got {margin.shape}.')
  return jnp.broadcast_to(margin, embeddings.shape[:1])


def rank_bounds(query_emb, query_lower, query_upper, candidate_emb, candidate_lower,
                candidate_upper, k: int, *, block_size: int = 256, candidate_block_size: int = 256,
                distance_slack: float = DEFAULT_DISTANCE_SLACK,
                qa_bound: str = 'linear', rounding: str = 'nearest',
                point_margin=0., query_point_margin=0.) -> RankBounds:
  """Rank bounds under QA and CA of every query's k nearest candidates.

  For query q and c^ = IR_f(q, C)_j, every c in C (c^ included; it never counts) is compared
  with c^. Under QA, Rank(q + delta, c^, C) lies in [1 + #{c surely closer},
  N - #{c surely farther}] for every ||delta||_inf <= eps, where "surely" is decided over the query
  box, by `qa_bound`:
    'linear' (default): the linear specification, ||z - c||^2 - ||z - c^||^2 bounded exactly over
      the query embedding box (`linear_query_attack_order`, docs/bounds.md §13); never looser
      than Theorem 1;
    'kakizaki': Kakizaki et al.'s Theorem 1, d-bar_c(q) < d-underbar_c^(q) (closer) and
      d-bar_c^(q) < d-underbar_c(q) (farther) from distance bounds (`distance_bounds`), as in the
      paper.
  Under CA, with every candidate perturbed independently, Rank(q, c^ + delta_j, C~) lies in
  [1 + #{c : d-bar_q(c) < d-underbar_q(c^)}, N - #{c : d-bar_q(c^) < d-underbar_q(c)}]
  (Kakizaki et al. Theorem 2; docs/bounds.md §11 proves both theorems, and why Eq. 11's
  d-underbar_c(c) must read d-underbar_q(c)).

  Blocked: queries `block_size` at a time (`retrieval.map_over_query_blocks`, which also gives the
  clean top-k), and inside, candidates `candidate_block_size` at a time; memory holds
  O(block_size x candidate_block_size x (d + k)) values, never the (Nq, N) grid, and one compiled
  shape serves the whole grid. The linear QA specification costs O(Nq x k x N x d) (Theorem 1:
  O(Nq x N x d)).

  Args:
    query_emb: (Nq, d) clean query embeddings f(q).
    query_lower, query_upper: (Nq, d) bounds of f(q + delta) (`embedding_bounds`).
    candidate_emb: (N, d) clean candidate embeddings f(c).
    candidate_lower, candidate_upper: (N, d) bounds of f(c + delta).
    k: how many nearest candidates per query, 1 <= k <= N.
    block_size: query rows per block.
    candidate_block_size: candidates per block.
    distance_slack: widening of every comparison against rounding (module docstring), >= 0.
    qa_bound: the QA certificate, one of QUERY_ATTACK_BOUNDS.
    rounding: 'outward' computes every distance bound rounded outwards
      (`jaxcert.bounds.rounding.outward_distance_bounds`): with boxes from
      `embedding_bounds(..., bound=outward_interval)` widened by
      `jaxcert.bounds.rounding.widen_for_points`, and `point_margin` bounding how far the real
      candidate embeddings lie from `candidate_emb`, the rank bounds hold for the real-valued
      encoder with `distance_slack = 0` (docs/rigorous_float32.md §6).
    point_margin: an upper bound of ||y - candidate_emb[i]||_2, y the real embedding of candidate
      i, as a scalar (for every candidate) or an (N,) array (one per candidate,
      `rounding.outward_distance_bounds` of its eps = 0 box to `candidate_emb[i]`)
      embedding (rigorous mode); the linear QA specification widens its decisions by it
      (docs/bounds.md §13), the distance bounds of Theorem 1 take it through the widened boxes.
    query_point_margin: the same for the queries, a scalar or (Nq,) (rigorous mode): Theorem 2's
      distance bounds from the computed query point to candidate boxes are widened by it
      (docs/rigorous_float32.md §6).

  Returns:
    A `RankBounds` of (Nq, k) int32 arrays.

  Raises:
    ValueError: malformed or non-finite inputs, lower > upper, a clean embedding outside its box,
      k out of range, or an unknown qa_bound.
  """
  if qa_bound not in QUERY_ATTACK_BOUNDS:
    raise ValueError(f'Unknown qa_bound {qa_bound!r}; valid: {list(QUERY_ATTACK_BOUNDS)}.')
  if not distance_slack >= 0:
    raise ValueError(f'distance_slack must be >= 0, got {distance_slack}.')
  if rounding not in ROUNDING_MODES:
    raise ValueError(f'Unknown rounding {rounding!r}; valid: {list(ROUNDING_MODES)}.')
  for name, margin in (('point_margin', point_margin), ('query_point_margin', query_point_margin)):
    if is_concrete(margin) and not np.all(np.asarray(margin) >= 0):
      raise ValueError(f'{name} must be >= 0, got {np.asarray(margin).min()}.')
  query_emb, query_lower, query_upper = _as_box(query_emb, query_lower, query_upper, 'query',
                                                distance_slack)
  candidate_emb, candidate_lower, candidate_upper = _as_box(
      candidate_emb, candidate_lower, candidate_upper, 'candidate', distance_slack)
  candidate_block_size = retrieval.check_topk_arguments(
      query_emb, candidate_emb, k, block_size, candidate_block_size, exclude_self=False)
  return _rank_bounds(query_emb, query_lower, query_upper, candidate_emb, candidate_lower,
                      candidate_upper, jnp.asarray(distance_slack, query_emb.dtype),
                      _per_row(point_margin, candidate_emb, 'point_margin'),
                      _per_row(query_point_margin, query_emb, 'query_point_margin'), k=int(k),
                      block_size=int(block_size), candidate_block_size=candidate_block_size,
                      qa_bound=qa_bound, outward=rounding == 'outward')


def verify(rank_lower, rank_upper, rank, alpha):
  """Verify_{alpha, eps} (Kakizaki et al. Eq. 19): the sufficient condition of Theorem 3 (QA) or 4 (CA).

  (alpha, eps)-robustness at c^ = IR_f(q, C)_j holds if N - #farther - j <= alpha and
  #closer + 1 - j >= -alpha (Eqs. 13-14), i.e. `rank_upper - j <= alpha` and
  `rank_lower - j >= -alpha` with the bounds of `rank_bounds`.

  Args:
    rank_lower, rank_upper: rank bounds (any broadcastable shapes).
    rank: the clean rank j.
    alpha: the allowed rank change, >= 0.

  Returns:
    Boolean array: True where robustness is certified.
  """
  return (rank_upper - rank <= alpha) & (rank_lower - rank >= -alpha)


ATTACKS = ('qa', 'ca')


def certified_retrieval(bounds: RankBounds, query_labels, candidate_labels,
                        ks: Sequence[int]) -> dict[str, np.ndarray]:
  """Per query and K: a same-class candidate in the top K whose place in the top K is certified.

  The summand of CR-Recall@K (Kakizaki et al. Eq. 25): some c in IR_f(q, C)_{<=K} with y_c = y_q and
  Verify_{alpha, eps}(f, q, C, j) with j = Rank_f(q, c, C) and alpha = K - j, so that c stays in
  the top K (at a rank in [2j - K, K]) under every attack.

  Args:
    bounds: `rank_bounds(...)` with k >= max(ks).
    query_labels: (Nq,) integer classes.
    candidate_labels: (N,) integer classes.
    ks: the K values, each in [1, k].

  Returns:
    {'qa': (Nq, len(ks)) bool, 'ca': (Nq, len(ks)) bool}.

  Raises:
    ValueError: labels whose shapes do not match the rank bounds (never broadcast), or ks out of
      range.
  """
  query_labels = np.asarray(query_labels)
  candidate_labels = np.asarray(candidate_labels)
  indices = np.asarray(bounds.indices)
  num_queries, max_k = indices.shape
  if query_labels.shape != (num_queries,):
    raise ValueError(f'query_labels must have shape ({num_queries},) (one label per query of the '
                     f'rank bounds), got {query_labels.shape}.')
  if candidate_labels.ndim != 1 or (indices.size and indices.max() >= len(candidate_labels)):
    raise ValueError(f'candidate_labels must be one label per candidate, a (N,) array covering '
                     f'the candidate indices of the rank bounds (up to {indices.max()}), got shape '
                     f'{candidate_labels.shape}.')
  if not ks or any(int(k) != k or not 1 <= k <= max_k for k in ks):
    raise ValueError(f'ks must be integers in [1, {max_k}] (the k of rank_bounds), got {tuple(ks)}.')
  same_class = candidate_labels[indices] == query_labels[:, None]
  rank = np.arange(1, max_k + 1)[None, :]
  ends = {'qa': (bounds.query_attack_lower, bounds.query_attack_upper),
          'ca': (bounds.candidate_attack_lower, bounds.candidate_attack_upper)}
  certified = {}
  for attack, (lower, upper) in ends.items():
    lower, upper = np.asarray(lower), np.asarray(upper)
    columns = [np.any(same_class & (rank <= k) & verify(lower, upper, rank, k - rank), axis=1)
               for k in ks]
    certified[attack] = np.stack(columns, axis=1)
  return certified


def cr_recall_at_k(certified: dict[str, np.ndarray],
                   ks: Sequence[int]) -> dict[str, dict[int, float]]:
  """CR-Recall@K (Kakizaki et al. Eq. 25) under QA and CA: {'qa': {K: value}, 'ca': {K: value}}.

  Args:
    certified: `certified_retrieval(bounds, query_labels, candidate_labels, ks)`.
    ks: the same K values.
  """
  return {attack: {int(k): float(hits[:, i].mean()) for i, k in enumerate(ks)}
          for attack, hits in certified.items()}
