"""Rank bounds tightened through the encoder (jaxcert.bounds.through_encoder).

Every pair the network tests declare "surely farther" is attacked: under QA, signed-gradient
descent on the query image inside its eps-box, minimising ||f(x) - c||^2 - ||f(x) - c^||^2, and
dense samples of the box must leave it positive; under CA, the same on the candidate's image,
minimising ||f(x) - q||, must stay above the target's largest distance. The tightened rank bounds
are never looser than the box certificate's.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import input_box
from jaxcert.bounds import through_encoder
from jaxcert.bounds import retrieval
from jaxcert.bounds.linear import linear_bounds
from jaxcert.bounds.rounding import outward_distance_bounds
import test_linear

EPS = 0.03
CA_EPS = 0.01  # (at 0.03 the candidate boxes of this encoder leave almost every pair undecided)


@pytest.fixture(scope='module')
def setting():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    embed = test_linear._small_conv_net(rng, outputs=5)
    # float32 pixels, as datasets give them (the boxes are built from float32 images).
    queries = rng.uniform(size=(6, 10, 10, 1)).astype(np.float32)
    candidates = rng.uniform(size=(30, 10, 10, 1)).astype(np.float32)
    query_emb, candidate_emb = (np.asarray(embed(jnp.asarray(x, jnp.float64)))
                                for x in (queries, candidates))
    # The queries' boxes at EPS, the candidates' at CA_EPS, with their intermediate bounds (the
    # network tests below reuse them, as certify.py does).
    query_lower, query_upper, query_intermediates = (
        through_encoder.embedding_bounds_and_intermediates(embed, queries, EPS, 'crown',
                                                           batch_size=8))
    candidate_lower, candidate_upper, candidate_intermediates = (
        through_encoder.embedding_bounds_and_intermediates(embed, candidates, CA_EPS, 'crown',
                                                           batch_size=8))
    bounds = retrieval.rank_bounds(query_emb, query_lower, query_upper, candidate_emb,
                                   candidate_emb, candidate_emb, 5)
    labels = np.arange(30) % 3
    query_labels = np.array([0, 1, 2, 0, 1, 2])
    columns = through_encoder.first_same_class_column(bounds.indices, query_labels, labels)
    tightened, stats = through_encoder.tighten_query_attack_upper(
        bounds, embed, queries, EPS, query_lower, query_upper, candidate_emb, columns,
        max_rows=4, batch_size=8, query_intermediates=query_intermediates)
    # CA: the candidates' boxes (the queries' clean points).
    ca_bounds = retrieval.rank_bounds(query_emb, query_emb, query_emb, candidate_emb,
                                      candidate_lower, candidate_upper, 5)
    ca_tightened, ca_stats = through_encoder.tighten_candidate_attack_upper(
        ca_bounds, embed, candidates, CA_EPS, candidate_lower, candidate_upper, query_emb,
        candidate_emb, columns, max_rows=4, batch_size=8,
        candidate_intermediates=candidate_intermediates)
  return dict(embed=embed, queries=queries, candidates=candidates, query_emb=query_emb,
              candidate_emb=candidate_emb, bounds=bounds, boxes=(query_lower, query_upper),
              candidate_boxes=(candidate_lower, candidate_upper), columns=columns,
              tightened=tightened, stats=stats, ca_bounds=ca_bounds, ca_tightened=ca_tightened,
              ca_stats=ca_stats, query_intermediates=query_intermediates)


def _gap(z, candidate, target):
  """||z - c||^2 - ||z - c^||^2: positive while c is farther than c^ (the QA decision)."""
  return jnp.sum(jnp.square(z - candidate)) - jnp.sum(jnp.square(z - target))


def _signed_distance(z, query, sign):
  """sign * ||z - q||: minimised, the smallest (sign 1) or minus the largest (sign -1) distance."""
  return sign * jnp.linalg.norm(z - query)


@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def _attack_minimum(embed, objective, image, eps, *args, steps=40, starts=8, samples=400):
  """Smallest `objective(f(x), *args)` found over x in the image's eps-box: signed-gradient
  descent (step decaying from 1/8 of the box) from the centre and random starts, and samples."""
  lower, upper = (b[0] for b in input_box(jnp.asarray(image[None], jnp.float64), eps))
  value = lambda x: objective(embed(x[None])[0], *args)
  key_starts, key_samples = jax.random.split(jax.random.key(0))
  points = jax.random.uniform(key_starts, (starts, *lower.shape), lower.dtype, lower, upper)
  points = jnp.concatenate([((lower + upper) / 2)[None], points])

  def descend(x):
    def step(i, state):
      x, best = state
      x = jnp.clip(x - (upper - lower) / 8 * 0.93 ** i * jnp.sign(jax.grad(value)(x)), lower,
                   upper)
      return x, jnp.minimum(best, value(x))
    return jax.lax.fori_loop(0, steps, step, (x, value(x)))[1]

  sampled = jax.random.uniform(key_samples, (samples, *lower.shape), lower.dtype, lower, upper)
  return jnp.minimum(jnp.min(jax.vmap(descend)(points)), jnp.min(jax.vmap(value)(sampled)))


def test_every_network_decision_survives_pgd_and_sampling(setting):
  decided = setting['stats']['network_farther_candidates']
  assert (decided >= 0).sum() >= 3, 'the setting must exercise the network test'
  indices = np.asarray(setting['bounds'].indices)
  with jax.enable_x64(True):
    for query, row in enumerate(decided):
      target = indices[query, setting['columns'][query]]
      for candidate in row[row >= 0]:
        assert candidate != target
        minimum = _attack_minimum(setting['embed'], _gap, setting['queries'][query], EPS,
                                  setting['candidate_emb'][candidate],
                                  setting['candidate_emb'][target])
        assert float(minimum) > 0, (query, candidate, float(minimum))


def test_every_candidate_attack_decision_survives_pgd_and_sampling(setting):
  decided = setting['ca_stats']['network_farther_queries']
  target_max = setting['ca_stats']['target_max']
  assert (decided >= 0).sum() >= 3, 'the setting must exercise the network test'
  indices = np.asarray(setting['ca_bounds'].indices)
  lower, upper = setting['candidate_boxes']
  with jax.enable_x64(True):
    for query, column in enumerate(setting['columns']):
      if column < 0:  # (no same-class candidate in its top k: nothing tightened)
        assert target_max[query] == np.inf
        continue
      target = indices[query, column]
      _, box_max = retrieval.distance_bounds(lower[target], upper[target],
                                             setting['query_emb'][query])
      # The target's largest distance through the encoder: an upper bound, tighter than the box's.
      largest = -_attack_minimum(setting['embed'], _signed_distance,
                                 setting['candidates'][target], CA_EPS,
                                 setting['query_emb'][query], -1.)
      assert float(largest) <= target_max[query] <= float(box_max), (query, float(largest))
    assert any(target_max[q] < retrieval.distance_bounds(
        lower[indices[q, c]], upper[indices[q, c]], setting['query_emb'][q])[1]
               for q, c in enumerate(setting['columns']) if c >= 0)
    for candidate, row in enumerate(decided):
      for query in row[row >= 0]:
        assert candidate != indices[query, setting['columns'][query]]
        minimum = _attack_minimum(setting['embed'], _signed_distance,
                                  setting['candidates'][candidate], CA_EPS,
                                  setting['query_emb'][query], 1.)
        assert float(minimum) > target_max[query], (query, candidate, float(minimum))
  before = np.asarray(setting['ca_bounds'].candidate_attack_upper)
  after = np.asarray(setting['ca_tightened'].candidate_attack_upper)
  assert (after <= before).all() and (after < before).any()
  for field in ('indices', 'query_attack_lower', 'query_attack_upper', 'candidate_attack_lower'):
    np.testing.assert_array_equal(getattr(setting['ca_bounds'], field),
                                  getattr(setting['ca_tightened'], field))


def test_tightened_bounds_are_never_looser_and_touch_only_the_targets(setting):
  bounds, tightened = setting['bounds'], setting['tightened']
  before, after = np.asarray(bounds.query_attack_upper), np.asarray(tightened.query_attack_upper)
  assert (after <= before).all() and (after < before).any()
  changed_columns = {int(c) for c in np.argwhere(after < before)[:, 1]}
  assert changed_columns <= set(setting['columns'].tolist())
  for field in ('indices', 'query_attack_lower', 'candidate_attack_lower',
                'candidate_attack_upper'):
    np.testing.assert_array_equal(getattr(bounds, field), getattr(tightened, field))
  # Each target's bound is N - (box farther + network farther) or the box's own.
  stats = setting['stats']
  assert (stats['network_farther'] <= stats['undecided']).all()


def test_reused_intermediate_bounds_decide_what_recomputed_ones_do(setting):
  """The boxes come with the `linear_bounds` ones, and the network test decides the same pairs
  from the boxes' intermediate bounds as from its own."""
  with jax.enable_x64(True):
    lower, upper = jax.jit(linear_bounds(setting['embed'], 'crown'))(
        *input_box(jnp.asarray(setting['queries'], jnp.float64), EPS))
    np.testing.assert_allclose(setting['boxes'][0], lower, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(setting['boxes'][1], upper, rtol=1e-12, atol=1e-12)
    recomputed, stats = through_encoder.tighten_query_attack_upper(
        setting['bounds'], setting['embed'], setting['queries'], EPS, *setting['boxes'],
        setting['candidate_emb'], setting['columns'], max_rows=4, batch_size=8)
  np.testing.assert_array_equal(recomputed.query_attack_upper,
                                setting['tightened'].query_attack_upper)
  np.testing.assert_array_equal(stats['network_farther_candidates'],
                                setting['stats']['network_farther_candidates'])
  assert stats['network_farther'].sum() >= 3
  with jax.enable_x64(True):  # Another radius's intermediate bounds decide nothing.
    _, stats = through_encoder.tighten_query_attack_upper(
        setting['bounds'], setting['embed'], setting['queries'], EPS / 2, *setting['boxes'],
        setting['candidate_emb'], setting['columns'], max_rows=4, batch_size=8,
        query_intermediates=setting['query_intermediates'])
  assert stats['network_farther'].sum() == 0


def test_queries_without_target_and_bad_arguments(setting):
  bounds = setting['bounds']
  with jax.enable_x64(True):
    columns = np.full(6, -1)
    same, stats = through_encoder.tighten_query_attack_upper(
        bounds, setting['embed'], setting['queries'], EPS, *setting['boxes'],
        setting['candidate_emb'], columns, max_rows=4, batch_size=8)
    np.testing.assert_array_equal(same.query_attack_upper, bounds.query_attack_upper)
    assert (stats['network_farther_candidates'] == -1).all()
    for kwargs, message in (({'max_rows': 0}, 'max_rows'), ({'method': 'beta'}, 'valid methods')):
      with pytest.raises(ValueError, match=message):
        through_encoder.tighten_query_attack_upper(
            bounds, setting['embed'], setting['queries'], EPS, *setting['boxes'],
            setting['candidate_emb'], setting['columns'], **kwargs)
    with pytest.raises(ValueError, match='target_columns'):
      through_encoder.tighten_query_attack_upper(
          bounds, setting['embed'], setting['queries'], EPS, *setting['boxes'],
          setting['candidate_emb'], np.full(6, 5))


@pytest.mark.slow
def test_rigorous_float32_decisions_survive_pgd_on_the_real_encoder():
  """The rigorous mode (rounding='outward', certify.py's float32): the encoder's weights are
  float32 and everything is computed in float32 (outward-rounded boxes, bounds through the
  encoder, the candidates' and queries' point margins), while the attacks run on the same
  weights in float64 (the real-valued encoder up to ~1e-16): every pair decided through the
  encoder, under QA and CA, survives them."""
  rng = np.random.default_rng(3)
  embed = test_linear._small_conv_net(rng, outputs=5, dtype=np.float32)
  queries = rng.uniform(size=(6, 10, 10, 1)).astype(np.float32)
  candidates = rng.uniform(size=(30, 10, 10, 1)).astype(np.float32)
  with jax.enable_x64(True):
    query_emb, candidate_emb = (np.asarray(embed(jnp.asarray(x))) for x in (queries, candidates))
    assert query_emb.dtype == np.float32
    real = {name: np.asarray(embed(jnp.asarray(x, jnp.float64)))
            for name, x in (('query', queries), ('candidate', candidates))}
    margin = {}
    for name, images, emb in (('query', queries, query_emb),
                              ('candidate', candidates, candidate_emb)):
      point_box = retrieval.embedding_bounds(embed, images, 0., dtype=jnp.float32,
                                             bound=retrieval.outward_interval)
      margin[name] = np.asarray(outward_distance_bounds(*point_box, emb)[1])
    boxes = {name: through_encoder.embedding_bounds_and_intermediates(
        embed, images, eps, 'crown', batch_size=8, dtype=jnp.float32, rounding='outward')
             for name, images, eps in (('query', queries, EPS), ('candidate', candidates, CA_EPS))}
    settings = dict(max_rows=4, batch_size=8, distance_slack=0., rounding='outward')
    bounds = retrieval.rank_bounds(query_emb, *boxes['query'][:2], candidate_emb, candidate_emb,
                                   candidate_emb, 5, distance_slack=0., rounding='outward',
                                   point_margin=margin['candidate'])
    columns = through_encoder.first_same_class_column(bounds.indices, np.arange(6) % 3,
                                                      np.arange(30) % 3)
    _, stats = through_encoder.tighten_query_attack_upper(
        bounds, embed, queries, EPS, *boxes['query'][:2], candidate_emb, columns,
        query_intermediates=boxes['query'][2], point_margin=margin['candidate'], **settings)
    ca_bounds = retrieval.rank_bounds(query_emb, query_emb, query_emb, candidate_emb,
                                      *boxes['candidate'][:2], 5, distance_slack=0.,
                                      rounding='outward', query_point_margin=margin['query'])
    _, ca_stats = through_encoder.tighten_candidate_attack_upper(
        ca_bounds, embed, candidates, CA_EPS, *boxes['candidate'][:2], query_emb, candidate_emb,
        columns, candidate_intermediates=boxes['candidate'][2],
        query_point_margin=margin['query'], **settings)
    decided = stats['network_farther_candidates']
    assert (decided >= 0).sum() >= 3, 'the setting must exercise the network test'
    indices = np.asarray(bounds.indices)
    for query, row in enumerate(decided):
      target = indices[query, columns[query]]
      for candidate in row[row >= 0]:
        minimum = _attack_minimum(embed, _gap, queries[query], EPS, real['candidate'][candidate],
                                  real['candidate'][target])
        assert float(minimum) > 0, (query, candidate, float(minimum))
    ca_decided = ca_stats['network_farther_queries']
    assert (ca_decided >= 0).sum() >= 3, 'the setting must exercise the network test'
    target_max = ca_stats['target_max']
    ca_indices = np.asarray(ca_bounds.indices)
    for query, column in enumerate(columns):
      if column >= 0:
        largest = -_attack_minimum(embed, _signed_distance, candidates[ca_indices[query, column]],
                                   CA_EPS, real['query'][query], -1.)
        assert float(largest) <= target_max[query], query
    for candidate, row in enumerate(ca_decided):
      for query in row[row >= 0]:
        minimum = _attack_minimum(embed, _signed_distance, candidates[candidate], CA_EPS,
                                  real['query'][query], 1.)
        assert float(minimum) > target_max[query], (query, candidate, float(minimum))
    with pytest.raises(ValueError, match="rigorous mode's"):
      through_encoder.tighten_candidate_attack_upper(
          ca_bounds, embed, candidates, CA_EPS, *boxes['candidate'][:2], query_emb,
          candidate_emb, columns, query_point_margin=margin['query'], max_rows=4)
