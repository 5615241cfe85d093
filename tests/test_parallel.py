"""jaxcert.parallel: data-parallel training, sharded certification, attacks and search on 8 devices.

XLA makes 8 CPU devices only if XLA_FLAGS=--xla_force_host_platform_device_count=8 is set before
JAX starts. In an ordinary test process (one device) `test_on_eight_cpu_devices` runs this module
again in one subprocess with that flag, where the device tests run; here they are skipped.

What is checked against the one-device computation: N training steps on 8 devices give the
parameters of N steps on 1 device with the same global batch; sharded interval bounds, PGD and the
blocked top-k give the unsharded results (padding included); the sharded smoother gives the same
g_hat on 1 and 8 devices, its streams are independent (its error variance is 1/n, not the
8/n of shared noise) and its concentration radius keeps its coverage.
"""

import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import conftest
from configs import quickstart
from jaxcert import attacks
from jaxcert import data
from jaxcert import models
from jaxcert import parallel
from jaxcert import retrieval
from jaxcert import smoothing
from jaxcert import training
from jaxcert.bounds import input_box
from jaxcert.bounds import interval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 8
ON_EIGHT = jax.device_count() >= NUM_DEVICES
needs_eight = pytest.mark.skipif(
    not ON_EIGHT, reason='runs in the 8-device subprocess of test_on_eight_cpu_devices')


@pytest.mark.skipif(ON_EIGHT, reason='this process already has 8 devices')
def test_on_eight_cpu_devices():
  flags = os.environ.get('XLA_FLAGS', '')
  env = dict(os.environ, XLA_FLAGS=f'{flags} --xla_force_host_platform_device_count={NUM_DEVICES}')
  result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', __file__],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  output = result.stdout[-6000:] + result.stderr[-3000:]
  assert result.returncode == 0, output
  passed = re.search(r'(\d+) passed', result.stdout)
  assert passed and int(passed.group(1)) >= 9 and 'failed' not in result.stdout, output


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------


def _tiny_training_config(num_devices):
  config = quickstart.get_config()
  config.model.name = 'mlp'
  config.model.hidden_width = 32
  config.model.num_hidden_layers = 1
  config.model.embedding_dim = 16
  # The L2 head: without it the triplet loss ignores the embedding bias (translation invariance),
  # its true gradient is 0 and Adam turns the float noise of that 0 into +-lr steps.
  config.model.l2_normalize = True
  config.batch_size = 16
  config.m_per_class = 4
  config.num_steps = 4
  config.checkpoint_every_steps = 4
  config.progress_bar = False
  config.parallel.num_devices = num_devices
  return config


@functools.cache
def _sample_dataset():
  dataset = data.load_dataset(quickstart.get_config().data)
  train = data.Split(dataset.train.images[:400], np.asarray(dataset.train.labels)[:400])
  return dataset._replace(train=train)


@needs_eight
def test_training_on_eight_devices_matches_one_device(tmp_path):
  dataset = _sample_dataset()
  _, one = training.train(_tiny_training_config(1), str(tmp_path / 'one'), dataset)
  _, eight = training.train(_tiny_training_config(-1), str(tmp_path / 'eight'), dataset)
  assert int(eight.step) == 4
  leaves_one, leaves_eight = jax.tree.leaves(one.params), jax.tree.leaves(eight.params)
  assert all(len(leaf.sharding.device_set) == NUM_DEVICES for leaf in leaves_eight)
  assert all(len(leaf.sharding.device_set) == 1 for leaf in leaves_one)
  config = _tiny_training_config(1)
  initial = jax.tree.leaves(training.create_train_state(
      config, models.build_model(config.model), (28, 28, 1), 400, dataset.num_classes).params)
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(leaves_one, initial))
  assert moved > 1e-3  # the comparison below is not between untrained states
  for a, b in zip(leaves_one, leaves_eight):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=2e-5)


@needs_eight
def test_bad_device_counts_and_batch_sizes_raise(tmp_path):
  for bad in (0, 9, -2, 2.5, True):
    with pytest.raises(ValueError, match=r'integer in \[1, 8\], or -1 for all'):
      parallel.make_mesh(bad)
  config = _tiny_training_config(NUM_DEVICES)
  config.batch_size, config.m_per_class = 20, 4
  with pytest.raises(ValueError, match='batch size 20 does not divide over 8 devices; use a multiple of 8'):
    training.train(config, str(tmp_path), _sample_dataset())


# ---------------------------------------------------------------------------
# Certification, attacks, search.
# ---------------------------------------------------------------------------


@needs_eight
def test_certify_ibp_on_eight_devices_matches_one_device(tmp_path):
  """certify.py mode 'ibp' with config.parallel.num_devices = -1 (batches of 250 padded to 256 and
  sharded over 8 devices) reports what one device reports, query for query."""
  from jaxcert import certification  # pylint: disable=import-outside-toplevel
  config = _tiny_training_config(1)
  training.train(config, str(tmp_path / 'model'), _sample_dataset())
  results = {}
  for num_devices in (1, -1):
    config.checkpoint = str(tmp_path / 'model')
    config.parallel.num_devices = num_devices
    config.ibp.eps, config.ibp.eps_sweep = 0.001, (0.0, 0.001)
    workdir = str(tmp_path / f'certify{num_devices}')
    inputs = certification.load_inputs(config)
    assert (inputs.batch_sharding is None) == (num_devices == 1)
    results[num_devices] = (certification.run(config, workdir),
                            open(os.path.join(workdir, 'ibp_per_query.tsv')).read())
  one, eight = results[1], results[-1]
  assert eight[1] == one[1]
  for key in ('recall@1', 'recall@40', 'cr_recall_qa@20', 'cr_recall_qa@40', 'cr_recall_ca@40'):
    assert eight[0][key] == one[0][key], key
  assert one[0]['cr_recall_qa@40'] > 0  # something is certified, so the comparison has content


@functools.cache
def _encoder(name='small_cnn', l2_normalize=False):
  options = {'hidden_width': 32, 'num_hidden_layers': 1} if name == 'mlp' else {}
  model = models.get_model(name, embedding_dim=8, l2_normalize=l2_normalize, **options)
  variables = models.init_variables(model, jax.random.key(0), (1, 28, 28, 1))
  return jax.tree_util.Partial(model.apply, variables)


@needs_eight
def test_sharded_interval_bounds_equal_unsharded(count=13):  # 13 rows: padded to 16, then dropped
  embed = _encoder('small_cnn')
  bounds = jax.jit(lambda embed, lower, upper: interval(embed)(lower, upper))
  lower, upper = input_box(conftest.uniform_images(count), 0.05)
  mesh = parallel.make_mesh()
  sharded_lower, sharded_upper = parallel.data_parallel(bounds, mesh, batch_argnums=(1, 2))(
      embed, lower, upper)
  plain_lower, plain_upper = bounds(embed, lower, upper)
  assert sharded_lower.shape == (count, 8)
  np.testing.assert_allclose(sharded_lower, plain_lower, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sharded_upper, plain_upper, rtol=1e-5, atol=1e-5)
  # And they are bounds: random points of each box stay inside (up to float rounding).
  for seed in range(4):
    u = jax.random.uniform(jax.random.key(seed), lower.shape)
    out = embed(lower + u * (upper - lower))
    assert np.all(out >= sharded_lower - 1e-5) and np.all(out <= sharded_upper + 1e-5)


@needs_eight
def test_sharded_bounds_through_the_encoder_equal_unsharded():
  """certify.py's 'network' bounds (CROWN boxes with their intermediate bounds, then the passes
  through the encoder, in a `while_loop` over each image's rows) sharded over the 8 devices
  decide what one device does (QA; the CA passes are placed by the same `_spec_lower_bounds`)."""
  from jaxcert.bounds import retrieval as certified_retrieval  # pylint: disable=import-outside-toplevel
  from jaxcert.bounds import through_encoder  # pylint: disable=import-outside-toplevel
  embed = _encoder('mlp')
  queries, candidates = conftest.uniform_images(9, seed=2), conftest.uniform_images(16, seed=3)
  query_emb, candidate_emb = (np.asarray(embed(x)) for x in (queries, candidates))
  sharding = parallel.batch_sharded(parallel.make_mesh())
  results = []
  for placement in (None, sharding):
    query_lower, query_upper, intermediates = through_encoder.embedding_bounds_and_intermediates(
        embed, queries, 0.01, 'crown', batch_size=8, dtype=jnp.float32, sharding=placement)
    bounds = certified_retrieval.rank_bounds(query_emb, query_lower, query_upper, candidate_emb,
                                             candidate_emb, candidate_emb, 5)
    columns = through_encoder.first_same_class_column(bounds.indices, np.arange(9) % 3,
                                                      np.arange(16) % 3)
    results.append(through_encoder.tighten_query_attack_upper(
        bounds, embed, queries, 0.01, query_lower, query_upper, candidate_emb, columns,
        max_rows=4, batch_size=8, query_intermediates=intermediates, sharding=placement))
  (one, one_stats), (eight, eight_stats) = results
  assert one_stats['undecided'].sum() > 0  # rows were bounded through the encoder
  np.testing.assert_array_equal(eight.query_attack_upper, one.query_attack_upper)
  np.testing.assert_array_equal(eight_stats['network_farther_candidates'],
                                one_stats['network_farther_candidates'])


@needs_eight
def test_sharded_pgd_equals_unsharded(count=13):
  embed = _encoder('mlp')
  images = conftest.uniform_images(count, seed=1)
  anchors = jax.jit(embed)(images[::-1])
  attack = attacks.pgd(attacks.squared_embedding_distance, eps=0.1, step_size=0.025, num_steps=5)
  key = jax.random.key(3)
  sharded = parallel.data_parallel(attack, parallel.make_mesh(), batch_argnums=(1, 3))(
      key, images, embed, anchors)
  plain = attack(key, images, embed, anchors)
  assert sharded.shape == images.shape
  assert len(sharded.sharding.device_set) == NUM_DEVICES
  # Sign steps: a pixel whose gradient is ~0 may step either way on other float rounding.
  differs = np.abs(np.asarray(sharded) - np.asarray(plain)) > 1e-5
  assert differs.mean() < 1e-3
  loss = lambda x: np.asarray(attacks.squared_embedding_distance(x, embed, anchors))
  np.testing.assert_allclose(loss(sharded), loss(plain), rtol=1e-4)
  assert np.all(np.abs(np.asarray(sharded) - np.asarray(images)) <= 0.1 + 1e-6)


@needs_eight
@pytest.mark.parametrize('exclude_self', [False, True])
def test_sharded_topk_equals_blocked_topk(exclude_self):
  rng = np.random.default_rng(0)
  gallery = rng.normal(size=(50, 6)).astype(np.float32)
  gallery[10:20] = gallery[0]  # ties: equal distances ordered by gallery index
  gallery[30:35] = np.round(gallery[30:35])
  queries = gallery if exclude_self else rng.normal(size=(37, 6)).astype(np.float32)
  mesh = parallel.make_mesh()
  for k, block_size, gallery_block_size in ((1, 4, 7), (12, 3, 16)):
    expected = retrieval.blocked_topk(queries, gallery, k, block_size=block_size,
                                      gallery_block_size=gallery_block_size,
                                      exclude_self=exclude_self)
    got = retrieval.sharded_blocked_topk(queries, gallery, k, mesh, block_size=block_size,
                                        gallery_block_size=gallery_block_size,
                                        exclude_self=exclude_self)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='k must be an integer'):
    retrieval.sharded_blocked_topk(queries, gallery, 51, mesh)


def _sign_embedding(x):
  """h(x) = sign(x): at x = 0, h = +-1 with probability 1/2 (variance 1, the largest for F = 1)."""
  return jnp.sign(x)


@needs_eight
def test_sharded_smoother_does_not_depend_on_the_device_count():
  embed = _encoder('mlp', l2_normalize=True)
  smoother = smoothing.smooth(embed, sigma=0.25, num_samples=96, chunk_size=5)
  x, key = conftest.uniform_images(3, seed=2), jax.random.key(5)
  sharded = smoothing.sharded_smoother(smoother, parallel.make_mesh())
  on_eight = sharded(key, x)
  on_one = smoothing.sharded_smoother(smoother, parallel.make_mesh(1), num_streams=8)(key, x)
  np.testing.assert_allclose(on_eight.mean, on_one.mean, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(on_eight.max_norm, on_one.max_norm, rtol=1e-6)
  # The same n samples as a direct average of the 8 streams' own smoothers (n / 8 samples each).
  stream = smoothing.smooth(embed, sigma=0.25, num_samples=12, chunk_size=5)
  direct = np.mean([stream(jax.random.fold_in(key, s), x).mean for s in range(8)], axis=0)
  np.testing.assert_allclose(on_eight.mean, direct, rtol=1e-6, atol=1e-7)
  # smooth_dataset takes it like a Smoother.
  assert sharded.num_samples == 96 and sharded.rounding_allowance > smoother.rounding_allowance
  smoothed = smoothing.smooth_dataset(sharded, key, conftest.uniform_images(5, seed=2),
                                      batch_size=3)
  np.testing.assert_allclose(smoothed.mean[:3], on_eight.mean, rtol=1e-6, atol=1e-7)


@needs_eight
def test_sharded_smoother_streams_are_independent_and_keep_coverage():
  num_samples, repeats, beta = 800, 2000, 0.01
  smoother = smoothing.sharded_smoother(
      smoothing.smooth(_sign_embedding, sigma=1.0, num_samples=num_samples, chunk_size=100),
      parallel.make_mesh())
  keys = jax.random.split(jax.random.key(0), repeats)
  x = jnp.zeros((1, 1))
  errors = np.asarray(jax.jit(jax.vmap(lambda k: smoother(k, x).mean[0, 0]))(keys))
  # Var(h) = 1: independent samples give E err^2 = 1/n; streams sharing noise would give 8/n.
  mean_square = float(np.mean(errors ** 2)) * num_samples
  assert 0.85 < mean_square < 1.15, mean_square
  radius = smoothing.vector_concentration_radius(num_samples, beta, embedding_dim=1)
  assert np.sum(np.abs(errors) > radius) <= stats.binom.ppf(1 - 1e-3, repeats, beta)


@needs_eight
def test_bad_arguments_raise():
  mesh = parallel.make_mesh()
  smoother = smoothing.smooth(_sign_embedding, sigma=1.0, num_samples=100, chunk_size=10)
  with pytest.raises(ValueError, match='multiple of the 8 devices'):
    smoothing.sharded_smoother(smoother, mesh, num_streams=4)
  with pytest.raises(ValueError, match='num_samples=100 does not divide into 8 streams; use a multiple'):
    smoothing.sharded_smoother(smoother, mesh)
  double = parallel.data_parallel(lambda x, y: x + y, mesh, batch_argnums=(0, 1))
  with pytest.raises(ValueError, match='one common leading'):
    double(jnp.zeros(4), jnp.zeros(5))
