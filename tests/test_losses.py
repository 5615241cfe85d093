"""Losses of jaxcert.losses against brute-force loops over every triplet and pair."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert import losses

# (labels, embedding dim): several classes; a singleton class (anchors without positives); one class
# only (no negatives at all).
BATCHES = [
    (np.array([0, 0, 1, 1, 2, 2, 0, 1]), 3),
    (np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3]), 5),
    (np.array([4, 4, 4, 7]), 2),
    (np.array([1, 1, 1]), 2),
]


def _batch(case, seed, scale=1.0):
  labels, dim = BATCHES[case]
  embeddings = scale * np.random.default_rng(seed).normal(size=(len(labels), dim))
  return embeddings.astype(np.float32), labels.astype(np.int32)


def _distance(a, b):
  return float(np.linalg.norm(np.float64(a) - np.float64(b)))


def _valid_triplets(labels):
  n = len(labels)
  for a, p, neg in itertools.product(range(n), repeat=3):
    if a != p and labels[a] == labels[p] and labels[neg] != labels[a]:
      yield a, p, neg


def _brute_batch_all(emb, labels, margin):
  hinges = [max(0.0, _distance(emb[a], emb[p]) - _distance(emb[a], emb[n]) + margin)
            for a, p, n in _valid_triplets(labels)]
  active = [h for h in hinges if h > 0]
  return sum(active) / len(active) if active else 0.0


def _brute_batch_all_mean(emb, labels, margin):
  hinges = [max(0.0, _distance(emb[a], emb[p]) - _distance(emb[a], emb[n]) + margin)
            for a, p, n in _valid_triplets(labels)]
  return sum(hinges) / len(hinges) if hinges else 0.0


def _brute_batch_hard(emb, labels, margin):
  values = []
  for a in range(len(labels)):
    positives = [_distance(emb[a], emb[p]) for p in range(len(labels))
                 if p != a and labels[p] == labels[a]]
    negatives = [_distance(emb[a], emb[n]) for n in range(len(labels)) if labels[n] != labels[a]]
    if positives and negatives:
      values.append(max(0.0, max(positives) - min(negatives) + margin))
  return float(np.mean(values)) if values else 0.0


def _brute_semi_hard(emb, labels, margin):
  values = []
  for a, p in itertools.permutations(range(len(labels)), 2):
    if labels[a] != labels[p]:
      continue
    negatives = [_distance(emb[a], emb[n]) for n in range(len(labels)) if labels[n] != labels[a]]
    if not negatives:
      continue
    d_ap = _distance(emb[a], emb[p])
    farther = [d for d in negatives if d > d_ap]
    d_an = min(farther) if farther else max(negatives)
    values.append(max(0.0, d_ap - d_an + margin))
  return float(np.mean(values)) if values else 0.0


_jitted_triplet_loss = jax.jit(losses.triplet_loss, static_argnames='mining')
BRUTE_FORCE = {'batch_all': _brute_batch_all, 'batch_all_mean': _brute_batch_all_mean,
               'batch_hard': _brute_batch_hard, 'semi_hard': _brute_semi_hard}


@pytest.mark.parametrize('mining', losses.MINING_STRATEGIES)
@pytest.mark.parametrize('case', range(len(BATCHES)))
@pytest.mark.parametrize('margin', [0.2, 1.0])
def test_triplet_loss_matches_brute_force(mining, case, margin):
  for seed in range(3):
    emb, labels = _batch(case, seed)
    loss = _jitted_triplet_loss(emb, labels, margin=margin, mining=mining)
    np.testing.assert_allclose(loss, BRUTE_FORCE[mining](emb, labels, margin), rtol=1e-5, atol=1e-5)


def test_semi_hard_uses_both_branches():
  # Anchor 0, positive 1 at distance 1; negative 2 closer (0.5) and negative 3 farther (1.5):
  # semi-hard picks 3. For anchor 1 (positive 0 at 1), negatives are at 1.5 and 2.5: picks 1.5.
  emb = np.array([[0.], [1.], [-0.5], [-1.5]], np.float32)
  labels = np.array([0, 0, 1, 2])
  expected = np.mean([max(0, 1 - 1.5 + 0.6), max(0, 1 - 1.5 + 0.6)])
  np.testing.assert_allclose(losses.triplet_loss(emb, labels, margin=0.6, mining='semi_hard'),
                             expected, rtol=1e-6)
  # Anchor 0, positive 1 at distance 3: no negative is farther (0.5, 1.5), the farthest (1.5) is
  # used. Anchor 1 has negatives at 3.5 and 4.5: the closest farther one is 3.5.
  emb = np.array([[0.], [3.], [-0.5], [-1.5]], np.float32)
  np.testing.assert_allclose(losses.triplet_loss(emb, labels, margin=0.6, mining='semi_hard'),
                             np.mean([3 - 1.5 + 0.6, 3 - 3.5 + 0.6]), rtol=1e-6)


def test_triplet_loss_explicit():
  rng = np.random.default_rng(0)
  anchor, positive, negative = (rng.normal(size=(6, 4)).astype(np.float32) for _ in range(3))
  out = losses.triplet_loss_explicit(anchor, positive, negative, margin=1.0)
  expected = [max(0.0, _distance(a, p) - _distance(a, n) + 1.0)
              for a, p, n in zip(anchor, positive, negative)]
  assert out.shape == (6,)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('case', range(len(BATCHES)))
@pytest.mark.parametrize('pos_margin, neg_margin', [(0.0, 1.0), (0.5, 2.5)])
def test_contrastive_loss_matches_brute_force(case, pos_margin, neg_margin):
  for seed in range(3):
    emb, labels = _batch(case, seed)
    pos, neg = [], []
    for i, j in itertools.permutations(range(len(labels)), 2):
      d = _distance(emb[i], emb[j])
      if labels[i] == labels[j]:
        pos.append(max(0.0, d - pos_margin))
      else:
        neg.append(max(0.0, neg_margin - d))
    mean_active = lambda v: sum(v) / max(1, sum(x > 0 for x in v))
    loss = losses.contrastive_loss(emb, labels, pos_margin=pos_margin, neg_margin=neg_margin)
    np.testing.assert_allclose(loss, mean_active(pos) + mean_active(neg), rtol=1e-5, atol=1e-5)


def _all_losses(emb, labels):
  """Every batch loss at `emb` (margin loss with a fixed key)."""
  values = [losses.triplet_loss(emb, labels, mining=m) for m in losses.MINING_STRATEGIES]
  values.append(losses.contrastive_loss(emb, labels, pos_margin=0.1))
  values.append(losses.margin_loss(emb, labels, 1.2, jax.random.key(0)))
  return jnp.stack(values)


def test_gradients_are_finite_with_duplicate_embeddings():
  # Exact duplicates within a class and across classes: distance 0 off the diagonal.
  emb = np.array([[1., 0.], [1., 0.], [0., 1.], [0., 1.], [1., 0.], [0.6, 0.8]], np.float32)
  labels = np.array([0, 0, 1, 1, 1, 0])
  jacobian = jax.jit(jax.jacobian(_all_losses))(jnp.asarray(emb), labels)
  assert np.isfinite(np.asarray(jacobian)).all()
  assert np.abs(np.asarray(jacobian)).sum() > 0
  # All embeddings identical.
  jacobian = jax.jit(jax.jacobian(_all_losses))(jnp.ones((4, 3)), np.array([0, 0, 1, 1]))
  assert np.isfinite(np.asarray(jacobian)).all()
  explicit = jax.grad(lambda a: losses.triplet_loss_explicit(a, a, a, margin=1.).sum())(emb)
  assert np.isfinite(np.asarray(explicit)).all()


def test_losses_are_zero_without_valid_tuples():
  emb, labels = _batch(3, 0)  # One class: no negatives.
  for mining in losses.MINING_STRATEGIES:
    assert losses.triplet_loss(emb, labels, mining=mining) == 0.0
  assert losses.margin_loss(emb, labels, 1.2, jax.random.key(0)) == 0.0


def _unit(emb):
  return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_distance_weighted_sampling_only_picks_negatives():
  # Class 3 sits far away from the others (no near negatives): its anchors use the uniform fallback.
  emb, labels = _batch(1, 0)
  emb = _unit(emb)
  emb[labels == 3] = _unit(np.tile([[1., 1., 1., 1., 1.]], (4, 1)) + 0.01 * emb[labels == 3])
  emb[labels != 3] = _unit(emb[labels != 3] - 3.0 * emb[labels == 3][0])
  sample = jax.jit(jax.vmap(losses.distance_weighted_negatives, in_axes=(None, None, 0)))
  negatives, has_negative = sample(emb, labels, jax.random.split(jax.random.key(0), 200))
  assert np.asarray(has_negative).all()
  negative_labels = labels[np.asarray(negatives)]  # (keys, anchor, slot)
  assert (negative_labels != labels[None, :, None]).all()
  # Anchors of class 3 have no negative closer than 1.4; they still draw every negative.
  distances = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
  assert (distances[labels == 3][:, labels != 3] >= 1.4).all()
  assert set(np.unique(negatives[:, labels == 3])) == set(np.flatnonzero(labels != 3))
  # Singleton and one-class batches: anchors without negatives are flagged.
  _, has_negative = losses.distance_weighted_negatives(*_batch(3, 0), jax.random.key(1))
  assert not np.asarray(has_negative).any()


def test_distance_weighted_sampling_frequencies():
  """Empirical frequencies of the sampler against q(d)^{-1} computed independently in float64."""
  emb, labels = _batch(1, 3)
  emb = _unit(emb)
  dim, cutoff, upper = emb.shape[1], 0.5, 1.4
  num_keys = 4000
  sample = jax.jit(jax.vmap(losses.distance_weighted_negatives, in_axes=(None, None, 0)))
  negatives, _ = sample(emb, labels, jax.random.split(jax.random.key(7), num_keys))
  negatives = np.asarray(negatives)
  distances = np.linalg.norm(np.float64(emb)[:, None] - np.float64(emb)[None], axis=-1)
  checked = 0
  for anchor in range(len(labels)):
    candidates = (labels != labels[anchor]) & (distances[anchor] < upper)
    if not candidates.any():
      continue
    d = np.maximum(distances[anchor], cutoff)
    inverse_density = d ** (2.0 - dim) * (1.0 - d**2 / 4.0) ** (-(dim - 3.0) / 2.0)
    probability = np.where(candidates, inverse_density, 0.0)
    probability /= probability.sum()
    draws = negatives[:, anchor, :].ravel()  # num_keys * B draws from the same distribution.
    frequency = np.bincount(draws, minlength=len(labels)) / draws.size
    tolerance = 5 * np.sqrt(probability * (1 - probability) / draws.size) + 1e-12
    assert (np.abs(frequency - probability) <= tolerance).all(), (anchor, frequency, probability)
    checked += 1
  assert checked >= 5


def _brute_margin_loss(emb, labels, beta, negatives, has_negative, margin, nu):
  beta = np.broadcast_to(np.asarray(beta, np.float64), (labels.max() + 1,))
  total, active, regulariser = 0.0, 0, 0.0
  for a, p in itertools.permutations(range(len(labels)), 2):
    if labels[a] != labels[p] or not has_negative[a]:
      continue
    b = beta[labels[a]]
    pos = max(0.0, _distance(emb[a], emb[p]) - b + margin)
    neg = max(0.0, b - _distance(emb[a], emb[negatives[a, p]]) + margin)
    total += pos + neg
    active += int(pos > 0) + int(neg > 0)
    regulariser += nu * b
  return (total + regulariser) / max(active, 1)


@pytest.mark.parametrize('per_class_beta', [False, True])
@pytest.mark.parametrize('nu', [0.0, 0.1])
def test_margin_loss_matches_brute_force(per_class_beta, nu):
  for case, seed in [(0, 0), (1, 1), (2, 2)]:
    emb, labels = _batch(case, seed)
    emb = _unit(emb)
    key = jax.random.key(seed)
    beta = np.linspace(0.6, 1.3, labels.max() + 1).astype(np.float32) if per_class_beta else 1.2
    negatives, has_negative = losses.distance_weighted_negatives(emb, labels, key)
    loss = losses.margin_loss(emb, labels, beta, key, margin=0.2, nu=nu)
    expected = _brute_margin_loss(emb, labels, beta, np.asarray(negatives),
                                  np.asarray(has_negative), 0.2, nu)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


def test_margin_loss_gives_beta_a_gradient():
  emb, labels = _batch(0, 0)
  emb = _unit(emb)
  grad_scalar = jax.grad(losses.margin_loss, argnums=2)(emb, labels, 1.2, jax.random.key(0))
  assert np.isfinite(grad_scalar) and grad_scalar != 0
  per_class = jnp.full((3,), 1.2)
  grad_per_class = jax.grad(losses.margin_loss, argnums=2)(emb, labels, per_class, jax.random.key(0))
  assert grad_per_class.shape == (3,) and np.any(np.asarray(grad_per_class) != 0)
  # With every class at the same value, the per-class gradients add up to the scalar one.
  np.testing.assert_allclose(jnp.sum(grad_per_class), grad_scalar, rtol=1e-5)
  with pytest.raises(ValueError, match='beta must be'):
    losses.margin_loss(emb, labels, jnp.ones((3, 1)), jax.random.key(0))


def test_margin_loss_decreases_under_sgd():
  """Free unit embeddings of 3 classes and a learnable beta, 40 SGD steps on the margin loss."""
  labels = np.repeat(np.arange(3), 4)
  raw = jax.random.normal(jax.random.key(0), (12, 8))
  def loss_fn(params, key):
    emb = params['raw'] / jnp.linalg.norm(params['raw'], axis=1, keepdims=True)
    return losses.margin_loss(emb, labels, params['beta'], key)
  params = {'raw': raw, 'beta': jnp.asarray(1.2)}
  learning_rates = {'raw': 2.0, 'beta': 0.05}  # beta gets its own, smaller rate (as in RetrievalGuard).
  evaluation_keys = jax.random.split(jax.random.key(1), 8)
  mean_loss = jax.jit(lambda p: jnp.mean(jax.vmap(lambda k: loss_fn(p, k))(evaluation_keys)))
  @jax.jit
  def step(params, key):
    grads = jax.grad(loss_fn)(params, key)
    return jax.tree.map(lambda v, g, rate: v - rate * g, params, grads, learning_rates)
  before = mean_loss(params)
  for key in jax.random.split(jax.random.key(2), 40):
    params = step(params, key)
  after = mean_loss(params)
  assert before > 0.1
  assert after < 0.25 * before
  assert params['beta'] != 1.2


@pytest.mark.parametrize('name, function', [('triplet', losses.triplet_loss),
                                            ('contrastive', losses.contrastive_loss),
                                            ('margin', losses.margin_loss)])
def test_get_loss(name, function):
  assert name in losses.LOSS_NAMES
  assert losses.get_loss(name) is function


def test_unknown_names_list_valid_ones():
  with pytest.raises(ValueError, match="valid losses: .*'triplet'.*'contrastive'.*'margin'"):
    losses.get_loss('arcface')
  with pytest.raises(ValueError, match="valid strategies: .*'batch_hard'"):
    losses.triplet_loss(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32), mining='hardest')


def test_bad_shapes_are_rejected():
  with pytest.raises(ValueError, match=r'\(B, k\)'):
    losses.triplet_loss(jnp.zeros((4, 2)), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match=r'\(B, k\)'):
    losses.contrastive_loss(jnp.zeros((4,)), jnp.zeros(4, jnp.int32))


def test_pairwise_distances_exact_for_a_cluster_far_from_the_origin():
  """The batch distances of the losses are shifted by the batch mean before the expansion."""
  rng = np.random.default_rng(0)
  embeddings = (np.full((1, 16), 0.25) + 1e-3 * rng.normal(size=(20, 16))).astype(np.float32)
  exact = np.linalg.norm(embeddings[:, None].astype(np.float64) - embeddings[None], axis=-1)
  np.testing.assert_allclose(np.asarray(losses._pairwise_distances(jnp.asarray(embeddings))),
                             exact, rtol=1e-3, atol=1e-7)
