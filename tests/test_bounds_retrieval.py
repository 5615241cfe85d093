"""Tests of certified retrieval `jaxcert.bounds.retrieval` and the 'ibp' mode (Kakizaki et al.).

The query attack's linear specification (docs/bounds.md §13, the default QA certificate) is checked
against a pairwise brute force for several block shapes, against exact rational arithmetic in
float64, against sampled and sign-gradient-attacked query embeddings inside their boxes, on float32
embeddings far from the origin where the naive form of the same bound is false, and against
Kakizaki et al.'s Theorem 1, which it must never be looser than.

Distance bounds (Theorems 5-6) are checked by hand, against dense samples and attained points of
embedding boxes, and through an encoder against sampled and PGD-attacked perturbations. Rank
bounds (Theorems 1-2) are checked against a brute-force count, for several block shapes, and
against attacks: the rank of every top-k candidate under sampled perturbations and under PGD
attacks that push it down and up (QA: the query perturbed; CA: every candidate perturbed
independently) stays inside its bounds, so a certified rank is never beaten.
"""

from fractions import Fraction
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from configs import default
from jaxcert import attacks
from jaxcert import certification
from jaxcert import data
from jaxcert import models
from jaxcert.bounds import retrieval as br
from jaxcert.bounds.interval import interval
from jaxcert.evaluation import ibp
import test_interval


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  with jax.default_matmul_precision('highest'):
    yield


def _small_encoder(image_shape=(12, 12, 1), embedding_dim=8, l2_normalize=False, seed=1):
  model = models.get_model('small_cnn', embedding_dim=embedding_dim, l2_normalize=l2_normalize,
                           input_mean=0.4, input_std=0.3)
  variables = test_interval._init(model, jnp.zeros((1,) + image_shape), seed=seed)  # pylint: disable=protected-access
  return model, variables, jax.tree_util.Partial(model.apply, variables)


def _images(seed, num, shape=(12, 12, 1)):
  return test_interval._uniform(seed, (num,) + shape)  # pylint: disable=protected-access


# --- Theorems 5-6: distance bounds. ---------------------------------------------------------------


def test_distance_bounds_hand_computed():
  # Box [0, 1] x [0, 2], point (3, 1): nearest (1, 1) at 2, farthest (0, 0) or (0, 2) at sqrt(10).
  min_d, max_d = br.distance_bounds(jnp.array([0., 0.]), jnp.array([1., 2.]), jnp.array([3., 1.]))
  np.testing.assert_allclose([min_d, max_d], [2., np.sqrt(10.)], rtol=1e-6)
  # A point inside the box: the lower bound is 0 (Eq. 18's min with 0).
  min_d, max_d = br.distance_bounds(jnp.array([0., 0.]), jnp.array([1., 2.]), jnp.array([.5, 1.]))
  np.testing.assert_allclose([min_d, max_d], [0., np.sqrt(.25 + 1.)], rtol=1e-6)


def test_distance_bounds_sound_and_attained_on_samples():
  rng = np.random.default_rng(0)
  for _ in range(5):
    center = rng.normal(size=(6,))
    radius = rng.uniform(0, 1, size=(6,)) * (rng.random(6) < 0.8)
    lower, upper = center - radius, center + radius
    point = rng.normal(size=(6,)) * 1.5
    samples = np.asarray(test_interval._sample_box(1, lower, upper, 4000))  # pylint: disable=protected-access
    distances = np.linalg.norm(samples - point, axis=-1)
    min_d, max_d = map(float, br.distance_bounds(jnp.asarray(lower), jnp.asarray(upper),
                                                 jnp.asarray(point)))
    assert distances.min() >= min_d - 1e-5 and distances.max() <= max_d + 1e-5
    # Attained: the box's nearest point and its farthest corner.
    nearest = np.clip(point, lower, upper)
    farthest = np.where(np.abs(point - lower) > np.abs(point - upper), lower, upper)
    np.testing.assert_allclose(np.linalg.norm(nearest - point), min_d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(farthest - point), max_d, rtol=1e-5, atol=1e-6)


def _distance_loss(x, embed, point_emb, direction):
  """direction * ||embed(x) - point|| per example (PGD maximises it)."""
  return direction * jnp.linalg.norm(embed(x) - point_emb, axis=-1)


@pytest.mark.parametrize('l2_normalize', [False, True], ids=['plain', 'l2'])
def test_distance_bounds_hold_for_sampled_and_attacked_perturbations(l2_normalize):
  _, _, embed = _small_encoder(l2_normalize=l2_normalize)
  eps = 0.03
  x1, x2 = _images(0, 4), _images(1, 4)
  lower, upper = br.embedding_bounds(embed, x1, eps)
  point_emb = embed(x2)
  min_d, max_d = map(np.asarray, br.distance_bounds(lower, upper, point_emb))
  assert np.all(min_d <= max_d)
  # Dense samples of the input box (corners, uniform, ends).
  rng = np.random.default_rng(0)
  deltas = np.concatenate([rng.choice([-eps, eps], size=(128,) + x1.shape),  # corners
                           rng.uniform(-eps, eps, (128,) + x1.shape)])
  perturbed = np.clip(np.asarray(x1)[None] + deltas, 0, 1).reshape((-1,) + x1.shape[1:])
  sampled = np.linalg.norm(np.asarray(embed(perturbed)).reshape(256, 4, -1)
                           - np.asarray(point_emb)[None], axis=-1)
  tolerance = 1e-5 * (1 + max_d)
  assert np.all(sampled >= min_d - tolerance) and np.all(sampled <= max_d + tolerance)
  # PGD pushing the distance up and down (jaxcert.attacks.pgd).
  for direction in (1., -1.):
    attack = attacks.pgd(_distance_loss, eps=eps, step_size=eps / 10, num_steps=30)
    x_adv = attack(jax.random.key(2), x1, embed, point_emb, jnp.full((4,), direction))
    attacked = np.linalg.norm(np.asarray(embed(x_adv) - point_emb), axis=-1)
    assert np.all(attacked >= min_d - tolerance) and np.all(attacked <= max_d + tolerance)
    moved = attacked - np.linalg.norm(np.asarray(embed(x1) - point_emb), axis=-1)
    assert np.all(direction * moved > 0)  # The attack makes progress toward its bound.


# --- Theorems 1-2: rank bounds. -------------------------------------------------------------------


def _brute_force_rank_bounds(query_emb, query_box, candidate_emb, candidate_box, k):
  """Eqs. 9-12 by explicit loops over the (Nq, N) grid of distance bounds."""
  qa_min, qa_max = map(np.asarray, br.distance_bounds(query_box[0][:, None], query_box[1][:, None],
                                                      candidate_emb[None]))
  ca_min, ca_max = map(np.asarray, br.distance_bounds(candidate_box[0][None],
                                                      candidate_box[1][None], query_emb[:, None]))
  distances = np.linalg.norm(query_emb[:, None] - candidate_emb[None], axis=-1)
  indices = np.argsort(distances, axis=1, kind='stable')[:, :k]
  num = candidate_emb.shape[0]
  out = np.zeros((4,) + indices.shape, np.int64)
  for q in range(indices.shape[0]):
    for j, c in enumerate(indices[q]):
      out[:, q, j] = (1 + np.sum(qa_max[q] < qa_min[q, c]), num - np.sum(qa_max[q, c] < qa_min[q]),
                      1 + np.sum(ca_max[q] < ca_min[q, c]), num - np.sum(ca_max[q, c] < ca_min[q]))
  return indices, out


def _random_boxes(seed, num, dim, scale):
  rng = np.random.default_rng(seed)
  emb = rng.normal(size=(num, dim)).astype(np.float32)
  lower = emb - rng.uniform(0, scale, (num, dim)).astype(np.float32)
  upper = emb + rng.uniform(0, scale, (num, dim)).astype(np.float32)
  return emb, lower, upper


@pytest.mark.parametrize('block_size, candidate_block_size', [(7, 16), (64, 64), (1, 53)])
def test_rank_bounds_match_brute_force_for_any_blocks(block_size, candidate_block_size):
  query_emb, *query_box = _random_boxes(0, 37, 5, 0.3)
  candidate_emb, *candidate_box = _random_boxes(1, 53, 5, 0.3)
  bounds = br.rank_bounds(query_emb, *query_box, candidate_emb, *candidate_box, 10,
                          block_size=block_size, candidate_block_size=candidate_block_size,
                          distance_slack=0., qa_bound='kakizaki')
  indices, expected = _brute_force_rank_bounds(query_emb, query_box, candidate_emb, candidate_box,
                                               10)
  np.testing.assert_array_equal(bounds.indices, indices)
  np.testing.assert_array_equal(np.stack(bounds[1:]), expected)
  # Clean ranks lie inside their bounds.
  rank = np.arange(1, 11)
  for lower, upper in ((bounds.query_attack_lower, bounds.query_attack_upper),
                       (bounds.candidate_attack_lower, bounds.candidate_attack_upper)):
    assert np.all(np.asarray(lower) <= rank) and np.all(rank <= np.asarray(upper))


@pytest.mark.parametrize('scale', [1.0, 1e-4])
def test_zero_radius_gives_exact_ranks_and_cr_recall_equals_recall(scale):
  # At scale 1e-4 neighbour distances (~1e-4) are ten times an absolute 1e-5 slack: the slack must
  # scale with the embeddings for eps = 0 to certify every clean ranking.
  query_emb = scale * np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
  candidate_emb = scale * np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
  bounds = br.rank_bounds(query_emb, query_emb, query_emb, candidate_emb, candidate_emb,
                          candidate_emb, 10, block_size=8, candidate_block_size=8)
  rank = np.broadcast_to(np.arange(1, 11), (20, 10))
  for ranks in bounds[1:]:
    np.testing.assert_array_equal(ranks, rank)
  query_labels = np.arange(20) % 3
  candidate_labels = np.arange(30) % 3
  certified = br.certified_retrieval(bounds, query_labels, candidate_labels, (1, 5, 10))
  hits = candidate_labels[np.asarray(bounds.indices)] == query_labels[:, None]
  for attack in br.ATTACKS:
    np.testing.assert_array_equal(
        certified[attack], np.stack([hits[:, :k].any(1) for k in (1, 5, 10)], 1))


def test_rank_bounds_are_invariant_to_scaling_the_encoder():
  """c f has the rankings and interval boxes of f scaled by c (c > 0), so every rank bound must be
  the same; c a power of two scales every float exactly. Clustered embeddings (spread 1e-3 around
  one point) with boxes of comparable width make many comparisons near-ties of the slack."""
  rng = np.random.default_rng(3)
  centre = rng.normal(size=(1, 6)).astype(np.float32)
  def boxes(num):
    emb = centre + 1e-3 * rng.normal(size=(num, 6)).astype(np.float32)
    radius = rng.uniform(0, 2e-4, (num, 6)).astype(np.float32)
    return emb, emb - radius, emb + radius
  query, candidate = boxes(40), boxes(60)
  reference = br.rank_bounds(*query, *candidate, 10, block_size=16, candidate_block_size=16)
  for c in (2.0 ** -12, 2.0 ** 10):
    scaled = br.rank_bounds(*(c * a for a in query), *(c * a for a in candidate), 10,
                            block_size=16, candidate_block_size=16)
    for got, want in zip(scaled, reference):
      np.testing.assert_array_equal(got, want)
  # The slack does matter here: without it more ranks are pinned.
  unslacked = br.rank_bounds(*query, *candidate, 10, block_size=16, candidate_block_size=16,
                             distance_slack=0.)
  assert np.sum(unslacked.query_attack_upper) < np.sum(reference.query_attack_upper)


def test_verify_and_cr_recall_with_alpha_k_minus_rank():
  # One query, k = 4 ranked candidates; labels: candidates 0 and 2 share the query's class.
  bounds = br.RankBounds(
      indices=np.array([[0, 1, 2, 3]]),
      query_attack_lower=np.array([[1, 1, 1, 4]]),
      query_attack_upper=np.array([[3, 4, 4, 4]]),
      candidate_attack_lower=np.array([[1, 1, 3, 1]]),
      candidate_attack_upper=np.array([[1, 5, 3, 5]]),
  )
  # verify(): |Rank - j| <= alpha for every rank in [lower, upper].
  assert bool(br.verify(1, 3, 1, 2)) and not bool(br.verify(1, 4, 1, 2))
  assert not bool(br.verify(2, 4, 4, 1)) and bool(br.verify(3, 4, 4, 1))
  certified = br.certified_retrieval(bounds, np.array([7]), np.array([7, 0, 7, 0]), (1, 2, 3, 4))
  # QA: candidate 0 (j = 1) may fall to rank 3: certified from K = 3 on (alpha = K - 1 >= 2).
  np.testing.assert_array_equal(certified['qa'], [[False, False, True, True]])
  # CA: candidate 0 stays at rank 1 (every K); candidate 2 at exactly rank 3.
  np.testing.assert_array_equal(certified['ca'], [[True, True, True, True]])
  recall = br.cr_recall_at_k(certified, (1, 2, 3, 4))
  assert recall == {'qa': {1: 0., 2: 0., 3: 1., 4: 1.}, 'ca': {1: 1., 2: 1., 3: 1., 4: 1.}}
  # With alpha = K - j the lower end matters too: rank 3 of 4 certified at K = 4 needs rank >= 2.
  lower_fails = bounds._replace(candidate_attack_lower=np.array([[1, 1, 1, 1]]),
                                candidate_attack_upper=np.array([[5, 5, 4, 5]]))
  certified = br.certified_retrieval(lower_fails, np.array([7]), np.array([7, 0, 7, 0]), (4,))
  assert not certified['ca'][0, 0]


def _soft_rank_loss(x, embed, target_emb, candidate_emb, direction, temperature):
  """direction * (soft count of candidates closer to embed(x) than the target)."""
  emb = embed(x)
  target_distance = jnp.linalg.norm(emb - target_emb, axis=-1)
  distances = jnp.linalg.norm(emb[:, None] - candidate_emb[None], axis=-1)
  return direction * jnp.sum(jax.nn.sigmoid((target_distance[:, None] - distances) / temperature),
                             axis=-1)


def _ranks(distances, target):
  """Rank of candidate `target[i]` in row i of `distances` (ties by index), 1-based."""
  rows = np.arange(distances.shape[0])
  target_distance = distances[rows, target][:, None]
  index = np.arange(distances.shape[1])[None]
  ahead = (distances < target_distance) | ((distances == target_distance) & (index < target[:, None]))
  return 1 + ahead.sum(1)


def _assert_ranks_within(ranks, lower, upper, what):
  lower, upper = np.asarray(lower), np.asarray(upper)
  assert np.all(lower <= ranks) and np.all(ranks <= upper), (
      f'{what}: {np.sum((ranks < lower) | (ranks > upper))} ranks outside their bounds')


# Radii at which random-weight encoders have some certified and some uncertified ranks (IBP
# widths grow with depth: the CNN needs a much smaller box than the linear map).
@pytest.fixture(scope='module', params=[('small_cnn', 3e-5), ('linear', 1e-3)],
                ids=['small_cnn', 'linear'])
def certified_grid(request):
  """An encoder, 6 queries and 40 candidates, and their rank bounds."""
  name, eps = request.param
  k = 10
  with jax.default_matmul_precision('highest'):
    model = models.get_model(name, embedding_dim=8, input_mean=0.4, input_std=0.3)
    variables = test_interval._init(model, jnp.zeros((1, 12, 12, 1)), seed=1)  # pylint: disable=protected-access
    embed = jax.tree_util.Partial(model.apply, variables)
    queries, candidates = _images(10, 6), _images(11, 40)
    query_emb, candidate_emb = np.asarray(embed(queries)), np.asarray(embed(candidates))
    bounds = br.rank_bounds(query_emb, *br.embedding_bounds(embed, queries, eps), candidate_emb,
                            *br.embedding_bounds(embed, candidates, eps), k, block_size=4,
                            candidate_block_size=16)
  return embed, queries, candidates, eps, k, query_emb, candidate_emb, bounds


def _certified_ranks_hold(bounds, ranks, lower, upper, k, what):
  """Every rank within its bounds, and where Verify certifies (alpha = K - j), within [2j-K, K]."""
  _assert_ranks_within(ranks, lower, upper, what)
  position = np.arange(1, k + 1)[None]
  num_certified = 0
  for big_k in range(1, k + 1):
    certified = br.verify(np.asarray(lower), np.asarray(upper), position, big_k - position)
    certified &= position <= big_k
    num_certified += certified.sum()
    assert np.all(~certified | ((ranks <= big_k) & (ranks >= 2 * position - big_k))), what
  return num_certified


def test_query_attack_never_beats_rank_bounds(certified_grid):
  embed, queries, _, eps, k, query_emb, candidate_emb, bounds = certified_grid
  num_queries = queries.shape[0]
  # (query, j) pairs flattened; the query repeated for each of its k targets.
  targets = np.asarray(bounds.indices).ravel()
  repeated = jnp.repeat(queries, k, axis=0)
  temperature = 0.05 * float(np.median(np.linalg.norm(query_emb[:, None] - candidate_emb[None],
                                                      axis=-1)))
  attacked_ranks = []
  for direction in (1., -1.):
    attack = attacks.pgd(_soft_rank_loss, eps=eps, step_size=eps / 10, num_steps=40)
    x_adv = attack(jax.random.key(3), repeated, embed, jnp.asarray(candidate_emb[targets]),
                   jnp.asarray(candidate_emb), jnp.full((len(targets),), direction), temperature)
    distances = np.linalg.norm(np.asarray(embed(x_adv))[:, None] - candidate_emb[None], axis=-1)
    attacked_ranks.append(_ranks(distances, targets).reshape(num_queries, k))
  rng = np.random.default_rng(4)
  for _ in range(8):  # Random points of the query boxes.
    x = np.clip(np.asarray(queries) + rng.uniform(-eps, eps, queries.shape), 0, 1)
    distances = np.linalg.norm(np.asarray(embed(jnp.asarray(x)))[:, None] - candidate_emb[None],
                               axis=-1)
    attacked_ranks.append(_ranks(np.repeat(distances, k, 0), targets).reshape(num_queries, k))
  num_certified = 0
  for ranks in attacked_ranks:
    num_certified += _certified_ranks_hold(bounds, ranks, bounds.query_attack_lower,
                                           bounds.query_attack_upper, k, 'QA')
  clean = np.arange(1, k + 1)[None]
  assert np.any(attacked_ranks[0] != clean) or np.any(attacked_ranks[1] != clean)  # Attacks bite.
  assert num_certified > 0  # Some ranks are certified, so the check is not vacuous.


def test_candidate_attack_never_beats_rank_bounds(certified_grid):
  embed, queries, candidates, eps, k, query_emb, candidate_emb, bounds = certified_grid
  num_queries, num_candidates = queries.shape[0], candidates.shape[0]
  # Every candidate pushed toward and away from every query (one PGD run each, independently).
  images = jnp.tile(candidates, (num_queries, 1, 1, 1))
  points = jnp.asarray(np.repeat(query_emb, num_candidates, axis=0))
  moved = {}
  for name, direction in (('away', 1.), ('toward', -1.)):
    attack = attacks.pgd(_distance_loss, eps=eps, step_size=eps / 10, num_steps=40)
    x_adv = attack(jax.random.key(5), images, embed, points, jnp.full((len(images),), direction))
    moved[name] = np.linalg.norm(np.asarray(embed(x_adv)) - np.asarray(points), axis=-1).reshape(
        num_queries, num_candidates)
  indices = np.asarray(bounds.indices)
  rows = np.arange(num_queries)[:, None]
  ranks = {}
  for name, target_world, other_world in (('worse', 'away', 'toward'),
                                          ('better', 'toward', 'away')):
    per_rank = []
    for j in range(k):  # c^ moved one way, every other candidate the other way.
      distances = moved[other_world].copy()
      distances[rows[:, 0], indices[:, j]] = moved[target_world][rows[:, 0], indices[:, j]]
      per_rank.append(_ranks(distances, indices[:, j]))
    ranks[name] = np.stack(per_rank, axis=1)
  rng = np.random.default_rng(6)
  sampled = []
  for _ in range(4):  # Independent random points of every candidate box.
    x = np.clip(np.asarray(candidates) + rng.uniform(-eps, eps, candidates.shape), 0, 1)
    distances = np.linalg.norm(query_emb[:, None] - np.asarray(embed(jnp.asarray(x)))[None],
                               axis=-1)
    sampled.append(np.stack([_ranks(distances, indices[:, j]) for j in range(k)], axis=1))
  num_certified = 0
  for what, attacked in [('CA worse', ranks['worse']), ('CA better', ranks['better'])] + [
      ('CA sampled', s) for s in sampled]:
    num_certified += _certified_ranks_hold(bounds, attacked, bounds.candidate_attack_lower,
                                           bounds.candidate_attack_upper, k, what)
  clean = np.arange(1, k + 1)[None]
  assert np.any(ranks['worse'] != clean) or np.any(ranks['better'] != clean)
  assert num_certified > 0


# --- The query attack's linear specification (docs/bounds.md §13). -------------------------------


def _exact_spec_range(lower, upper, candidate, target):
  """min and max of ||z - c||^2 - ||z - c^||^2 over the real box [lower, upper], in exact rationals.

  The function is a sum over coordinates of (c^_i - c_i)(2 z_i - c_i - c^_i), linear in each z_i,
  so its extremes take each coordinate at an end."""
  low = high = Fraction(0)
  for l, u, c, t in zip(*(map(Fraction, map(float, a)) for a in (lower, upper, candidate, target))):
    ends = [(t - c) * (2 * z - c - t) for z in (l, u)]
    low, high = low + min(ends), high + max(ends)
  return low, high


def _linear_brute_force(query_box, candidate_emb, indices, slack):
  """Rank bounds under QA from `linear_query_attack_order` over the whole (Nq, k, N) grid."""
  targets = candidate_emb[np.asarray(indices)][:, :, None]
  farther, closer = br.linear_query_attack_order(
      query_box[0][:, None, None], query_box[1][:, None, None], candidate_emb[None, None], targets,
      distance_slack=slack)
  return 1 + np.sum(closer, -1), candidate_emb.shape[0] - np.sum(farther, -1)


@pytest.mark.parametrize('block_size, candidate_block_size', [(7, 16), (64, 64)])
def test_linear_rank_bounds_match_pairwise_brute_force_for_any_blocks(block_size,
                                                                       candidate_block_size):
  query_emb, *query_box = _random_boxes(0, 37, 5, 0.3)
  candidate_emb, *candidate_box = _random_boxes(1, 53, 5, 0.3)
  for slack in (0., br.DEFAULT_DISTANCE_SLACK):
    bounds = br.rank_bounds(query_emb, *query_box, candidate_emb, *candidate_box, 10,
                            block_size=block_size, candidate_block_size=candidate_block_size,
                            distance_slack=slack)
    lower, upper = _linear_brute_force(query_box, candidate_emb, bounds.indices, slack)
    np.testing.assert_array_equal(bounds.query_attack_lower, lower)
    np.testing.assert_array_equal(bounds.query_attack_upper, upper)
    kakizaki = br.rank_bounds(query_emb, *query_box, candidate_emb, *candidate_box, 10,
                              block_size=block_size, candidate_block_size=candidate_block_size,
                              distance_slack=slack, qa_bound='kakizaki')
    for field in ('indices', 'candidate_attack_lower', 'candidate_attack_upper'):  # CA unchanged.
      np.testing.assert_array_equal(getattr(bounds, field), getattr(kakizaki, field))


def test_linear_specification_is_exact_in_float64_against_rationals():
  """Every decision agrees with exact rational arithmetic on the float64 inputs: none is false
  (sound), and none is missed unless within 1e-12 of a tie (exact), also on cases built to lie
  within rounding of a tie, where the rounding guard must refuse rather than guess."""
  rng = np.random.default_rng(7)
  cases = []
  for _ in range(300):  # Random boxes and pairs, 3 coordinates.
    centre, candidate, target = rng.normal(size=(3, 3))
    radius = rng.uniform(0, 0.8, 3)
    cases.append((centre - radius, centre + radius, candidate, target))
  for step in range(-40, 41):  # Ties: radius chosen so that min over the box is 0, +- a few ulps.
    centre, candidate, target = rng.normal(size=(3, 3))
    gap = np.sum((centre - candidate) ** 2) - np.sum((centre - target) ** 2)
    radius = abs(gap) / (2 * np.sum(np.abs(candidate - target))) * (1 + step * 2.0 ** -52)
    cases.append((centre - radius, centre + radius, candidate, target))
  cases.append((np.array([0.]), np.array([1.]), np.array([2.]), np.array([0.])))  # min exactly 0.
  with jax.enable_x64(True):
    lower, upper, candidate, target = (np.stack(a) for a in zip(*[
        tuple(np.broadcast_to(np.asarray(x, np.float64), (3,)) for x in case)
        for case in cases[:-1]]))
    farther, closer = map(np.asarray, br.linear_query_attack_order(lower, upper, candidate,
                                                                   target, distance_slack=0.))
    tie = br.linear_query_attack_order(*(jnp.asarray(a) for a in cases[-1]), distance_slack=0.)
  assert not bool(tie[0]) and not bool(tie[1])
  num_decided = 0
  for i in range(len(lower)):
    low, high = _exact_spec_range(lower[i], upper[i], candidate[i], target[i])
    assert not farther[i] or low > 0, f'case {i}: certified farther, exact min {float(low)}'
    assert not closer[i] or high < 0, f'case {i}: certified closer, exact max {float(high)}'
    scale = float(np.sum((lower[i] - candidate[i]) ** 2 + (upper[i] - target[i]) ** 2) + 1)
    if low > 1e-12 * scale:
      assert farther[i], f'case {i}: exact min {float(low)} > 0 not certified'
    if high < -1e-12 * scale:
      assert closer[i], f'case {i}: exact max {float(high)} < 0 not certified'
    num_decided += farther[i] + closer[i]
  assert 100 < num_decided < len(lower)


def _spec(z, candidate, target):
  return jnp.sum(jnp.square(z - candidate), -1) - jnp.sum(jnp.square(z - target), -1)


def test_linear_specification_attained_by_sign_gradient_descent_on_the_query_embedding():
  """Sign-gradient steps on z inside its box push ||z - c||^2 - ||z - c^||^2 toward its bound: they
  never cross it where a pair is certified, and reach it (make the order flip or tie) wherever the
  pair is not certified: the specification is exact over the box."""
  rng = np.random.default_rng(8)
  with jax.enable_x64(True):
    centre = rng.normal(size=(400, 6))
    radius = rng.uniform(0, 0.5, (400, 6))
    lower, upper = jnp.asarray(centre - radius), jnp.asarray(centre + radius)
    candidate, target = (jnp.asarray(rng.normal(size=(400, 6))) for _ in range(2))
    farther, closer = map(np.asarray, br.linear_query_attack_order(lower, upper, candidate, target,
                                                                   distance_slack=0.))
    @jax.jit
    def descend(z, direction):
      def step(z, size):
        push = jnp.sign(jax.grad(lambda z: jnp.sum(_spec(z, candidate, target)))(z))
        return jnp.clip(z + direction * size * push * (upper - lower), lower, upper), None
      return lax.scan(step, z, 0.3 * 0.8 ** jnp.arange(20))[0]

    for direction, certified, what in ((-1., farther, 'farther'), (1., closer, 'closer')):
      z = descend(jnp.asarray(rng.uniform(lower, upper)), direction)  # From a random box point.
      value = direction * np.asarray(_spec(z, candidate, target))
      assert np.all(value[certified] < 0), what  # Never beyond a certified bound.
      assert np.all(value[~certified] >= -1e-12), what  # The bound is reached elsewhere.
      assert 50 < certified.sum() < 350


def _soft_rank_of_target(z, candidate_emb, target, direction, temperature):
  distances = jnp.sum(jnp.square(z[:, None] - candidate_emb[None]), -1)
  target_distance = jnp.take_along_axis(distances, target[:, None], 1)
  return direction * jnp.sum(jax.nn.sigmoid((target_distance - distances) / temperature))


def test_linear_query_attack_rank_bounds_hold_for_sampled_and_attacked_query_embeddings():
  """The true rank of every top-k candidate, for query embeddings sampled in their boxes (corners,
  uniform) and pushed by sign-gradient steps on a soft rank, lies within the linear QA bounds."""
  k, num_queries = 10, 37  # The shapes of the brute-force test above: one compilation.
  query_emb, *query_box = _random_boxes(10, num_queries, 5, 0.4)
  candidate_emb, *candidate_box = _random_boxes(11, 53, 5, 0.4)
  bounds = br.rank_bounds(query_emb, *query_box, candidate_emb, *candidate_box, k, block_size=7,
                          candidate_block_size=16)
  lower, upper = np.asarray(bounds.query_attack_lower), np.asarray(bounds.query_attack_upper)
  indices = np.asarray(bounds.indices)
  ranks = []
  samples = np.asarray(test_interval._sample_box(12, query_box[0], query_box[1], 400))  # pylint: disable=protected-access
  for z in samples:
    distances = np.sum((z[:, None] - candidate_emb[None]) ** 2, -1)
    ranks.append(np.stack([_ranks(distances, indices[:, j]) for j in range(k)], 1))
  box_lower, box_upper = map(jnp.asarray, query_box)

  @jax.jit
  def attack(target, direction):
    def step(z, size):
      push = jnp.sign(jax.grad(_soft_rank_of_target)(z, candidate_emb, target, direction, 0.05))
      return jnp.clip(z + size * push * (box_upper - box_lower), box_lower, box_upper), None
    return lax.scan(step, jnp.asarray(query_emb), 0.5 * 0.8 ** jnp.arange(15))[0]

  for direction in (1., -1.):
    for j in range(k):
      z = attack(jnp.asarray(indices[:, j]), direction)
      distances = np.sum((np.asarray(z)[:, None] - candidate_emb[None]) ** 2, -1)
      ranks.append(np.full((num_queries, k), -1))
      ranks[-1][:, j] = _ranks(distances, indices[:, j])
  for attacked in ranks:
    mask = attacked >= 0
    assert np.all(lower[mask] <= attacked[mask]) and np.all(attacked[mask] <= upper[mask])
  moved = np.stack([r != np.arange(1, k + 1) for r in ranks]) & np.stack([r >= 0 for r in ranks])
  assert moved.any()  # The attacks and samples change ranks.
  assert np.any(upper == lower)  # and some ranks are pinned, so the check is not vacuous.


def test_float32_far_from_origin_naive_form_is_unsound_cancellation_free_form_is_not():
  """Embeddings at norm ~30 in a cluster of spread 1e-3 (as TBT's: far from the origin, close
  together). The naive ||c||^2 - ||c^||^2 - 2 m.(c - c^) - 2 r.|c - c^| in float32 cancels
  catastrophically and certifies orders that a point of the box reverses; `linear_query_attack_order`
  certifies only true ones, at slack 0 and at the default slack."""
  rng = np.random.default_rng(9)
  offset = rng.normal(size=(1, 16)) * 30 / 4
  points = (offset + 1e-3 * rng.normal(size=(60, 16))).astype(np.float32)
  query, candidate, target = points[:20, None], points[None, 20:40], points[None, 40:]
  radius = (1e-5 * rng.uniform(size=(20, 1, 16))).astype(np.float32)
  lower, upper = query - radius, query + radius
  target = np.broadcast_to(target, (20, 20, 16))
  candidate = np.broadcast_to(candidate, (20, 20, 16))
  lower, upper = (np.broadcast_to(a, (20, 20, 16)) for a in (lower, upper))

  def naive_farther(slack):
    centre, half = (lower + upper) / 2, (upper - lower) / 2
    value = (np.sum(candidate * candidate, -1) - np.sum(target * target, -1)
             - 2 * np.sum(centre * (candidate - target), -1)
             - 2 * np.sum(half * np.abs(candidate - target), -1))
    width = slack * (2 * np.linalg.norm(np.maximum(abs(lower), abs(upper)), axis=-1)
                     + np.linalg.norm(candidate, axis=-1) + np.linalg.norm(target, axis=-1))
    far = np.sqrt(np.sum((np.abs(centre - target) + half) ** 2, -1))
    return value > width * (2 * far + width)

  exact_min = np.array([[float(_exact_spec_range(lower[i, j], upper[i, j], candidate[i, j],
                                                  target[i, j])[0]) for j in range(20)]
                        for i in range(20)])
  for slack in (0., br.DEFAULT_DISTANCE_SLACK):
    naive = naive_farther(np.float32(slack))
    assert naive.dtype == bool and np.sum(naive & (exact_min <= 0)) > 10  # False certificates.
    farther, _ = map(np.asarray, br.linear_query_attack_order(
        jnp.asarray(lower), jnp.asarray(upper), jnp.asarray(candidate), jnp.asarray(target),
        distance_slack=slack))
    assert not np.any(farther & (exact_min <= 0))
    assert np.sum(farther) > 20  # Still certifies most clear orders.


@pytest.mark.parametrize('dtype', ['float32', pytest.param('float64', marks=pytest.mark.slow)])
def test_linear_query_attack_is_never_looser_than_kakizaki(dtype):
  """Rank bounds at least as tight as Theorem 1's on random boxes of several widths, also
  clustered far from the origin, at slack 0 and the default (docs/bounds.md §13)."""
  rng = np.random.default_rng(12)
  with jax.enable_x64(dtype == 'float64'):
    tighter = 0
    for offset, spread, width in ((0., 1., 0.3), (0., 1., 0.03), (5., 1e-2, 1e-3), (0., 1., 2.)):
      def boxes(num):  # The shapes of the brute-force test above: one compilation in float32.
        emb = (offset + spread * rng.normal(size=(num, 5))).astype(dtype)
        return (emb, emb - rng.uniform(0, width, (num, 5)).astype(dtype),
                emb + rng.uniform(0, width, (num, 5)).astype(dtype))
      query, candidate = boxes(37), boxes(53)
      for slack in (0., br.DEFAULT_DISTANCE_SLACK):
        linear, kakizaki = (br.rank_bounds(*query, *candidate, 10, block_size=7,
                                           candidate_block_size=16, distance_slack=slack,
                                           qa_bound=name) for name in ('linear', 'kakizaki'))
        assert np.all(np.asarray(linear.query_attack_lower) >= kakizaki.query_attack_lower)
        assert np.all(np.asarray(linear.query_attack_upper) <= kakizaki.query_attack_upper)
        tighter += int(np.sum(np.asarray(kakizaki.query_attack_upper) - linear.query_attack_upper)
                       + np.sum(np.asarray(linear.query_attack_lower) - kakizaki.query_attack_lower))
    assert tighter > 0


def test_rank_bounds_and_certified_retrieval_reject_mismatched_inputs():
  """Issue 21 case 9: clean embeddings outside their own boxes, labels of the wrong length (which
  numpy would broadcast), and unknown QA bounds raise clear errors."""
  emb, lower, upper = _random_boxes(0, 6, 3, 0.1)
  shifted = emb + 1.  # Not the embeddings these boxes were computed around.
  with pytest.raises(ValueError, match=r'query_emb\[0\] lies outside its own box'):
    br.rank_bounds(shifted, lower, upper, emb, lower, upper, 2)
  with pytest.raises(ValueError, match=r'candidate_emb\[\d\] lies outside its own box'):
    br.rank_bounds(emb, lower, upper, shifted, lower, upper, 2, distance_slack=0.)
  # Within the slack's rounding allowance is accepted; zero-width boxes are the embeddings.
  nudged = upper + 1e-7 * np.abs(upper)
  br.rank_bounds(emb, lower, upper, np.maximum(emb, nudged), lower, np.maximum(upper, nudged), 2)
  br.rank_bounds(emb, emb, emb, emb, emb, emb, 2, distance_slack=0.)
  with pytest.raises(ValueError, match=r"Unknown qa_bound 'theorem1'; valid: \['linear', 'kakizaki'\]"):
    br.rank_bounds(emb, lower, upper, emb, lower, upper, 2, qa_bound='theorem1')
  bounds = br.rank_bounds(emb, emb, emb, emb, emb, emb, 2)
  labels = np.arange(6) % 2
  assert br.cr_recall_at_k(br.certified_retrieval(bounds, labels, labels, (1,)), (1,)) == {
      'qa': {1: 1.}, 'ca': {1: 1.}}
  with pytest.raises(ValueError, match=r'query_labels must have shape \(6,\)'):
    br.certified_retrieval(bounds, labels[:1], labels, (1,))
  with pytest.raises(ValueError, match=r'query_labels must have shape \(6,\)'):
    br.certified_retrieval(bounds, labels[:, None], labels, (1,))
  with pytest.raises(ValueError, match='candidate_labels must be one label per candidate'):
    br.certified_retrieval(bounds, labels, labels[:2], (1,))


# --- Embedding bounds, errors, and the 'ibp' mode end to end. -------------------------------------


def test_embedding_bounds_match_interval_and_reject_bad_input():
  _, _, embed = _small_encoder()
  images = _images(0, 7)
  lower, upper = br.embedding_bounds(embed, images, 0.05, batch_size=3)
  from jaxcert.bounds import input_box  # pylint: disable=g-import-not-at-top
  expected = interval(embed)(*input_box(images, 0.05))
  np.testing.assert_allclose(lower, expected[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(upper, expected[1], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='eps must be >= 0'):
    br.embedding_bounds(embed, images, -0.1)
  with pytest.raises(ValueError, match=r'must lie in \[0, 1\]'):
    br.embedding_bounds(embed, images * 2., 0.1)
  emb = np.asarray(embed(images))
  with pytest.raises(ValueError, match='lower > '):
    br.rank_bounds(emb, upper, lower, emb, lower, upper, 3)
  with pytest.raises(ValueError, match='k must be an integer'):
    br.rank_bounds(emb, lower, upper, emb, lower, upper, 8)
  with pytest.raises(ValueError, match='same shape'):
    br.rank_bounds(emb, lower[:, :4], upper[:, :4], emb, lower, upper, 3)


def test_ibp_mode_writes_tables_tsv_plots(tmp_path):
  config = default.get_config()
  config.eval.num_queries, config.eval.num_candidates = 12, 40
  config.ibp.eps, config.ibp.eps_sweep, config.ibp.ks = 0.02, (0., 0.05), (1, 5, 10)
  config.ibp.batch_size = config.ibp.query_block_size = config.ibp.candidate_block_size = 16
  model, variables, embed = _small_encoder()
  labels = (np.arange(60) % 3).astype(np.int32)
  split = data.Split(np.asarray(_images(20, 60)), labels)
  dataset = data.Dataset('test', split, split, 3)
  (query_images, query_labels), (candidate_images, candidate_labels) = (
      data.query_candidate_sets(config, dataset))
  inputs = certification.CertifyInputs(
      config, model, variables, embed, dataset,
      certification.LabelledImages(query_images, query_labels),
      certification.LabelledImages(candidate_images, candidate_labels))
  results = certification.get_mode('ibp')(inputs, str(tmp_path))
  for name in ('ibp.md', 'ibp_per_query.tsv', 'cr_recall_vs_k.png', 'cr_recall_vs_eps.png'):
    assert os.path.getsize(tmp_path / name) > 0
  assert '| CR-Recall@K (QA) |' in open(tmp_path / 'ibp.md').read()
  json.dumps(results)  # certification.run writes it as results.json.
  rows = [line.rstrip('\n').split('\t') for line in open(tmp_path / 'ibp_per_query.tsv')]
  assert rows[0][:3] == ['query', 'test_index', 'label'] and len(rows) == 13
  assert rows[0][3:] == ['qa@1', 'ca@1', 'qa@5', 'ca@5', 'qa@10', 'ca@10']
  for attack in ('qa', 'ca'):
    column = rows[0].index(f'{attack}@5')
    assert np.mean([int(row[column]) for row in rows[1:]]) == results[f'cr_recall_{attack}@5']
  for k in (1, 5, 10):  # CR-Recall is a lower bound of Recall, and equals it at eps = 0.
    assert results[f'cr_recall_qa@{k}'] <= results[f'recall@{k}']
    assert results['sweep']['0.0']['qa'][k] == results[f'recall@{k}']
    assert results['sweep']['0.05']['ca'][k] <= results['sweep']['0.0']['ca'][k]
  # Box radii: 0 at eps = 0 (a point), ordered percentiles, growing with eps (nested boxes).
  radii = results['box_radius']
  for side in ('query', 'candidate'):
    assert all(v == 0 for v in radii['0.0'][side].values())
    p50, p90, p99 = (radii['0.05'][side][p] for p in ibp.BOX_RADIUS_PERCENTILES)
    assert 0 < radii['0.02'][side][50] < p50 <= p90 <= p99
  assert results['nearest_distance_median'] > 0 and 'Box radius' in open(tmp_path / 'ibp.md').read()
  # What certified it: IBP boxes and the linear QA specification by default, named in both files.
  assert results['certified_by'] == {'method': 'ibp', 'qa_bound': 'linear', 'ca_bound': 'kakizaki'}
  assert "config.ibp.method = 'ibp'" in open(tmp_path / 'ibp.md').read()
  assert "config.ibp.qa_bound = 'linear'" in open(tmp_path / 'ibp.md').read()
  # Certified in float64 (the default); the rounding check: the float32 encoder within ~1e-6 of
  # float64, its boxes containing the float64 ones but for ~1e-6, far inside the slack: no warning.
  rounding = results['rounding']
  assert rounding['dtype'] == ibp.certification_dtype(config.ibp) == 'float64'  # 'auto' on CPU
  assert rounding['distance_slack'] == ibp.distance_slack(config.ibp) == br.DEFAULT_DISTANCE_SLACK
  assert rounding['images'] == 12 + 16 and 0 < rounding['embedding'] < 1e-6 and 0 <= rounding['box'] < 1e-6
  ibp_md = open(tmp_path / 'ibp.md').read()
  assert 'Rounding: certified in float64' in ibp_md
  assert 'distance bounds widened by distance_slack = 1e-05' in ibp_md
  assert 'Warning' not in ibp_md
  # A slack below the measured rounding is reported; a huge one reaches rank_bounds and refuses
  # every certificate, also at eps = 0.
  config.ibp.distance_slack = 1e-9
  assert '**Warning**: distance_slack 1e-09 is only' in ibp.rounding_check(inputs, 0.02)['text']
  config.ibp.distance_slack = 10.
  query_emb, candidate_emb = embed(inputs.queries.images), embed(inputs.candidates.images)
  refused = ibp.certify_at(inputs, query_emb, candidate_emb, 0., (1, 5, 10))['cr_recall']
  assert all(refused[attack][k] == 0 for attack in ('qa', 'ca') for k in (1, 5, 10))
  assert results['recall@10'] > 0
  bad = config.ibp.copy_and_resolve_references()
  bad.ks = (1, 50)
  with pytest.raises(ValueError, match='config.ibp.ks must be integers'):
    ibp.check_ibp_config(bad, 40)
  bad.ks, bad.eps = (1,), -0.1
  with pytest.raises(ValueError, match='must be >= 0'):
    ibp.check_ibp_config(bad, 40)
  bad.eps, bad.distance_slack = 0.1, -1e-5
  with pytest.raises(ValueError, match='distance_slack must be >= 0'):
    ibp.check_ibp_config(bad, 40)
  bad.distance_slack, bad.dtype = 1e-5, 'float16'
  with pytest.raises(ValueError, match=r"valid: \['auto', 'float64', 'float32'\]"):
    ibp.check_ibp_config(bad, 40)


def _ibp_inputs(config):
  """CertifyInputs of the Small CNN of `_small_encoder` on 60 random images, 3 classes."""
  model, variables, embed = _small_encoder()
  labels = (np.arange(60) % 3).astype(np.int32)
  split = data.Split(np.asarray(_images(20, 60)), labels)
  dataset = data.Dataset('test', split, split, 3)
  (query_images, query_labels), (candidate_images, candidate_labels) = (
      data.query_candidate_sets(config, dataset))
  return certification.CertifyInputs(
      config, model, variables, embed, dataset,
      certification.LabelledImages(query_images, query_labels),
      certification.LabelledImages(candidate_images, candidate_labels))


def test_ibp_mode_method_and_qa_bound_choices(monkeypatch):
  """config.ibp.qa_bound reaches rank_bounds; config.ibp.method picks the embedding-bound transform."""
  config = default.get_config()
  config.eval.num_queries, config.eval.num_candidates = 12, 40
  # A radius at which the random Small CNN has some certified and some uncertified ranks.
  config.ibp.eps, config.ibp.eps_sweep, config.ibp.ks = 3e-5, (), (1, 5, 10)
  config.ibp.batch_size = config.ibp.query_block_size = config.ibp.candidate_block_size = 16
  inputs = _ibp_inputs(config)
  for field, value, valid in (
      ('method', 'beta_crown', "['ibp', 'crown_ibp', 'crown', 'alpha_crown']"),
      ('qa_bound', 'theorem1', "['linear', 'network', 'kakizaki']")):
    bad = config.ibp.copy_and_resolve_references()
    bad[field] = value
    with pytest.raises(ValueError, match=rf'config.ibp.{field} .*valid: {re.escape(valid)}'):
      ibp.check_ibp_config(bad, 40)
  assert ibp.embedding_bound_transform('ibp') is interval
  query_emb, candidate_emb = (np.asarray(inputs.embed(x)) for x in (inputs.queries.images,
                                                                  inputs.candidates.images))
  linear_qa = ibp.certify_at(inputs, query_emb, candidate_emb, 3e-5, (1, 5, 10))
  config.ibp.qa_bound = 'kakizaki'
  kakizaki_qa = ibp.certify_at(inputs, query_emb, candidate_emb, 3e-5, (1, 5, 10))
  assert (np.asarray(linear_qa['rank_bounds'].query_attack_upper)
          <= kakizaki_qa['rank_bounds'].query_attack_upper).all()
  assert np.any(np.asarray(linear_qa['rank_bounds'].query_attack_upper)
                < kakizaki_qa['rank_bounds'].query_attack_upper)
  # The linear methods call jaxcert.bounds.linear.linear_bounds(fn, method=...); a stand-in that
  # returns IBP's boxes checks the wiring without CROWN's cost (tests/test_linear.py tests CROWN).
  ibp.embedding_bound_transform.cache_clear()
  calls = []

  def linear_bounds(fn, method):
    calls.append(method)
    return interval(fn)

  monkeypatch.setattr(ibp.linear, 'linear_bounds', linear_bounds)
  config.ibp.method, config.ibp.qa_bound = 'crown_ibp', 'linear'
  crown_ibp = ibp.certify_at(inputs, query_emb, candidate_emb, 3e-5, (1, 5, 10))
  ibp.embedding_bound_transform.cache_clear()
  assert set(calls) == {'crown_ibp'}
  assert crown_ibp['cr_recall'] == linear_qa['cr_recall']  # (its stand-in returns IBP's boxes)
  certified_by = ibp.certified_by(config.ibp)
  assert (certified_by['method'], certified_by['qa_bound']) == ('crown_ibp', 'linear')
  assert 'CROWN-IBP' in certified_by['text']


def test_network_bounds_wiring_and_their_config_errors(monkeypatch):
  """config.ibp.qa_bound and ca_bound 'network': certify_at ranks with the linear specification
  and Theorem 2, then hands each query's nearest same-class column, config.ibp.method, spec_rows
  and the slack to through_encoder (whose bounds tests/test_through_encoder.py attacks); they
  need a linear method and a positive spec_rows."""
  config = default.get_config()
  config.eval.num_queries, config.eval.num_candidates = 12, 40
  config.ibp.eps, config.ibp.eps_sweep, config.ibp.ks = 3e-5, (), (1, 5, 10)
  config.ibp.batch_size = config.ibp.query_block_size = config.ibp.candidate_block_size = 16
  for field in ('qa_bound', 'ca_bound'):
    bad = config.ibp.copy_and_resolve_references()
    bad[field] = 'network'
    with pytest.raises(ValueError, match=rf"{field}='network'.*one of \['crown_ibp', 'crown', "
                                         r"'alpha_crown'\]"):
      ibp.check_ibp_config(bad, 40)
  bad = config.ibp.copy_and_resolve_references()
  bad.ca_bound = 'theorem2'
  with pytest.raises(ValueError, match=r"ca_bound 'theorem2'; valid: \['kakizaki', 'network'\]"):
    ibp.check_ibp_config(bad, 40)
  config.ibp.qa_bound = config.ibp.ca_bound = 'network'
  config.ibp.method, config.ibp.spec_rows = 'crown', 0
  with pytest.raises(ValueError, match='spec_rows must be a positive integer'):
    ibp.check_ibp_config(config.ibp, 40)
  config.ibp.spec_rows = 7
  inputs = _ibp_inputs(config)
  monkeypatch.setattr(ibp, 'embedding_bound_transform', lambda method, outward=False: interval)
  box_methods = []

  def boxes_and_intermediates(embed, images, eps, method, *, batch_size, sharding, dtype,
                              rounding, progress):
    assert rounding == 'nearest'  # (float64 on CPU)
    box_methods.append((method, progress))  # (interval boxes stand in; intermediates marked)
    lower, upper = br.embedding_bounds(embed, images, eps, batch_size=batch_size, dtype=dtype)
    return lower, upper, np.full((len(images), 3), len(images))

  monkeypatch.setattr(ibp.through_encoder, 'embedding_bounds_and_intermediates',
                      boxes_and_intermediates)
  calls = []

  def tighten(rank_bounds, embed, images, eps, lower, upper, candidate_emb, columns, **kwargs):
    calls.append(dict(kwargs, columns=columns, eps=eps))
    return rank_bounds._replace(query_attack_upper=rank_bounds.query_attack_upper - 1), {}

  monkeypatch.setattr(ibp.through_encoder, 'tighten_query_attack_upper', tighten)
  ca_calls = []

  def tighten_ca(rank_bounds, embed, images, eps, lower, upper, query_emb, candidate_emb, columns,
                 **kwargs):
    ca_calls.append(dict(kwargs, columns=columns, eps=eps, images=images))
    return rank_bounds._replace(
        candidate_attack_upper=rank_bounds.candidate_attack_upper - 2), {}

  monkeypatch.setattr(ibp.through_encoder, 'tighten_candidate_attack_upper', tighten_ca)
  query_emb, candidate_emb = (np.asarray(inputs.embed(x)) for x in (inputs.queries.images,
                                                                  inputs.candidates.images))
  network = ibp.certify_at(inputs, query_emb, candidate_emb, 3e-5, (1, 5, 10))
  config.ibp.qa_bound, config.ibp.ca_bound = 'linear', 'kakizaki'
  linear_qa = ibp.certify_at(inputs, query_emb, candidate_emb, 3e-5, (1, 5, 10))
  assert len(calls) == len(ca_calls) == 1
  assert (ca_calls[0]['method'], ca_calls[0]['max_rows']) == ('crown', 7)
  assert ca_calls[0]['images'] is inputs.candidates.images
  assert box_methods == [('crown', 'crown boxes of the queries, eps 3e-05'),
                         ('crown', 'crown boxes of the candidates, eps 3e-05')]
  assert calls[0]['progress'] and ca_calls[0]['progress']
  # The boxes' intermediate bounds are handed on:
  assert (ca_calls[0]['candidate_intermediates'] == 40).all()
  assert (calls[0]['query_intermediates'] == 12).all()
  np.testing.assert_array_equal(network['rank_bounds'].candidate_attack_upper,
                                np.asarray(linear_qa['rank_bounds'].candidate_attack_upper) - 2)
  call = calls[0]
  assert (call['method'], call['max_rows'], call['eps']) == ('crown', 7, 3e-5)
  assert call['distance_slack'] == ibp.distance_slack(config.ibp)
  assert (call['rounding'], call['point_margin']) == ('nearest', 0.)
  assert call['sharding'] is inputs.batch_sharding and ca_calls[0]['sharding'] is None
  assert (ca_calls[0]['rounding'], ca_calls[0]['query_point_margin']) == ('nearest', 0.)
  np.testing.assert_array_equal(call['columns'], ibp.through_encoder.first_same_class_column(
      linear_qa['rank_bounds'].indices, inputs.queries.labels, inputs.candidates.labels))
  np.testing.assert_array_equal(network['rank_bounds'].query_attack_upper,
                                np.asarray(linear_qa['rank_bounds'].query_attack_upper) - 1)


def test_float64_certification_on_tpu_says_to_use_float32(monkeypatch):
  config = default.get_config()
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  assert ibp.certification_dtype(config.ibp) == 'float32'  # 'auto': rigorous float32 on TPU
  assert ibp.distance_slack(config.ibp) == 0
  config.ibp.dtype = 'float64'
  with pytest.raises(ValueError, match='--config.ibp.dtype=float32'):
    ibp.check_ibp_config(config.ibp, 1000)
  config.ibp.dtype = 'float32'
  assert ibp.check_ibp_config(config.ibp, 1000)[0] == config.ibp.eps
  config.ibp.method = 'alpha_crown'  # The linear bounds have a rigorous mode, and so have
  assert ibp.check_ibp_config(config.ibp, 1000)[0] == config.ibp.eps
  config.ibp.qa_bound = config.ibp.ca_bound = 'network'  # the bounds through the encoder.
  assert ibp.check_ibp_config(config.ibp, 1000)[0] == config.ibp.eps


class _CancellingEncoder(nn.Module):
  """(pixel 0 + b) - b and pixel 1, b = 1e8: float32 (ulp 8 at 1e8) rounds pixel 0 away, float64 not."""

  @nn.compact
  def __call__(self, x):
    offset = self.param('offset', lambda key: jnp.float32(1e8))
    pixels = x.reshape(x.shape[0], -1)
    return jnp.stack([(pixels[:, 0] + offset) - offset, pixels[:, 1]], axis=1)


def test_float64_certification_survives_what_float32_rounding_gets_wrong(tmp_path):
  """A certificate computed in float32 to nearest can be false; float64 and rigorous float32 not.

  Query (0, 0.5) with label 0; candidates (1, 0.51) with label 0 and (0, 0.53) with label 1. In
  exact arithmetic the encoder is the identity, so the nearest candidate is the second (distance
  0.03 against 1.00005) and Recall@1 is 0. float32 rounds the first coordinate to 0 everywhere,
  ranks the first candidate nearest, and its round-to-nearest interval bounds certify that
  retrieval at eps = 0.005: a false certificate. In float64, and in the rigorous float32
  (outward-rounded bounds: the real embeddings are only known to within ~8 in the first
  coordinate), the same run certifies nothing.
  """
  model = _CancellingEncoder()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 1, 2, 1)))
  images = np.array([[0., 0.5], [1., 0.51], [0., 0.53]], np.float32).reshape(3, 1, 2, 1)
  labels = np.array([0, 0, 1], np.int32)
  config = default.get_config()
  config.eval.num_queries, config.eval.num_candidates = 1, 2
  config.ibp.eps, config.ibp.eps_sweep, config.ibp.ks = 0.005, (), (1,)
  config.ibp.batch_size = config.ibp.query_block_size = config.ibp.candidate_block_size = 2
  dataset = data.Dataset('cancelling', data.Split(images, labels), data.Split(images, labels), 2)
  inputs = certification.CertifyInputs(
      config, model, variables, jax.tree_util.Partial(model.apply, variables), dataset,
      certification.LabelledImages(images[:1], labels[:1]),
      certification.LabelledImages(images[1:], labels[1:]))
  query, candidates = jnp.asarray(images[:1]), jnp.asarray(images[1:])
  embed = inputs.embed
  nearest_bounds = [br.embedding_bounds(embed, x, 0.005) for x in (query, candidates)]
  nearest = br.rank_bounds(embed(query), *nearest_bounds[0], embed(candidates),
                           *nearest_bounds[1], 1, distance_slack=0.)
  assert int(nearest.indices[0, 0]) == 0 and int(nearest.query_attack_upper[0, 0]) == 1  # false
  config.ibp.dtype = 'float32'
  float32 = ibp.run(inputs, str(tmp_path / 'float32'))
  assert float32['recall@1'] == 1 and float32['cr_recall_qa@1'] == float32['cr_recall_ca@1'] == 0
  assert float32['rounding']['embedding'] > 0.1 and float32['rounding']['box'] > 0.1
  assert 'certified in float32 with outward rounding' in open(tmp_path / 'float32' / 'ibp.md').read()
  config.ibp.method = 'crown'  # Rigorous linear bounds (docs/linear_bounds.md §8) ...
  rigorous = ibp.run(inputs, str(tmp_path / 'crown'))
  assert rigorous['cr_recall_qa@1'] == rigorous['cr_recall_ca@1'] == 0
  # ... and bounds through the encoder (the candidates' point margins widen the QA pairs).
  config.ibp.qa_bound = config.ibp.ca_bound = 'network'
  with br.certification_precision('float32'):
    network = ibp.certify_at(inputs, embed(query), embed(candidates), 0.005, (1,))['cr_recall']
  assert network['qa'][1] == network['ca'][1] == 0
  config.ibp.method, config.ibp.qa_bound, config.ibp.ca_bound = 'ibp', 'linear', 'kakizaki'
  config.ibp.dtype = 'float64'
  float64 = ibp.run(inputs, str(tmp_path / 'float64'))
  assert float64['recall@1'] == float64['cr_recall_qa@1'] == float64['cr_recall_ca@1'] == 0


def test_float32_rounding_error_measures_rounding():
  """Small for an encoder (float32 ~1e-7 of the magnitudes), large where float32 loses digits."""
  model, variables, _ = _small_encoder()
  images = _images(21, 16)
  error = br.float32_rounding_error(model.apply, variables, images, 0.05)
  assert 0 < error['embedding'] < 1e-6 and 0 <= error['box'] < 1e-6

  def cancelling(variables, x):  # (x w + b) - b, b = 1e8: float32 keeps x w to within 4 (ulp 8).
    return (x.reshape(x.shape[0], -1)[:, :4] * variables['w'] + variables['b']) - variables['b']

  cancelling_variables = {'w': jnp.full((4,), 3.), 'b': jnp.float32(1e8)}
  error = br.float32_rounding_error(cancelling, cancelling_variables, images, 0.05)
  assert error['embedding'] > 0.1 and error['box'] > 0.1
  with pytest.raises(ValueError, match='computes in float32'):
    br.float32_rounding_error(lambda v, x: cancelling(v, x).astype(jnp.float32),
                              cancelling_variables, images, 0.05)


def test_float32_boxes_contain_the_real_radius():
  """float32(0.01) lies below 0.01: the input boxes that `embedding_bounds` and the boxes with
  intermediate bounds build in float32 take the radius rounded up, so that they contain the
  real box of the radius as given (checked exactly on an identity encoder, at pixels just above
  the radius, where the ends' own one-ulp widening is smaller than that rounding)."""
  from jaxcert.bounds import through_encoder  # pylint: disable=import-outside-toplevel
  images = np.array([0.0100001, 0.01001, 0.5, 0.98], np.float32).reshape(1, 1, 4, 1)
  assert Fraction(float(np.float32(0.01))) < Fraction(0.01)
  identity = lambda x: x.reshape(x.shape[0], -1)
  boxes = [br.embedding_bounds(identity, images, 0.01, dtype=jnp.float32,
                               bound=br.outward_interval),
           through_encoder.embedding_bounds_and_intermediates(
               identity, images, 0.01, 'crown', dtype=jnp.float32, rounding='outward')[:2]]
  for lower, upper in boxes:
    for x, low, high in zip(images.reshape(-1), np.asarray(lower)[0], np.asarray(upper)[0]):
      assert Fraction(float(low)) <= max(Fraction(float(x)) - Fraction(0.01), 0)
      assert Fraction(float(high)) >= min(Fraction(float(x)) + Fraction(0.01), 1)


@pytest.mark.slow
@pytest.mark.parametrize('dtype', ['float64', 'float32'])
def test_certificate_comparison_certifies_as_certify_py_does(dtype):
  """scripts/certificate_comparison.py computes its rows with certify.py's own functions: the
  same CR-Recall as `certify_at` for each QA bound, in float64 and in the rigorous float32."""
  from scripts import certificate_comparison  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.eval.num_queries, config.eval.num_candidates = 12, 40
  config.ibp.eps, config.ibp.eps_sweep, config.ibp.ks = 3e-5, (), (1, 5, 10)
  config.ibp.batch_size = config.ibp.query_block_size = config.ibp.candidate_block_size = 16
  config.ibp.dtype = dtype
  inputs = _ibp_inputs(config)
  rows = certificate_comparison.compare(inputs, [3e-5], (1, 5, 10), ['ibp'],
                                        ['kakizaki', 'linear'], [ibp.distance_slack(config.ibp)])
  assert len(rows) == 2
  with br.certification_precision(dtype):
    certified_inputs = ibp.in_dtype(inputs, dtype)
    query_emb, candidate_emb = (np.asarray(certified_inputs.embed(x))
                                for x in (inputs.queries.images, inputs.candidates.images))
    for row in rows:
      config.ibp.qa_bound = row['qa_bound']
      recall = ibp.certify_at(certified_inputs, query_emb, candidate_emb, 3e-5,
                              (1, 5, 10))['cr_recall']
      for k in (1, 5, 10):
        assert row[f'QA@{k}'] == recall['qa'][k] and row[f'CA@{k}'] == recall['ca'][k]
  assert any(row['QA@10'] > 0 for row in rows)


class _HalfPrecisionInside(nn.Module):
  """An encoder with a bfloat16 layer inside that casts its embedding back to the input dtype:
  the output dtype check cannot see it."""

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(16, dtype=jnp.bfloat16)(x.reshape(x.shape[0], -1))
    return nn.Dense(8)(nn.relu(h).astype(x.dtype))


@pytest.mark.parametrize('model, message', [
    (_HalfPrecisionInside(), r'`dot_general` in bfloat16 at .* in module _HalfPrecisionInside/Dense_0'),
    # An encoder that returns bfloat16: no --config.ibp.dtype fits it.
    (nn.Dense(8, dtype=jnp.bfloat16), r'computes in bfloat16 .*computing in float64 or float32'),
])
def test_certify_refuses_an_encoder_that_rounds_in_a_narrower_dtype(model, message):
  """certify.py's float64 bounds hold up to float64 rounding and the slack only: an encoder that
  computes in bfloat16 is refused before any bound is computed, with where it does so."""
  config = default.get_config()
  config.eval.num_queries, config.eval.num_candidates = 12, 40
  config.ibp.eps, config.ibp.eps_sweep, config.ibp.dtype = 0.01, (), 'float64'
  inputs = _ibp_inputs(config)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)))
  inputs = inputs._replace(model=model, variables=variables,
                           embed=jax.tree_util.Partial(model.apply, variables))
  with pytest.raises(ValueError, match=message):
    ibp.compute(inputs)
