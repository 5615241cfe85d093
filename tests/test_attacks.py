"""Tests of `jaxcert.attacks`: the PGD engine, FGSM, C&W-Linf, the Kakizaki et al./002/003 attacks, and
the metrics under attack of `jaxcert.evaluation.attack`.

Optima known in closed form (linear losses over a box or a ball) check that
PGD finds them; every iterate of every attack is checked against its ball and
the pixel box; the AckMetric linear bound is attacked by the pairwise attack on
every pair of a small set and by exhaustive search over the vertices of the
feasible box (where a convex D attains its maximum).
"""

import itertools
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from jaxcert import attacks
from jaxcert import retrieval
from jaxcert.evaluation import attack as attack_mode

IMAGE_SHAPE = (6, 6, 1)


class TinyEncoder(nn.Module):
  """A two-layer MLP encoder for tests (the library's encoders live in jaxcert.models)."""

  embedding_dim: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = x.reshape(x.shape[0], -1)
    x = nn.tanh(nn.Dense(16)(x))
    return nn.Dense(self.embedding_dim)(x)


@pytest.fixture(scope='module')
def encoder():
  model = TinyEncoder()
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + IMAGE_SHAPE))
  return model, variables, jax.tree_util.Partial(model.apply, variables)


def _images(seed, num, binary_share=0.3):
  """Images in [0, 1] with some pixels exactly 0 or 1 (exercises the box)."""
  return conftest.uniform_images(num, IMAGE_SHAPE, seed, binary_share)


def _linear_loss(x, weight):
  return jnp.sum(x * weight, axis=(1, 2, 3))


def _encoder_loss(x, embed, anchor_emb):
  return jnp.sum(jnp.square(embed(x) - anchor_emb), axis=-1)


def _check_feasible(x_adv, x, eps, norm):
  delta = np.asarray(x_adv - x).reshape(x.shape[0], -1)
  size = (np.abs(delta).max(axis=1) if norm == 'linf'
          else np.linalg.norm(delta, axis=1))
  assert np.all(size <= eps + 1e-5), size.max()
  assert np.all(np.asarray(x_adv) >= 0) and np.all(np.asarray(x_adv) <= 1)


@pytest.mark.parametrize('loop', attacks.LOOPS)
@pytest.mark.parametrize('random_start', [True, False])
def test_pgd_linf_finds_box_corner(loop, random_start):
  """max w.x over the L-inf ball cap [0,1] is clip(x + eps sign(w), 0, 1)."""
  x = _images(0, 5)
  weight = jax.random.normal(jax.random.key(1), x.shape)
  eps = 0.1
  attack = attacks.pgd(_linear_loss, eps=eps, step_size=eps / 4, num_steps=12,
                       random_start=random_start, loop=loop)
  x_adv = attack(jax.random.key(2), x, weight)
  np.testing.assert_allclose(x_adv, jnp.clip(x + eps * jnp.sign(weight), 0, 1),
                             atol=1e-6)


def test_pgd_l2_finds_ball_optimum():
  """max w.x over the L2 ball, inside the box, is x + eps w / ||w||."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.uniform(0.3, 0.7, size=(4,) + IMAGE_SHAPE), jnp.float32)
  weight = jax.random.normal(jax.random.key(4), x.shape)
  eps = 0.5
  unit = weight / jnp.linalg.norm(weight.reshape(4, -1), axis=1).reshape(
      4, 1, 1, 1)
  optimum = x + eps * unit
  assert float(jnp.max(jnp.abs(eps * unit))) < 0.3  # optimum inside the box
  attack = attacks.pgd(_linear_loss, eps=eps, step_size=eps / 2, num_steps=60,
                       norm='l2')
  x_adv = attack(jax.random.key(5), x, weight)
  np.testing.assert_allclose(x_adv, optimum, atol=2e-3)
  np.testing.assert_allclose(_linear_loss(x_adv, weight),
                             _linear_loss(optimum, weight), rtol=1e-4)


@pytest.mark.parametrize('norm,eps', [('linf', 0.15), ('l2', 0.6)])
def test_every_pgd_iterate_in_ball_and_box(encoder, norm, eps):
  """The t-step run with a fixed key is iterate t of every longer run."""
  _, _, embed = encoder
  x = _images(6, 8)
  anchor = embed(_images(7, 8))
  key = jax.random.key(8)
  previous_loss = None
  for num_steps in range(0, 7):
    attack = attacks.pgd(_encoder_loss, eps=eps, step_size=eps / 2,
                         num_steps=num_steps, norm=norm)
    x_adv = attack(key, x, embed, anchor)
    _check_feasible(x_adv, x, eps, norm)
    previous_loss = _encoder_loss(x_adv, embed, anchor)
  assert np.all(previous_loss > _encoder_loss(x, embed, anchor))


def test_pgd_fori_matches_python_loop(encoder):
  _, _, embed = encoder
  x, anchor = _images(9, 4), embed(_images(10, 4))
  kwargs = dict(eps=0.1, step_size=0.02, num_steps=5)
  python = attacks.pgd(_encoder_loss, loop='python', **kwargs)(
      jax.random.key(0), x, embed, anchor)
  fori = attacks.pgd(_encoder_loss, loop='fori', **kwargs)(
      jax.random.key(0), x, embed, anchor)
  np.testing.assert_allclose(python, fori, atol=1e-6)


def test_pgd_inside_jit_with_traced_weights(encoder):
  """Training use: the attack runs inside a jitted step with traced variables and eps."""
  model, variables, embed = encoder
  x, anchor = _images(11, 4), embed(_images(12, 4))

  def embed_loss(x, variables, anchor):
    return jnp.sum(jnp.square(model.apply(variables, x) - anchor), -1)

  @jax.jit
  def train_like_step(variables, key, x, eps):
    attack = attacks.pgd(embed_loss, eps=eps, step_size=eps / 2, num_steps=3)
    return attack(key, x, variables, anchor)

  eager = attacks.pgd(embed_loss, eps=0.1, step_size=0.05, num_steps=3)(
      jax.random.key(1), x, variables, anchor)
  jitted = train_like_step(variables, jax.random.key(1), x, 0.1)
  np.testing.assert_allclose(eager, jitted, atol=1e-6)


def test_random_start_deterministic_per_key(encoder):
  _, _, embed = encoder
  x, anchor = _images(13, 4), embed(_images(14, 4))
  attack = attacks.pgd(_encoder_loss, eps=0.1, step_size=0.01, num_steps=2)
  first = attack(jax.random.key(3), x, embed, anchor)
  np.testing.assert_array_equal(first, attack(jax.random.key(3), x, embed,
                                              anchor))
  assert not np.allclose(first, attack(jax.random.key(4), x, embed, anchor))
  start = attacks.sample_in_ball(jax.random.key(5), x, 0.3, norm='l2')
  _check_feasible(start, x, 0.3, 'l2')


def test_fgsm_is_one_sign_step(encoder):
  _, _, embed = encoder
  x, anchor = _images(15, 6), embed(_images(16, 6))
  eps = 0.05
  grad = jax.grad(lambda z: jnp.sum(_encoder_loss(z, embed, anchor)))(x)
  expected = jnp.clip(x + eps * jnp.sign(grad), 0, 1)
  x_adv = attacks.fgsm(_encoder_loss, eps=eps)(None, x, embed, anchor)
  np.testing.assert_allclose(x_adv, expected, atol=1e-6)


def test_carlini_wagner_linf_respects_budget_and_ascends(encoder):
  _, _, embed = encoder
  x, anchor = _images(17, 6), embed(_images(18, 6))
  eps = 0.05
  attack = attacks.get_attack('cw_linf', _encoder_loss, eps=eps, num_steps=50,
                              step_size=0.02)
  x_adv = attack(None, x, embed, anchor)
  _check_feasible(x_adv, x, eps, 'linf')
  assert np.all(_encoder_loss(x_adv, embed, anchor) >
                _encoder_loss(x, embed, anchor))
  # On a linear loss C&W gets close to the optimal corner (PGD reaches it),
  # from pixels off the box's ends (tanh saturates there, as in Carlini's).
  x = _images(19, 6, binary_share=0.)
  weight = jax.random.normal(jax.random.key(19), x.shape)
  x_cw = attacks.carlini_wagner_linf(
      _linear_loss, eps=eps, learning_rate=0.05, const=10.)(None, x, weight)
  optimum = jnp.clip(x + eps * jnp.sign(weight), 0, 1)
  gain = lambda z: _linear_loss(z, weight) - _linear_loss(x, weight)
  assert np.all(gain(x_cw) >= 0.95 * gain(optimum))


def test_bad_arguments_name_valid_choices():
  with pytest.raises(ValueError, match='pgd'):
    attacks.get_attack('bim', _linear_loss, eps=0.1, num_steps=1)
  with pytest.raises(ValueError, match='linf'):
    attacks.pgd(_linear_loss, eps=0.1, step_size=0.1, num_steps=1, norm='l1')
  with pytest.raises(ValueError, match='eps'):
    attacks.pgd(_linear_loss, eps=-0.1, step_size=0.1, num_steps=1)
  with pytest.raises(ValueError, match='num_steps'):
    attacks.pgd(_linear_loss, eps=0.1, step_size=0.1, num_steps=1.5)


# ---------------------------------------------------------------------------
# Attacking a certificate: a certificate claims bounds that hold for every point of the ball; an
# attack yields points of the ball, so it must never beat them.
# ---------------------------------------------------------------------------


def negative_squared_embedding_distance(x, embed, target_emb) -> jax.Array:
  """-||f(x_b) - e_b||^2 per example; maximised, it pulls f(x_b) towards e_b."""
  return -attacks.squared_embedding_distance(x, embed, target_emb)


def embedding_projection_loss(x, embed, direction) -> jax.Array:
  """<f(x_b), direction_b> per example; direction = +e_c (-e_c) pushes coordinate c up (down)."""
  return jnp.sum(embed(x) * direction, axis=-1)


class DistanceExtremes(NamedTuple):
  """What `distance_extremes` found: (B,) distances and the (B, ...) points reaching them."""
  closest: np.ndarray
  farthest: np.ndarray
  x_closest: np.ndarray
  x_farthest: np.ndarray


def distance_extremes(embed: Callable, x, target_emb, *, eps, key,
                      num_steps: int = 100, step_size=None,
                      norm: str = 'linf', num_restarts: int = 1,
                      clip: tuple[float, float] = (0., 1.)) -> DistanceExtremes:
  """The smallest and largest ||f(x_b + d) - e_b|| that PGD finds over the ball cap `clip`.

  Empirical (attained) values: any sound certificate's lower (upper) distance
  bound must be <= `closest` (>= `farthest`). Each restart is a PGD run from a
  random point of the ball; the best over restarts is kept per example.

  Args:
    embed: encoder `x -> (B, k)`.
    x: (B, ...) centres in `clip`.
    target_emb: (B, k) embeddings to move towards and away from.
    eps: radius of the ball.
    key: PRNG key of the random starts.
    num_steps: PGD steps per run.
    step_size: default eps / 10 (Kakizaki et al. Sec. 5.1.2).
    norm: 'linf' or 'l2'.
    num_restarts: PGD runs per direction (>= 1).
    clip: pixel range.

  Returns:
    `DistanceExtremes(closest, farthest, x_closest, x_farthest)`.
  """
  if int(num_restarts) != num_restarts or num_restarts < 1:
    raise ValueError(f'num_restarts must be an integer >= 1, got {num_restarts}.')
  embed = retrieval.as_pytree_function(embed)
  step_size = eps / 10 if step_size is None else step_size
  found = {}
  for name, loss_fn, better in (('closest', negative_squared_embedding_distance, np.less),
                                ('farthest', attacks.squared_embedding_distance, np.greater)):
    attack = attacks.pgd(loss_fn, eps=eps, step_size=step_size, num_steps=num_steps,
                         norm=norm, clip=clip)
    best_x = best_distance = None
    for restart in range(int(num_restarts)):
      x_adv = np.asarray(attack(jax.random.fold_in(key, 2 * restart + (name == 'farthest')),
                                jnp.asarray(x), embed, target_emb))
      reached = retrieval.embed_in_batches(embed, x_adv, len(x_adv))
      distance = np.asarray(attacks.paired_distances(reached, target_emb))
      if best_x is None:
        best_x, best_distance = x_adv, distance
        continue
      improved = better(distance, best_distance)
      best_distance = np.where(improved, distance, best_distance)
      best_x = np.where(improved.reshape((-1,) + (1,) * (x_adv.ndim - 1)), x_adv, best_x)
    found[name] = (best_distance, best_x)
  return DistanceExtremes(found['closest'][0], found['farthest'][0], found['closest'][1],
                          found['farthest'][1])


def test_distance_extremes_reach_the_linear_optimum():
  """f(x) = w.x (1-D): over the L-inf ball, |f - e| ranges over |w.x - e| -+ eps ||w||_1."""
  rng = np.random.default_rng(40)
  x = jnp.asarray(rng.uniform(0.3, 0.7, size=(5,) + IMAGE_SHAPE), jnp.float32)
  w = jnp.asarray(rng.normal(size=(int(np.prod(IMAGE_SHAPE)), 1)), jnp.float32)
  embed = jax.tree_util.Partial(lambda w, x: x.reshape(x.shape[0], -1) @ w, w)
  eps = 0.05
  reach = eps * float(jnp.sum(jnp.abs(w)))
  target = embed(x) + 2 * reach  # |f(x) - e| = 2 reach: closest reach, farthest 3 reach.
  found = distance_extremes(embed, x, target, eps=eps, key=jax.random.key(0), num_steps=30)
  np.testing.assert_allclose(found.closest, reach, rtol=1e-4)
  np.testing.assert_allclose(found.farthest, 3 * reach, rtol=1e-4)
  for points in (found.x_closest, found.x_farthest):
    _check_feasible(points, x, eps, 'linf')
  coordinate_up = attacks.pgd(embedding_projection_loss, eps=eps, step_size=eps / 10,
                              num_steps=30)(jax.random.key(1), x, embed, jnp.ones((5, 1)))
  np.testing.assert_allclose(embed(coordinate_up), embed(x) + reach, rtol=1e-4)


def _retrieval_set(seed, num, num_classes=3):
  labels = np.arange(num) % num_classes
  return _images(seed, num), labels


def test_query_attack_raises_target(encoder):
  _, _, embed = encoder
  queries, _ = _retrieval_set(20, 6)
  candidates, _ = _retrieval_set(21, 12)
  candidate_emb = embed(candidates)
  target_emb = candidate_emb[np.arange(6) + 1]
  eps = 0.2
  x_adv = attacks.query_attack(embed, queries, target_emb, candidate_emb,
                               eps=eps, key=jax.random.key(0), num_steps=20)
  _check_feasible(x_adv, queries, eps, 'linf')
  before = attacks.query_attack_objective(embed(queries), target_emb,
                                          candidate_emb)
  after = attacks.query_attack_objective(embed(x_adv), target_emb,
                                         candidate_emb)
  assert np.all(after <= before) and np.mean(after) < np.mean(before)
  distance = lambda e: jnp.sum(jnp.square(e - target_emb), -1)
  assert np.mean(distance(embed(x_adv))) < np.mean(distance(embed(queries)))


def test_candidate_attack_moves_sources_toward_query(encoder):
  _, _, embed = encoder
  sources, _ = _retrieval_set(22, 8)
  candidate_emb = embed(_retrieval_set(23, 12)[0])
  query_emb = jnp.repeat(embed(_images(24, 1)), 8, axis=0)
  clean = retrieval.pairwise_distances(query_emb, candidate_emb)
  eps = 0.2
  x_adv = attacks.candidate_attack(embed, sources, query_emb, clean, eps=eps,
                                   key=jax.random.key(1), num_steps=20)
  _check_feasible(x_adv, sources, eps, 'linf')
  assert not np.allclose(x_adv, sources)
  before = attacks.candidate_attack_objective(embed(sources), query_emb, clean)
  after = attacks.candidate_attack_objective(embed(x_adv), query_emb, clean)
  assert np.all(after <= before) and np.mean(after) < np.mean(before)


@pytest.mark.parametrize('evaluate', ['query', 'candidate'])
def test_er_recall_equals_recall_at_zero_budget_and_drops_under_attack(
    encoder, evaluate):
  _, _, embed = encoder
  queries, query_labels = _retrieval_set(25, 9)
  candidates, candidate_labels = _retrieval_set(26, 30)
  kwargs = dict(ks=(1, 5), num_steps=10, batch_size=16)
  if evaluate == 'query':
    fn = attack_mode.evaluate_query_attack
  else:
    fn = attack_mode.evaluate_candidate_attack
    kwargs['num_sources'] = 8
  run = lambda eps: fn(embed, queries, query_labels, candidates,
                       candidate_labels, eps=eps, key=jax.random.key(2),
                       **kwargs)
  clean = run(0.)
  assert clean['er_recall'] == clean['recall']
  attacked = run(0.3)
  assert attacked['recall'] == clean['recall']
  assert all(attacked['er_recall'][k] <= clean['recall'][k] for k in (1, 5))
  assert attacked['er_recall'][1] < clean['recall'][1]
  if evaluate == 'query':
    targets = attacked['target_indices']
    assert np.all(candidate_labels[targets] != query_labels)
    _check_feasible(attacked['adversarial_queries'], queries, 0.3, 'linf')
  else:
    sources = attacked['source_indices']
    assert sources.shape == (9, 8)
    assert np.all(candidate_labels[sources] != query_labels[:, None])
    assert all(len(set(row)) == 8 for row in sources)


def test_nearest_neighbor_attack_algorithm1(encoder):
  _, _, embed = encoder
  images, labels = _retrieval_set(27, 24, num_classes=2)
  benign = attack_mode.evaluate_nearest_neighbor_attack(
      embed, images, labels, eps=0., key=jax.random.key(3), batch_size=16)
  assert benign['adversarial_recall_at_1'] == benign['recall_at_1']
  assert benign['adversarial_map_at_r'] == pytest.approx(benign['map_at_r'])
  result = attack_mode.evaluate_nearest_neighbor_attack(
      embed, images, labels, eps=0.2, key=jax.random.key(3), batch_size=16)
  assert result['adversarial_recall_at_1'] < result['recall_at_1']
  assert result['adversarial_map_at_r'] < result['map_at_r']
  # Attacked points moved away from their same-class neighbour; others stay.
  emb, adv = result['embeddings'], result['adversarial_embeddings']
  neighbor = np.asarray(retrieval.blocked_topk(emb, emb, 1, exclude_self=True)[1])[:, 0]
  attacked = labels[neighbor] == labels
  assert result['attacked_fraction'] == pytest.approx(np.mean(attacked))
  moved = np.sum((adv - emb[neighbor]) ** 2, 1) > np.sum(
      (emb - emb[neighbor]) ** 2, 1)
  assert np.all(moved[attacked])
  np.testing.assert_array_equal(adv[~attacked], emb[~attacked])
  for method in ('fgsm', 'cw_linf'):
    x_adv = attacks.nearest_neighbor_attack(
        embed, images[:4], emb[neighbor[:4]], eps=0.05, key=jax.random.key(4),
        method=method, num_steps=20)
    _check_feasible(x_adv, images[:4], 0.05, 'linf')


def _pairs(seed, num_points, shape):
  rng = np.random.default_rng(seed)
  points = rng.uniform(size=(num_points,) + shape)
  points = np.where(rng.uniform(size=points.shape) < 0.2, np.round(points),
                    points)
  first, second = zip(*itertools.combinations(range(num_points), 2))
  return (jnp.asarray(points[list(first)], jnp.float32),
          jnp.asarray(points[list(second)], jnp.float32))


def test_pairwise_attack_budget_after_every_step(encoder):
  _, _, embed = encoder
  xi, xj = _pairs(28, 5, IMAGE_SHAPE)
  eps = 0.1
  for num_steps in range(1, 6):
    ai, aj = attacks.pairwise_attack(embed, xi, xj, eps=eps, step_size=0.03,
                                     num_steps=num_steps)
    used = (np.abs(np.asarray(ai - xi)).reshape(len(xi), -1).max(1) +
            np.abs(np.asarray(aj - xj)).reshape(len(xj), -1).max(1))
    assert np.all(used <= eps + 1e-6), used.max()
    for a in (ai, aj):
      assert np.all(np.asarray(a) >= 0) and np.all(np.asarray(a) <= 1)
  clean = attacks.pair_squared_distances(embed, xi, xj)
  adversarial = attacks.pair_squared_distances(embed, ai, aj)
  assert np.all(adversarial >= clean - 1e-6)
  assert np.mean(adversarial > clean) > 0.9


def test_linear_closed_form_matches_autodiff():
  weight = jax.random.normal(jax.random.key(6), (3, 8))
  xi, xj = _pairs(29, 6, (8,))
  kwargs = dict(eps=0.2, step_size=0.02, num_steps=15)
  closed = attacks.linear_pairwise_attack(weight, xi, xj, **kwargs)
  autodiff = attacks.pairwise_attack(
      jax.tree_util.Partial(lambda w, x: x @ w.T, weight), xi, xj, **kwargs)
  for a, b in zip(closed, autodiff):
    np.testing.assert_allclose(a, b, atol=1e-6)


def _vertex_maximum(weight, xi, xj, eps):
  """Exact max of D(xi + d, xj) over ||d||_inf <= eps, xi + d in [0,1]: a vertex of that box."""
  low, high = np.maximum(xi - eps, 0), np.minimum(xi + eps, 1)
  best = 0.
  for corner in itertools.product((0, 1), repeat=len(xi)):
    point = np.where(np.array(corner) == 1, high, low)
    best = max(best, float(np.sum((weight @ (point - xj)) ** 2)))
  return best


@pytest.mark.parametrize('eps', [0.05, 0.2, 0.6])
def test_linear_bound_holds_against_attack_and_exhaustive_search(eps):
  d = 6
  rng = np.random.default_rng(30)
  weights = [rng.normal(size=(3, d)),
             np.ones((1, d)) / np.sqrt(d),         # rank one along (1, ..., 1)
             np.diag(rng.uniform(0.5, 2, size=d))]  # full rank, skewed spectrum
  xi, xj = _pairs(31, 7, (d,))
  for weight in weights:
    weight = jnp.asarray(weight, jnp.float32)
    bound = attacks.linear_pairwise_distance_bound(weight, xi, xj, eps)
    for step_size in (eps / 10, eps / 3):
      ai, aj = attacks.linear_pairwise_attack(weight, xi, xj, eps=eps,
                                              step_size=step_size,
                                              num_steps=40)
      attacked = jnp.sum(jnp.square((ai - aj) @ weight.T), -1)
      assert np.all(attacked <= bound * (1 + 1e-5))
    exact = [_vertex_maximum(np.asarray(weight), np.asarray(a), np.asarray(b),
                             eps) for a, b in zip(xi, xj)]
    assert np.all(np.array(exact) <= np.asarray(bound) * (1 + 1e-5))


def test_linear_bound_needs_the_pixel_box():
  weight = jnp.ones((1, 1))
  eps = 0.1
  # Inside the box, the attack from (1, 0) cannot grow D = 1.
  assert float(attacks.linear_pairwise_distance_bound(
      weight, jnp.ones((1, 1)), jnp.zeros((1, 1)), eps)[0]) == pytest.approx(1.2)
  # Outside it, (1 + eps)^2 = 1.21 would exceed 1 + 2 eps: inputs are checked.
  assert (1 + eps) ** 2 > 1 + 2 * eps
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    attacks.linear_pairwise_distance_bound(weight, jnp.full((1, 1), 1.1),
                                           jnp.zeros((1, 1)), eps)


def test_attack_success_rate():
  clean = np.array([0.5, 1.0, 3.0, 1.9])
  adversarial = np.array([2.5, 1.5, 4.0, 2.1])
  assert attacks.attack_success_rate(clean, adversarial, 2.) == pytest.approx(
      2 / 3)
  assert np.isnan(attacks.attack_success_rate(clean, adversarial, 0.1))
  same_class = np.array([False, True, True, True])
  assert attacks.attack_success_rate(clean, adversarial, 2., same_class) == pytest.approx(1 / 2)


def test_evaluate_linear_pairwise_attack_checks_bound_on_every_pair():
  rng = np.random.default_rng(41)
  images = np.where(rng.uniform(size=(12, 8)) < 0.2, 1., rng.uniform(size=(12, 8)))
  labels = np.arange(12) % 2
  weight = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
  result = attacks.evaluate_linear_pairwise_attack(weight, images, labels, eps=0.2, gamma=2.,
                                                   batch_size=16)
  assert result['num_pairs'] == 66 and len(result['bounds']) == 66
  assert result['bound_violations'] == 0 and result['max_excess_over_bound'] <= 1e-5
  # At a small budget some similar pairs are certified (B <= gamma); the attack breaks none of them.
  small = attacks.evaluate_linear_pairwise_attack(weight, images, labels, eps=0.002, gamma=2.,
                                                  batch_size=16)
  certified = small['bounds'] <= 2.
  assert certified.any() and small['certified_rate'] > 0
  assert np.all(small['adversarial_distances'][certified] <= 2.)
  assert small['certified_rate'] <= 1. - small['success_rate'] + 1e-9
  assert np.all(result['adversarial_distances'] >= result['clean_distances'] - 1e-5)
  first, second = attacks.all_pairs(12)
  np.testing.assert_allclose(result['bounds'], attacks.linear_pairwise_distance_bound(
      weight, jnp.asarray(images[first], jnp.float32), jnp.asarray(images[second], jnp.float32),
      0.2), rtol=1e-6)
