"""Tests of the one-call public API `jaxcert.api` on one's own encoder.

The certificates of `certify_retrieval` are checked by brute force on a tiny linear encoder with
2 x 2 pixel images: every corner of each L-infinity box and random points inside it are embedded,
ranks recomputed, and each must lie inside the certified rank bounds (under QA, one perturbation of
the query at a time; under CA, the candidates' extreme distances sampled independently); every
query certified at K keeps a correct answer in its top K under all of them and under the PGD
attacks of `attack_retrieval`. A Flax Linen model, a Flax NNX model and a plain function with the
same weights get the same certificates; smoothing is checked against its own claim by re-smoothing
perturbed queries. Inputs a user can get wrong fail with a message that says what to change.
"""

import itertools

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcert
from jaxcert import smoothing

EPS = 0.02
KS = (1, 3)
IMAGE_SHAPE = (2, 2, 1)


def _labelled_images(seed, per_class, centers, noise=0.2):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(len(centers)), per_class)
  images = centers[labels] + noise * rng.normal(size=(len(labels),) + IMAGE_SHAPE)
  return np.clip(images, 0, 1).astype(np.float32), labels.astype(np.int32)


_CENTERS = np.random.default_rng(0).uniform(0.2, 0.8, (3,) + IMAGE_SHAPE)
QUERIES, QUERY_LABELS = _labelled_images(1, 8, _CENTERS)
CANDIDATES, CANDIDATE_LABELS = _labelled_images(2, 10, _CENTERS)
WEIGHT = np.random.default_rng(3).normal(size=(4, 3))


def _linear_embed(x):
  return x.reshape(x.shape[0], -1) @ WEIGHT


def _embed64(images):
  return np.asarray(images, np.float64).reshape(len(images), -1) @ WEIGHT


def _box_samples(image, num_random, rng):
  """Every corner of the L-inf box of `image` (clipped to [0, 1]) and `num_random` points inside."""
  low, high = np.clip(image - EPS, 0, 1), np.clip(image + EPS, 0, 1)
  corners = np.array([np.where(np.reshape(bits, image.shape), high, low)
                      for bits in itertools.product((0, 1), repeat=image.size)])
  inside = rng.uniform(low, high, size=(num_random,) + image.shape)
  return np.concatenate([corners, inside])


@pytest.fixture(scope='module')
def certified():
  return jaxcert.certify_retrieval(_linear_embed, QUERIES, QUERY_LABELS, CANDIDATES,
                                   CANDIDATE_LABELS, eps=EPS, ks=KS)


def test_certificates_are_not_vacuous(certified):
  for field in ('certified_qa', 'certified_ca'):
    hits = getattr(certified, field)
    assert hits.any() and not hits.all(), field
  for k in KS:
    assert certified.cr_recall_qa[k] <= certified.recall[k]
    assert certified.cr_recall_ca[k] <= certified.recall[k]
    assert certified.cr_recall_qa[k] == certified.certified_qa[:, KS.index(k)].mean()


def test_query_attack_ranks_stay_inside_bounds_on_box_samples(certified):
  rng = np.random.default_rng(4)
  bounds = certified.rank_bounds
  candidate_emb = _embed64(CANDIDATES)
  same_class = CANDIDATE_LABELS[None, :] == QUERY_LABELS[:, None]
  for query in range(len(QUERIES)):
    samples = _embed64(_box_samples(QUERIES[query], 200, rng))  # (S, d)
    distances = np.linalg.norm(samples[:, None] - candidate_emb[None], axis=-1)  # (S, N)
    ranks = 1 + np.sum(distances[:, None, :] < distances[:, bounds.indices[query], None], axis=-1)
    assert np.all(bounds.query_attack_lower[query] <= ranks)
    assert np.all(ranks <= bounds.query_attack_upper[query])
    for j, k in enumerate(KS):
      if certified.certified_qa[query, j]:  # a correct answer in the top K for every sample
        correct_ranks = np.where(same_class[query][None], 1 + np.sum(
            distances[:, None, :] < distances[:, :, None], axis=-1), np.inf)
        assert np.all(correct_ranks.min(axis=1) <= k)


def test_candidate_attack_ranks_stay_inside_bounds_on_box_samples(certified):
  rng = np.random.default_rng(5)
  bounds = certified.rank_bounds
  query_emb = _embed64(QUERIES)
  # Each candidate moves in its own box: its sampled nearest and farthest distance to each query.
  sampled = np.stack([np.linalg.norm(_embed64(_box_samples(c, 100, rng))[:, None] - query_emb[None],
                                     axis=-1) for c in CANDIDATES])  # (N, S, Nq)
  nearest, farthest = sampled.min(axis=1).T, sampled.max(axis=1).T  # (Nq, N)
  for query in range(len(QUERIES)):
    top = bounds.indices[query]
    others = np.arange(len(CANDIDATES))[None, :] != top[:, None]  # (k, N)
    # The worst (largest) rank sampled: c^ at its farthest, every other candidate at its nearest.
    worst = 1 + np.sum(others & (nearest[query][None] < farthest[query, top][:, None]), axis=1)
    best = 1 + np.sum(others & (farthest[query][None] < nearest[query, top][:, None]), axis=1)
    assert np.all(worst <= bounds.candidate_attack_upper[query])
    assert np.all(bounds.candidate_attack_lower[query] <= best)
    correct = CANDIDATE_LABELS[top] == QUERY_LABELS[query]
    for j, k in enumerate(KS):
      if certified.certified_ca[query, j]:
        assert np.any(correct & (worst <= k))


def test_certified_queries_survive_pgd(certified):
  attacked = jaxcert.attack_retrieval(_linear_embed, QUERIES, QUERY_LABELS, CANDIDATES,
                                      CANDIDATE_LABELS, eps=EPS, ks=KS, key=jax.random.key(0),
                                      num_steps=10, num_sources=2)
  assert attacked.recall == certified.recall
  assert attacked.er_recall_qa[1] < attacked.recall[1]  # the attack does break uncertified queries
  assert np.all(attacked.hits_qa[certified.certified_qa])
  assert np.all(attacked.hits_ca[certified.certified_ca])
  assert np.all(np.abs(attacked.adversarial_queries - QUERIES) <= EPS + 1e-6)
  assert attacked.adversarial_queries.min() >= 0 and attacked.adversarial_queries.max() <= 1


class _LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(5)(x.reshape(x.shape[0], -1)))
    return nn.Dense(3)(x)


class _NNXMLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(4, 5, rngs=rngs)
    self.out = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))


def test_linen_and_nnx_models_get_the_same_certificates():
  linen = _LinenMLP()
  variables = linen.init(jax.random.key(0), jnp.zeros((1,) + IMAGE_SHAPE))
  params = variables['params']
  nnx_model = _NNXMLP(nnx.Rngs(0))
  nnx_model.hidden.kernel[...] = params['Dense_0']['kernel']
  nnx_model.hidden.bias[...] = params['Dense_0']['bias']
  nnx_model.out.kernel[...] = params['Dense_1']['kernel']
  nnx_model.out.bias[...] = params['Dense_1']['bias']
  graphdef, state = nnx.split(nnx_model)

  linen_result, nnx_result = (
      jaxcert.certify_retrieval(embed, QUERIES, QUERY_LABELS, CANDIDATES, CANDIDATE_LABELS,
                                eps=EPS, ks=KS)
      for embed in (jax.tree_util.Partial(linen.apply, variables),
                    lambda x: nnx.merge(graphdef, state)(x)))
  assert linen_result.certified_qa.any() and linen_result.certified_ca.any()
  for field in ('certified_qa', 'certified_ca'):
    np.testing.assert_array_equal(getattr(nnx_result, field), getattr(linen_result, field))
  for field, value in nnx_result.rank_bounds._asdict().items():
    np.testing.assert_array_equal(value, getattr(linen_result.rank_bounds, field))


def test_smoothed_certificate_holds_for_queries_moved_towards_a_wrong_answer():
  # Three well-separated classes and an encoder that maps them to distinct directions.
  centers = np.array([[.9, .9, .1, .1], [.1, .1, .9, .9], [.9, .1, .9, .1]]).reshape(
      (3,) + IMAGE_SHAPE)
  weight = np.array([[1., 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]])
  embed = lambda x: (x.reshape(x.shape[0], -1) - 0.5) @ weight
  queries, query_labels = _labelled_images(7, 4, centers, noise=0.05)
  candidates, candidate_labels = _labelled_images(8, 5, centers, noise=0.05)
  sigma, num_samples = 0.25, 5000
  result = jaxcert.certify_smoothed_retrieval(
      embed, queries, query_labels, candidates, candidate_labels, key=jax.random.key(0),
      sigma=sigma, num_samples=num_samples, radii=(0.0, 0.05), batch_size=len(candidates))
  certified = result.radius > 0
  assert certified.any()
  assert np.all(result.correct[result.radius >= 0])  # never a certified wrong answer
  for r, value in result.certified_recall_at_1.items():
    assert value == np.mean(result.correct & (result.radius >= 0) & (result.radius >= r))
  # Move each certified query 0.9 of its radius (L2) straight towards its nearest candidate of
  # another class and re-smooth it with fresh noise: its smoothed 1-NN keeps the query's label.
  flat_queries, flat_candidates = queries.reshape(len(queries), -1), candidates.reshape(
      len(candidates), -1)
  pixel_distances = np.linalg.norm(flat_queries[:, None] - flat_candidates[None], axis=-1)
  pixel_distances[candidate_labels[None, :] == query_labels[:, None]] = np.inf
  direction = flat_candidates[np.argmin(pixel_distances, axis=1)] - flat_queries
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  moved = flat_queries + 0.9 * np.maximum(result.radius, 0)[:, None] * direction
  bounded = smoothing.bounded_embedding(embed)
  smoother = smoothing.smooth(bounded, sigma=sigma, num_samples=num_samples, chunk_size=256)
  smoothed_candidates = smoothing.smooth_dataset(smoother, jax.random.key(1), candidates,
                                                 batch_size=len(candidates))
  smoothed_moved = smoothing.smooth_dataset(smoother, jax.random.key(2),
                                            moved.reshape(queries.shape),
                                            batch_size=len(candidates))
  distances = np.linalg.norm(smoothed_moved.mean[:, None] - smoothed_candidates.mean[None], axis=-1)
  nearest_label = candidate_labels[np.argmin(distances, axis=1)]
  assert np.all(nearest_label[certified] == query_labels[certified])


@pytest.mark.parametrize('change, message', [
    (dict(queries=QUERIES * 255), 'pixels in \\[0, 1\\]'),
    (dict(query_labels=QUERY_LABELS[:-1]), 'query_labels must be 24 integer class labels'),
    (dict(candidate_labels=CANDIDATE_LABELS.astype(np.float32)), 'integer class labels'),
    (dict(candidates=CANDIDATES[:, :1]), 'images of one shape'),
    (dict(ks=(1, 31)), 'ks must be integers in \\[1, 30\\]'),
    (dict(eps=-0.1), 'eps must be a finite radius >= 0'),
    (dict(dtype='float16'), "Unknown dtype 'float16'; valid: \\['float64', 'float32'\\]"),
    (dict(embed=lambda x: x.reshape(-1)), 'maps \\(2, 2, 2, 1\\) to \\(8,\\)'),
    (dict(embed=lambda x: x @ jnp.ones((3, 3))), 'embed failed on a batch of shape'),
    (dict(embed='model'), 'embed must be a function'),
    (dict(embed=lambda x: _linear_embed(x).astype(jnp.float32)),
     "embed computes in float32 on float64 images .*pass dtype='float32'"),
    # Computing inside in a narrower dtype: rounding the float64 slack does not cover.
    (dict(embed=lambda x: (x.reshape(x.shape[0], -1).astype(jnp.bfloat16)
                           @ WEIGHT.astype(jnp.bfloat16)).astype(x.dtype)),
     '`dot_general` in bfloat16 at .*test_api.py'),
    (dict(embed=lambda x: jnp.tanh(_linear_embed(x).astype(jnp.float32)).astype(x.dtype)),
     'narrower floating dtype than the float64 bounds: `tanh` in float32'),
])
def test_certify_retrieval_rejects_bad_input_with_a_clear_message(change, message):
  arguments = dict(embed=_linear_embed, queries=QUERIES, query_labels=QUERY_LABELS,
                   candidates=CANDIDATES, candidate_labels=CANDIDATE_LABELS, eps=EPS, ks=KS)
  arguments.update(change)
  embed = arguments.pop('embed')
  with pytest.raises(ValueError, match=message):
    jaxcert.certify_retrieval(embed, **arguments)


def test_attack_and_smoothing_reject_bad_settings():
  data = (QUERIES, QUERY_LABELS, CANDIDATES, CANDIDATE_LABELS)
  with pytest.raises(ValueError, match='num_sources must be an integer in \\[1, 20\\]'):
    jaxcert.attack_retrieval(_linear_embed, *data, eps=EPS, key=jax.random.key(0), ks=KS,
                             num_sources=100)
  with pytest.raises(ValueError, match="Unknown certificate 'cohen'; valid: \\['retrievalguard', 'bisector'\\]"):
    jaxcert.certify_smoothed_retrieval(_linear_embed, *data, key=jax.random.key(0), sigma=0.1,
                                       num_samples=200, certificate='cohen')


def test_smoothing_says_too_few_samples_before_drawing_any(monkeypatch):
  """num_samples too small for any certificate is known from the labels alone: the error comes
  before the Monte-Carlo sampling (the expensive part), with the minimum n in its message."""
  def sampling(*args, **kwargs):
    raise AssertionError('sampled before checking num_samples')
  monkeypatch.setattr(smoothing, 'smooth_select_and_estimate', sampling)
  data = (QUERIES, QUERY_LABELS, CANDIDATES, CANDIDATE_LABELS)
  for certificate in smoothing.CERTIFICATES:
    minimum = smoothing.minimum_num_samples(certificate, embedding_dim=WEIGHT.shape[1])
    with pytest.raises(ValueError, match=r'\(queries 20, gallery 20\) is too small.*Use num_samples >= '
                       f'{minimum} for both'):
      jaxcert.certify_smoothed_retrieval(_linear_embed, *data, key=jax.random.key(0), sigma=0.25,
                                         num_samples=20, certificate=certificate)
  with pytest.raises(ValueError, match='num_samples must be an integer >= 1, got 0'):
    jaxcert.certify_smoothed_retrieval(_linear_embed, *data, key=jax.random.key(0), sigma=0.25,
                                       num_samples=0)
  with pytest.raises(AssertionError, match='sampled'):  # enough samples: it goes on to sample
    jaxcert.certify_smoothed_retrieval(_linear_embed, *data, key=jax.random.key(0), sigma=0.25,
                                       num_samples=smoothing.minimum_num_samples(embedding_dim=3))
