"""jaxcert.smoothing: the Monte-Carlo estimator and the RetrievalGuard and bisector certificates.

Every bound is attacked: closed-form smoothed models (sign, probit, linear) give the true g, the
true margin d(x; g) and the true robust radius; estimates placed at the corners of their
concentration intervals must keep the radius sound; Monte-Carlo repeats count how often a bound
fails (binomial tolerance) and check the count would catch a bound half as large; PGD on the exact
smoothed model tries to flip a certified 1-NN.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special
from scipy import stats

from jaxcert import attacks
from jaxcert import losses
from jaxcert import models
from jaxcert import smoothing

CERTIFICATES = smoothing.CERTIFICATES


# ---------------------------------------------------------------------------
# Closed-form smoothed models.
# ---------------------------------------------------------------------------


def _sign_embedding(x, F=1.0):
  """RetrievalGuard's tightness example h(x) = F sign(x) (inputs (B, 1))."""
  return F * jnp.sign(x)


def _sign_smoothed(x, sigma, F=1.0):
  """g(x) = F (Phi(x / sigma) - Phi(-x / sigma)) (RetrievalGuard, Sec. 3.2)."""
  return F * (2.0 * special.ndtr(np.asarray(x, np.float64) / sigma) - 1.0)


def _probit_embedding(x, matrix, scale, F=1.0):
  """h_c(x) = (F / sqrt(k)) (2 Phi(<a_c, x> / s) - 1): ||h|| <= F."""
  k = matrix.shape[0]
  return F / math.sqrt(k) * (2.0 * jax.scipy.special.ndtr(x.reshape(x.shape[0], -1) @ matrix.T
                                                          / scale) - 1.0)


def _probit_smoothed(x, matrix, scale, sigma, F=1.0):
  """E h(x + z) in closed form: <a_c, z> ~ N(0, sigma^2 ||a_c||^2) widens the probit."""
  k = matrix.shape[0]
  width = jnp.sqrt(scale ** 2 + sigma ** 2 * jnp.sum(matrix ** 2, axis=1))
  return F / math.sqrt(k) * (2.0 * jax.scipy.special.ndtr(x.reshape(x.shape[0], -1) @ matrix.T
                                                          / width) - 1.0)


def _exact_set(mean, sigma, F=1.0):
  """SmoothedEmbeddings holding the exact g (n = 1e16: concentration radii ~ 1e-7)."""
  mean = np.asarray(mean, np.float64)
  return smoothing.SmoothedEmbeddings(mean, np.linalg.norm(mean, axis=1), 10 ** 16, sigma, F, 0.0)


def _margin(query, gallery, query_labels, gallery_labels):
  """d(x; g) (Definition 3.1) for each query row."""
  distance = np.linalg.norm(query[:, None, :] - gallery[None, :, :], axis=-1)
  same = gallery_labels[None, :] == query_labels[:, None]
  return (np.where(same, np.inf, distance).min(1) - np.where(same, distance, np.inf).min(1))


def _exact_radius_1d(x0, gallery_x, gallery_positive, sigma, F=1.0):
  """Largest r with the 1-NN of g(x0 + delta) positive for all |delta| < r (h = F sign, k = 1).

  g is increasing, so g(x0 + delta) sweeps the embedding line; the 1-NN label is constant on the
  Voronoi cells (midpoints between sorted gallery embeddings). Returns -1 if x0 is misretrieved.
  """
  order = np.argsort(_sign_smoothed(gallery_x, sigma, F))
  points = _sign_smoothed(gallery_x, sigma, F)[order]
  positive = np.asarray(gallery_positive)[order]
  boundaries = np.concatenate([[-np.inf], (points[1:] + points[:-1]) / 2, [np.inf]])
  y0 = _sign_smoothed(x0, sigma, F)
  cell = np.searchsorted(boundaries, y0) - 1
  if not positive[cell]:
    return -1.0
  low, high = cell, cell
  while low > 0 and positive[low - 1]:
    low -= 1
  while high < len(points) - 1 and positive[high + 1]:
    high += 1
  def input_at(y):
    return sigma * special.ndtri((y / F + 1.0) / 2.0)
  up = np.inf if boundaries[high + 1] >= F else input_at(boundaries[high + 1]) - x0
  down = np.inf if boundaries[low] <= -F else x0 - input_at(boundaries[low])
  return min(up, down)


def _binomial_limit(trials, probability, significance=1e-3):
  """The count a Binomial(trials, probability) exceeds with probability < significance."""
  return stats.binom.ppf(1.0 - significance, trials, probability)


def _repeat_sets(repeats, num_samples, sigma, F=1.0, chunk_size=1):
  """SmoothedEmbeddings for each repeat of a `Smoothed` with (R, B, k) means, (R, B) max norms."""
  allowance = (chunk_size + 4) * 2.0 ** -24 * F
  return [smoothing.SmoothedEmbeddings(np.asarray(mean, np.float64),
                                       np.asarray(max_norm, np.float64), num_samples, sigma, F,
                                       allowance)
          for mean, max_norm in zip(repeats.mean, repeats.max_norm)]


# ---------------------------------------------------------------------------
# The estimator.
# ---------------------------------------------------------------------------


def _tiny_mlp():
  weights = jax.random.normal(jax.random.key(3), (6, 5)) / 3.0
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ weights)


def test_chunked_scan_equals_one_shot_mean_and_ignores_the_batch():
  embed = _tiny_mlp()
  num_samples, chunk_size, sigma = 250, 64, 0.3  # 4 chunks, the last one masked to 58 samples.
  smoother = smoothing.smooth(embed, sigma=sigma, num_samples=num_samples, chunk_size=chunk_size)
  x = jax.random.uniform(jax.random.key(1), (3, 6))
  key = jax.random.key(7)
  result = smoother(key, x)
  noise = jnp.concatenate([jax.random.normal(jax.random.fold_in(key, c), (chunk_size, 6))
                           for c in range(4)])[:num_samples] * sigma
  samples = jax.vmap(lambda z: embed(x + z))(noise)  # (n, B, k)
  np.testing.assert_allclose(result.mean, samples.mean(0), rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(result.max_norm, jnp.linalg.norm(samples, axis=-1).max(0), rtol=1e-5)
  # g_hat(x) is a function of (key, x): the same row alone gives the same estimate.
  np.testing.assert_allclose(smoother(key, x[1:2]).mean[0], result.mean[1], rtol=1e-6)


def test_compensated_accumulation_stays_within_the_rounding_allowance():
  # 20,000 one-sample chunks of 0.1: naive float32 accumulation errs by ~1e-4 relative.
  smoother = smoothing.smooth(lambda x: jnp.full((x.shape[0], 1), 0.1), sigma=1.0,
                              num_samples=20_000, chunk_size=1)
  mean = float(smoother(jax.random.key(0), jnp.zeros((1, 1))).mean[0, 0])
  assert abs(mean - 0.1) <= smoother.rounding_allowance


def test_memory_does_not_grow_with_num_samples():
  model_fn = _tiny_mlp()
  temp = {}
  for num_samples in (1_000, 100_000):
    smoother = smoothing.smooth(model_fn, sigma=0.25, num_samples=num_samples, chunk_size=100)
    compiled = smoother.lower(jax.random.key(0), jnp.zeros((4, 6))).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
      pytest.skip('memory_analysis is not available on this backend')
    temp[num_samples] = analysis.temp_size_in_bytes
  assert temp[100_000] == temp[1_000]


def test_bounded_embedding_modes():
  weights = jnp.array([[3.0, 0.0], [0.0, 0.2]])
  embed = lambda x: x @ weights
  x = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
  normalized = smoothing.bounded_embedding(embed, 2.0, 'normalize')(x)
  clipped = smoothing.bounded_embedding(embed, 2.0, 'clip')(x)
  np.testing.assert_allclose(np.linalg.norm(normalized[:2], axis=1), 2.0, rtol=1e-6)
  np.testing.assert_allclose(normalized[2], 0.0)
  np.testing.assert_allclose(clipped, [[2.0, 0.0], [0.0, 0.2], [0.0, 0.0]], rtol=1e-6)


# ---------------------------------------------------------------------------
# Closed forms: Lemma 3.3 and Theorem 3.5 where the paper says they are tight.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('sigma', smoothing.PAPER_SIGMAS)
def test_lemma_3_3_is_attained_by_the_sign_example(sigma):
  x = np.linspace(0.01, 3.0, 50) * sigma
  difference = _sign_smoothed(x, sigma) - _sign_smoothed(-x, sigma)
  np.testing.assert_allclose(smoothing.smoothed_lipschitz_bound(2 * x, sigma), difference,
                             rtol=1e-12)


@pytest.mark.parametrize('certificate', CERTIFICATES)
@pytest.mark.parametrize('sigma', (0.25, 1.0))
def test_radius_matches_the_closed_form_where_theorem_3_5_is_tight(certificate, sigma):
  # Query g(-t) = -a, its positive at the same input, the negative at g = 3a: g(x + delta) reaches
  # the bisector a at delta = 2t, and 2 sigma Phi^-1(1/2 + d / 8F) with d = 4a is exactly 2t.
  t = 0.3 * sigma
  a = _sign_smoothed(t, sigma)
  negative_x = sigma * special.ndtri((3 * a + 1) / 2)
  gallery_x = np.array([-t, negative_x])
  gallery = _exact_set(_sign_smoothed(gallery_x, sigma)[:, None], sigma)
  query = _exact_set(_sign_smoothed(np.array([-t]), sigma)[:, None], sigma)
  result = smoothing.certify(query, query, [0], gallery, gallery, [0, 1], alpha=0.01,
                             certificate=certificate)
  exact = _exact_radius_1d(-t, gallery_x, [True, False], sigma)
  assert exact == pytest.approx(2 * t, rel=1e-9)
  assert result.radius[0] <= exact
  assert result.radius[0] == pytest.approx(2 * t, rel=1e-4)
  assert result.margin_lower_bound[0] == pytest.approx(4 * a, abs=1e-5)


@pytest.mark.parametrize('certificate', CERTIFICATES)
def test_radius_never_exceeds_the_exact_radius_dense_1d(certificate):
  rng = np.random.default_rng(0)
  sigma, checked, tight = 0.5, 0, 0
  for _ in range(300):
    gallery_x = rng.normal(0.0, 1.0, size=6)
    gallery_labels = rng.integers(0, 2, size=6)
    query_x = rng.normal(0.0, 1.0, size=1)
    gallery = _exact_set(_sign_smoothed(gallery_x, sigma)[:, None], sigma)
    query = _exact_set(_sign_smoothed(query_x, sigma)[:, None], sigma)
    result = smoothing.certify(query, query, [1], gallery, gallery, gallery_labels,
                               certificate=certificate, num_negative_pairs=6)
    exact = _exact_radius_1d(query_x[0], gallery_x, gallery_labels == 1, sigma)
    if result.radius[0] >= 0:
      checked += 1
      assert result.radius[0] <= exact * (1 + 1e-9), (gallery_x, gallery_labels, query_x)
      tight += result.radius[0] >= 0.999 * exact
  assert checked > 50
  if certificate == 'bisector':
    # In one dimension the bisector constraints are exact for a single positive cell.
    assert tight > checked / 2


@pytest.mark.parametrize('certificate', CERTIFICATES)
def test_radius_is_sound_for_any_estimates_inside_the_concentration_events(certificate):
  # On the events ||g_hat - g|| <= eps the radius must be sound for *every* estimate: put each
  # estimate at a corner of its eps-interval (all 2^5 sign patterns; 1-D sign example).
  rng = np.random.default_rng(3)
  sigma, alpha, num_samples, checked = 0.5, 0.05, 3000, 0
  for _ in range(40):
    gallery_x = rng.normal(0.0, 1.0, size=4)
    gallery_labels = rng.permutation([0, 0, 1, 1])
    query_x = rng.normal(0.0, 1.0, size=1)
    true_query = _sign_smoothed(query_x, sigma)[:, None]
    true_gallery = _sign_smoothed(gallery_x, sigma)[:, None]
    exact = _exact_radius_1d(query_x[0], gallery_x, gallery_labels == 0, sigma)
    true_margin = _margin(true_query, true_gallery, np.array([0]), gallery_labels)[0]
    if certificate == 'retrievalguard':
      eps = smoothing.paper_concentration_radius(num_samples, 1, alpha / 4)
    else:  # Events: query, x+, both negatives (each its own pair constraint).
      eps = smoothing.vector_concentration_radius(num_samples, alpha / 4, embedding_dim=1)
    for signs in np.ndindex(*(2,) * 5):
      shift = (1 - 1e-9) * eps * (2 * np.array(signs) - 1.0)
      query = _exact_set(np.clip(true_query + shift[0], -1, 1), sigma)
      gallery = _exact_set(np.clip(true_gallery + shift[1:, None], -1, 1), sigma)
      query_estimate, gallery_estimate = (
          smoothing.SmoothedEmbeddings(s.mean, s.max_norm, num_samples, sigma, 1.0, 0.0)
          for s in (query, gallery))
      result = smoothing.certify(_exact_set(true_query, sigma), query_estimate, [0],
                                 _exact_set(true_gallery, sigma), gallery_estimate,
                                 gallery_labels, alpha=alpha, certificate=certificate)
      assert result.margin_lower_bound[0] <= true_margin + 1e-9
      if result.radius[0] >= 0:
        checked += 1
        assert result.radius[0] <= exact * (1 + 1e-9), (gallery_x, gallery_labels, query_x, signs)
  assert checked > 100


def test_bisector_radius_is_at_least_the_papers_on_the_same_estimates():
  # Unit-ball embeddings in k = 32: a gallery of 6 classes, queries near gallery items.
  rng = np.random.default_rng(1)
  gallery = rng.normal(size=(60, 32))
  gallery *= 0.9 / np.linalg.norm(gallery, axis=1, keepdims=True)
  labels = rng.integers(0, 6, size=60)
  queries = gallery[:20] + 0.5 * rng.normal(size=(20, 32)) / np.sqrt(32)
  queries *= 0.9 / np.linalg.norm(queries, axis=1, keepdims=True)
  sets = [smoothing.SmoothedEmbeddings(e, np.full(len(e), 0.9), 100_000, 0.5, 1.0, 1e-5)
          for e in (queries, gallery)]
  results = {c: smoothing.certify(sets[0], sets[0], labels[:20], sets[1], sets[1], labels,
                                  certificate=c) for c in CERTIFICATES}
  paper, ours = results['retrievalguard'].radius, results['bisector'].radius
  assert np.sum(paper > 0) >= 15
  assert np.all(ours >= paper)
  assert np.median(ours[paper > 0] / paper[paper > 0]) > 1.1


# ---------------------------------------------------------------------------
# Monte-Carlo coverage.
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=('smoother',))
def _repeated(smoother, keys, x):
  """`smoother(key, x)` for each key: a `Smoothed` with a leading repeat axis."""
  return jax.vmap(lambda key: smoother(key, x))(keys)


def test_concentration_radius_coverage_and_test_power():
  # The sign example at x = 0 (h = +-F with probability 1/2) is the largest-variance case.
  num_samples, repeats, beta = 100, 4000, 0.01
  smoother = smoothing.smooth(_sign_embedding, sigma=1.0, num_samples=num_samples, chunk_size=100)
  keys = jax.random.split(jax.random.key(0), repeats)
  errors = np.abs(np.asarray(_repeated(smoother, keys, jnp.zeros((1, 1))).mean)[:, 0, 0])
  radius = smoothing.vector_concentration_radius(num_samples, beta, embedding_dim=1)
  assert np.sum(errors > radius) <= _binomial_limit(repeats, beta)
  # Power: a radius half as large fails far more often than beta allows.
  assert np.sum(errors > radius / 2) > _binomial_limit(repeats, beta)
  # The paper's radius (Lemma 3.6) where its constant is valid (radius <= F / 2).
  paper = smoothing.paper_concentration_radius(num_samples, 1, beta)
  assert paper <= 0.5 and np.sum(errors > paper) <= _binomial_limit(repeats, beta)


@pytest.mark.parametrize('certificate', CERTIFICATES)
def test_sign_example_coverage(certificate):
  # Theorem 3.5's tight configuration plus a second negative, smoothed by Monte Carlo each repeat.
  sigma, alpha, num_samples, num_select, repeats = 0.5, 0.1, 400, 100, 300
  t = 0.3 * sigma
  a = _sign_smoothed(t, sigma)
  gallery_x = np.array([-t, sigma * special.ndtri((3 * a + 1) / 2), -4 * sigma])
  gallery_labels = np.array([0, 1, 1])
  inputs = np.concatenate([[-t], gallery_x])[:, None].astype(np.float32)
  true_g = _sign_smoothed(inputs[:, 0], sigma)[:, None]
  true_margin = _margin(true_g[:1], true_g[1:], np.array([0]), gallery_labels)[0]
  true_radius = _exact_radius_1d(-t, gallery_x, gallery_labels == 0, sigma)
  estimate_smoother = smoothing.smooth(_sign_embedding, sigma=sigma, num_samples=num_samples,
                                       chunk_size=num_samples)
  select_smoother = smoothing.smooth(_sign_embedding, sigma=sigma, num_samples=num_select,
                                     chunk_size=num_select)
  keys = jax.random.split(jax.random.key(1), repeats)
  estimates = _repeat_sets(_repeated(estimate_smoother, keys, jnp.asarray(inputs)),
                           num_samples, sigma, chunk_size=num_samples)
  selections = _repeat_sets(
      _repeated(select_smoother, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys),
                      jnp.asarray(inputs)), num_select, sigma, chunk_size=num_select)
  failures, certified, plug_in_failures = 0, 0, 0
  for select, estimate in zip(selections, estimates):
    query_select, gallery_select = _split(select)
    query_estimate, gallery_estimate = _split(estimate)
    result = smoothing.certify(query_select, query_estimate, [0], gallery_select,
                               gallery_estimate, gallery_labels, alpha=alpha,
                               certificate=certificate)
    certified += result.radius[0] >= 0
    failures += (result.margin_lower_bound[0] > true_margin) or (result.radius[0] > true_radius)
    plug_in_failures += _margin(query_estimate.mean, gallery_estimate.mean, np.array([0]),
                                gallery_labels)[0] > true_margin
  assert certified > repeats / 2
  assert failures <= _binomial_limit(repeats, alpha)
  # Power: the plug-in margin d(x; g_hat), a "bound" without the concentration slack, fails.
  assert plug_in_failures > _binomial_limit(repeats, alpha)


def _split(smoothed):
  """(row 0, rows 1:) of a SmoothedEmbeddings."""
  parts = []
  for rows in (slice(0, 1), slice(1, None)):
    parts.append(smoothing.SmoothedEmbeddings(
        smoothed.mean[rows], smoothed.max_norm[rows], smoothed.num_samples, smoothed.sigma,
        smoothed.F, smoothed.rounding_allowance))
  return parts


@pytest.mark.parametrize('certificate', CERTIFICATES)
def test_linear_embedding_coverage(certificate):
  # h = W x, clipped to the unit ball: with ||W x|| <= 0.5 and ||W z|| ~ 0.04 the clip is never
  # active, so g = h = W x exactly. One positive: the exact radius is the distance to the nearest
  # bisector, (b_i - <W x, u_i>) / ||W^T u_i||.
  sigma, alpha, num_samples, repeats = 0.1, 0.1, 5000, 100
  rng = np.random.default_rng(2)
  weights = rng.normal(size=(3, 2)) * 0.15
  gallery_x = rng.normal(size=(6, 3))
  gallery_x *= 0.45 / np.linalg.norm(gallery_x @ weights, axis=1, keepdims=True)
  gallery_labels = np.array([0, 1, 1, 2, 2, 1])
  query_x = gallery_x[:1] + rng.normal(size=(1, 3)) * 0.05
  inputs = np.concatenate([query_x, gallery_x]).astype(np.float32)
  true_g = inputs.astype(np.float64) @ weights
  true_margin = _margin(true_g[:1], true_g[1:], np.array([0]), gallery_labels)[0]
  positive_g, query_g = true_g[1], true_g[0]
  bisector_distances = []
  for negative_g in true_g[2:]:
    w = negative_g - positive_g
    offset = (negative_g @ negative_g - positive_g @ positive_g) / (2 * np.linalg.norm(w))
    u = w / np.linalg.norm(w)
    bisector_distances.append((offset - query_g @ u) / np.linalg.norm(weights @ u))
  true_radius = min(bisector_distances)
  assert true_margin > 0 and true_radius > 0
  embed = smoothing.bounded_embedding(lambda x: x @ jnp.asarray(weights, jnp.float32), 1.0, 'clip')
  smoother = smoothing.smooth(embed, sigma=sigma, num_samples=num_samples, chunk_size=1000)
  keys = jax.random.split(jax.random.key(2), repeats)
  estimates = _repeat_sets(_repeated(smoother, keys, jnp.asarray(inputs)), num_samples,
                           sigma, chunk_size=1000)
  exact_means = np.mean([e.mean for e in estimates], axis=0)
  np.testing.assert_allclose(exact_means, true_g, atol=3e-4)  # E g_hat = W x: no clipping.
  assert max(np.max(e.max_norm) for e in estimates) < 1.0  # The clip never acted: h = W x.
  failures, certified, plug_in_failures = 0, 0, 0
  for estimate in estimates:
    query, gallery = _split(estimate)
    # Selection from the same smoothing would bias x+; here the gallery has one positive.
    result = smoothing.certify(query, query, [0], gallery, gallery, gallery_labels,
                               alpha=alpha, certificate=certificate)
    certified += result.radius[0] >= 0
    failures += (result.margin_lower_bound[0] > true_margin) or (result.radius[0] > true_radius)
    plug_in_failures += _margin(query.mean, gallery.mean, np.array([0]),
                                gallery_labels)[0] > true_margin
  assert certified > repeats / 2
  assert failures <= _binomial_limit(repeats, alpha)
  # Power: the plug-in margin d(x; g_hat), a "bound" without the concentration slack, fails.
  assert plug_in_failures > _binomial_limit(repeats, alpha)


# ---------------------------------------------------------------------------
# PGD on the exact smoothed model.
# ---------------------------------------------------------------------------


def _retrieval_margin(x, matrix, scale, sigma, positives, negatives):
  """Per-example d(x; g) of the exact probit smoothed model (positives/negatives: (B, m, k))."""
  g = _probit_smoothed(x, matrix, scale, sigma)[:, None, :]
  positive = jnp.sqrt(jnp.sum((g - positives) ** 2, -1) + 1e-12).min(1)
  negative = jnp.sqrt(jnp.sum((g - negatives) ** 2, -1) + 1e-12).min(1)
  return negative - positive


def _attack_loss(x, matrix, scale, sigma, positives, negatives):
  return -_retrieval_margin(x, matrix, scale, sigma, positives, negatives)


@pytest.mark.parametrize('certificate', CERTIFICATES)
def test_pgd_on_the_smoothed_model_never_flips_a_certified_query(certificate):
  sigma, num_samples, num_select, k, d = 0.5, 20_000, 1_000, 4, 8
  key = jax.random.key(5)
  matrix = jax.random.normal(jax.random.fold_in(key, 0), (k, d))
  scale = 0.3
  centers = jax.random.normal(jax.random.fold_in(key, 1), (3, d)) * 1.5
  gallery_labels = np.repeat(np.arange(3), 4)
  gallery_x = centers[gallery_labels] + 0.3 * jax.random.normal(jax.random.fold_in(key, 2), (12, d))
  query_labels = np.array([0, 1, 2, 0, 1, 2])
  query_x = centers[query_labels] + 0.3 * jax.random.normal(jax.random.fold_in(key, 3), (6, d))
  embed = functools.partial(_probit_embedding, matrix=matrix, scale=scale)
  sets = {}
  for name, inputs in (('query', query_x), ('gallery', gallery_x)):
    sets[name] = smoothing.smooth_select_and_estimate(
        embed, jax.random.fold_in(key, 10 + len(inputs)), inputs, sigma=sigma,
        num_samples=num_samples, num_select=num_select, chunk_size=5_000, batch_size=12)
  result = smoothing.certify(sets['query'][0], sets['query'][1], query_labels,
                             sets['gallery'][0], sets['gallery'][1], gallery_labels,
                             alpha=0.01, certificate=certificate)
  certified = result.radius > 0
  assert certified.sum() >= 3
  gallery_g = _probit_smoothed(gallery_x, matrix, scale, sigma)
  same = query_labels[:, None] == gallery_labels[None, :]
  positives = jnp.stack([gallery_g[row] for row in same])          # 4 positives per query
  negatives = jnp.stack([gallery_g[~row] for row in same])         # 8 negatives per query
  loss_args = (matrix, scale, sigma, positives, negatives)
  exact_margin = _retrieval_margin(query_x, *loss_args)
  assert np.all(np.asarray(exact_margin)[certified] >= result.margin_lower_bound[certified])

  def strongest_attack(radius):
    eps = jnp.asarray(radius, jnp.float32)[:, None]
    attack = attacks.pgd(_attack_loss, eps=eps, step_size=eps / 10, num_steps=100, norm='l2',
                         clip=(-100.0, 100.0), loop='fori')
    margins = [_retrieval_margin(attack(jax.random.key(s), query_x, *loss_args), *loss_args)
               for s in range(3)]
    return np.min(np.stack(margins), axis=0)

  radius = np.where(certified, result.radius, 0.0)
  attacked = strongest_attack(radius)
  assert np.all(attacked[certified] > 0), (attacked, result.radius)
  # Lemmas 3.2-3.3: d(x + delta; g) >= d(x; g) - 2 ||g(x + delta) - g(x)|| >= d - 2 L(||delta||).
  movement = smoothing.smoothed_lipschitz_bound(radius, sigma)
  assert np.all(attacked >= np.asarray(exact_margin) - 2 * movement - 1e-5)
  # Power: the same attack at a radius far beyond the certificate flips some queries.
  far = strongest_attack(np.full(len(query_labels), 4.0 * sigma))
  assert np.any(far <= 0)


def _train_gdml_mlp(sigma, steps=200):
  """A small L2-normalised MLP trained with GDML (triplet loss on x + z) on 3 Gaussian classes."""
  key = jax.random.key(0)
  centers = jax.random.normal(jax.random.fold_in(key, 0), (3, 16))

  def sample(sample_key, count):
    labels = jax.random.randint(jax.random.fold_in(sample_key, 0), (count,), 0, 3)
    points = centers[labels] + 0.5 * jax.random.normal(jax.random.fold_in(sample_key, 1),
                                                       (count, 16))
    return points.reshape(count, 4, 4, 1), labels

  model = models.get_model('mlp', embedding_dim=8, l2_normalize=True, hidden_width=32,
                           num_hidden_layers=1)
  params = models.init_variables(model, jax.random.key(1), (1, 4, 4, 1))['params']
  optimizer = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, step_key):
    x, labels = sample(step_key, 60)
    x = x + sigma * jax.random.normal(jax.random.fold_in(step_key, 2), x.shape)
    loss = lambda p: losses.triplet_loss(model.apply({'params': p}, x), labels, margin=0.5)
    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for index in range(steps):
    params, opt_state = step(params, opt_state, jax.random.fold_in(key, 100 + index))
  embed = smoothing.bounded_embedding(jax.tree_util.Partial(model.apply, {'params': params}))
  return embed, sample


@pytest.mark.slow  # ~30 s; the default run attacks the certificates on a random model above.
def test_pgd_on_a_trained_smoothed_model_never_flips_a_certified_query():
  # A GDML-trained MLP; queries on segments between a gallery item and a negative, so margins are
  # small and the certified radii are within a small factor of the flipping radius. PGD on the
  # common-noise estimate of g (expectation over noise) attacks each certified query at its radius;
  # g(x + delta) is then re-estimated with independent samples. A flip counts only if the
  # re-estimated margin is below -tolerance (the estimates' concentration slack at beta = 1e-4).
  sigma, num_samples, num_eval = 0.5, 100_000, 50_000
  embed, sample = _train_gdml_mlp(sigma)
  gallery_x, gallery_labels = sample(jax.random.key(7), 9)
  gallery_labels = np.asarray(gallery_labels)
  queries, query_labels = [], []
  for anchor in range(9):
    negative = int(np.argmax(gallery_labels != gallery_labels[anchor]))
    for t in (0.4, 0.5, 0.6):
      queries.append(gallery_x[anchor] + t * (gallery_x[negative] - gallery_x[anchor]))
      query_labels.append(gallery_labels[anchor])
  query_x, query_labels = jnp.stack(queries), np.array(query_labels)
  options = dict(sigma=sigma, num_samples=num_samples, num_select=2_000, chunk_size=5_000,
                 batch_size=27)
  gallery = smoothing.smooth_select_and_estimate(embed, jax.random.key(10), gallery_x, **options)
  query = smoothing.smooth_select_and_estimate(embed, jax.random.key(11), query_x, **options)
  evaluator = smoothing.smooth(embed, sigma=sigma, num_samples=num_eval, chunk_size=5_000)
  masks = attacks.retrieval_masks(query_labels, gallery_labels)
  tolerance = 2 * (smoothing.vector_concentration_radius(num_eval, 1e-4, embedding_dim=8)
                   + smoothing.vector_concentration_radius(num_samples, 1e-4, embedding_dim=8))

  def attacked_margin(rows, radius, restarts):
    attacked = attacks.attack_smoothed_retrieval(
        embed, jax.random.key(3), query_x[rows], query_labels[rows], gallery[1].mean,
        gallery_labels, radius, sigma=sigma, num_noise=256, num_steps=50,
        num_restarts=restarts, clip=(-100.0, 100.0))
    estimate = smoothing.smooth_dataset(evaluator, jax.random.key(13), attacked,
                                        batch_size=len(rows))
    return attacks.plug_in_margin(estimate.mean, gallery[1].mean, *(m[rows] for m in masks))

  for certificate in CERTIFICATES:
    result = smoothing.certify(*query, query_labels, *gallery, gallery_labels, alpha=0.01,
                               certificate=certificate)
    rows = np.flatnonzero(result.radius > 0)
    assert len(rows) >= 8, result.radius
    assert np.all(attacked_margin(rows, result.radius[rows], 2) > -tolerance)
    # Power: at three times the certified radius the same attack flips certified queries.
    assert np.sum(attacked_margin(rows, 3 * result.radius[rows], 1) < -tolerance) >= 2


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------


def test_invalid_arguments_raise():
  embed = _tiny_mlp()
  with pytest.raises(ValueError, match='sigma'):
    smoothing.smooth(embed, sigma=0.0, num_samples=10, chunk_size=5)
  with pytest.raises(ValueError, match='num_samples'):
    smoothing.smooth(embed, sigma=0.1, num_samples=0, chunk_size=5)
  with pytest.raises(ValueError, match="'normalize', 'clip'"):
    smoothing.bounded_embedding(embed, 1.0, 'scale')
  good = _exact_set(np.eye(3), 0.5)
  for alpha in (0.0, 1.0, -0.1):
    with pytest.raises(ValueError, match='alpha'):
      smoothing.certify(good, good, [0, 1, 2], good, good, [0, 1, 2], alpha=alpha)
  with pytest.raises(ValueError, match="'retrievalguard', 'bisector'"):
    smoothing.certify(good, good, [0, 1, 2], good, good, [0, 1, 2], certificate='cohen')


@pytest.mark.parametrize('certificate', CERTIFICATES)
def test_too_few_samples_raise_with_the_minimum(certificate):
  # Each query has 2 negatives; with one pair constraint the bisector union has 3 + 1 events.
  minimum = smoothing.minimum_num_samples(certificate, alpha=0.01, embedding_dim=3,
                                          num_negative_pairs=1)
  certify = functools.partial(smoothing.certify, query_labels=[0, 1, 2], gallery_labels=[0, 1, 2],
                              certificate=certificate, num_negative_pairs=1)
  for n, raises in ((minimum - 1, True), (minimum, False)):
    small = smoothing.SmoothedEmbeddings(np.eye(3), np.ones(3), n, 0.5, 1.0, 0.0)
    sets = dict(query_select=small, query_estimate=small, gallery_select=small,
                gallery_estimate=small)
    if raises:
      with pytest.raises(ValueError, match=f'num_samples >= {minimum}'):
        certify(**sets)
    else:
      certify(**sets)
  assert smoothing.minimum_num_samples('retrievalguard') == math.ceil(
      32 / 3 * math.log(4 * 129 / 0.01))


def test_unbounded_embedding_raises_unless_wrapped():
  embed = lambda x: 3.0 * x.reshape(x.shape[0], -1)[:, :2]
  x = jnp.ones((2, 4))
  for wrapped, raises in ((embed, True), (smoothing.bounded_embedding(embed, 1.0), False)):
    smoother = smoothing.smooth(wrapped, sigma=0.1, num_samples=200, chunk_size=100)
    select = smoothing.smooth_dataset(smoother, jax.random.key(0), x, batch_size=2)
    estimate = smoothing.smooth_dataset(smoother, jax.random.key(1), x, batch_size=2)
    call = lambda: smoothing.certify(select, estimate, [0, 1], select, estimate, [1, 0])
    if raises:
      with pytest.raises(ValueError, match='bounded_embedding'):
        call()
    else:
      call()
