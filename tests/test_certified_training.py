"""Tests of the certified-training methods TBT, FCTB and C-IBP (`jaxcert.objectives.certified`).

The schedule and config checks are checked by value; the regulariser Reg (Kakizaki et al. Eq. 20) against
its definition; C-IBP's worst-case logits against sampled embeddings of the box (soundness) and
the box's corners (tightness); the three objectives give finite losses and gradients, reduce to
the clean losses at eps = 0, and run in the training loop (FCTB from a TBT checkpoint, on the
candidate set, with its reference encoder frozen).
"""

import itertools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from configs import kakizaki
from jaxcert import attacks
from jaxcert import checkpointing
from jaxcert import data
from jaxcert import losses
from jaxcert import models
from jaxcert import objectives
from jaxcert.bounds import input_box
from jaxcert.bounds import interval
from jaxcert import training
from jaxcert.objectives import certified
import test_interval


def _schedule_config(**fields):
  config = ml_collections.ConfigDict(
      {'eps': 0.2, 'kappa': 0.5, 'ramp_start_steps': 2000, 'ramp_end_steps': 10000})
  config.update(fields)
  return config


def test_ramp_schedule_is_the_papers():
  config = _schedule_config()
  for step, (eps, kappa) in {0: (0., 1.), 2000: (0., 1.), 6000: (0.1, 0.75), 10000: (0.2, 0.5),
                             50000: (0.2, 0.5)}.items():
    np.testing.assert_allclose(certified.ramp_schedule(config, jnp.int32(step)), (eps, kappa),
                               rtol=1e-6)
  fixed = _schedule_config(ramp_start_steps=0, ramp_end_steps=0, kappa=0.1)
  np.testing.assert_allclose(certified.ramp_schedule(fixed, jnp.int32(0)), (0.2, 0.1), rtol=1e-6)


def test_bad_certified_configs_fail_clearly():
  config = default.get_config()
  for field, value, message in [('eps', -0.1, 'eps must be >= 0'),
                                ('kappa', 1.5, r'kappa must be in \[0, 1\]'),
                                ('ramp_end_steps', 10, 'ramp_start_steps <= ramp_end_steps')]:
    bad = config.copy_and_resolve_references()
    bad.certified[field] = value
    with pytest.raises(ValueError, match=message):
      certified.check_certified_config(bad)
  with pytest.raises(ValueError, match='set config.init_from'):
    certified.init_fctb_params(config, None)
  with pytest.raises(ValueError, match='Unknown method'):
    kakizaki.get_config('fmnist', 'large', 'act')


def test_tightness_regularizer_is_eq_20():
  rng = np.random.default_rng(0)
  anchors = rng.normal(size=(4, 3)).astype(np.float32)
  radius = rng.uniform(0, 0.3, (4, 3)).astype(np.float32)
  points = rng.normal(size=(5, 3)).astype(np.float32)
  reg = np.asarray(certified.tightness_regularizer(anchors, anchors - radius, anchors + radius,
                                                   points))
  for a, x in itertools.product(range(4), range(5)):
    distance = np.linalg.norm(anchors[a] - points[x])
    offset = np.abs(points[x] - anchors[a])
    upper = np.linalg.norm(offset + radius[a])
    lower = np.linalg.norm(np.maximum(offset - radius[a], 0))
    np.testing.assert_allclose(reg[a, x], max(abs(distance - upper), abs(distance - lower)),
                               rtol=1e-5)
  # A degenerate box has exact distance bounds: Reg = 0.
  np.testing.assert_allclose(certified.tightness_regularizer(anchors, anchors, anchors, points), 0.,
                             atol=1e-6)


def test_worst_case_logits_sound_and_attained():
  rng = np.random.default_rng(1)
  lower = rng.normal(size=(3, 4)).astype(np.float32)
  upper = lower + rng.uniform(0, 0.5, (3, 4)).astype(np.float32)
  kernel = rng.normal(size=(4, 5)).astype(np.float32)
  bias = rng.normal(size=(5,)).astype(np.float32)
  labels = jnp.array([0, 3, 4])
  worst = np.asarray(certified.worst_case_logits(lower, upper, kernel, bias, labels))
  corners = np.array(list(itertools.product((0, 1), repeat=4)), bool)
  for b in range(3):
    embeddings = np.where(corners, upper[b], lower[b])
    samples = lower[b] + rng.random((2000, 4)) * (upper[b] - lower[b])
    for points, exact in ((embeddings, True), (samples, False)):
      logits = points @ kernel + bias
      margins = logits - logits[:, labels[b]][:, None]
      assert np.all(margins <= worst[b] + 1e-5)
      if exact:  # A linear function's max over a box is at a corner.
        np.testing.assert_allclose(margins.max(0), worst[b], rtol=1e-5, atol=1e-5)
    assert worst[b, labels[b]] == 0.


def _inputs(method, eps, *, model_name='small_cnn', seed=0):
  """ObjectiveInputs of a random Small CNN on 20 random 12x12 images of 4 classes."""
  config = default.get_config()
  config.method = method
  config.certified.update({'eps': eps, 'ramp_start_steps': 0, 'ramp_end_steps': 0})
  model = models.get_model(model_name, embedding_dim=8)
  images = test_interval._uniform(seed, (20, 12, 12, 1))  # pylint: disable=protected-access
  variables = test_interval._init(model, images, seed=seed + 1)  # pylint: disable=protected-access
  method_params = objectives.get_method(method).init_params(
      config, objectives.ParamsContext(jax.random.key(0), 8, 4))
  params = {'model': variables['params'], 'objective': method_params}
  labels = jnp.asarray(np.arange(20) % 4, jnp.int32)
  return objectives.ObjectiveInputs(model, params, {}, images, labels, jax.random.key(1),
                                    jnp.int32(0), config)


def _loss_and_grads(inputs):
  objective = objectives.get_method(inputs.config.method).objective

  def loss_fn(params):
    return objective(inputs._replace(params=params))

  (loss, (step_metrics, _)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      inputs.params)
  return float(loss), jax.tree.map(float, step_metrics), grads


@pytest.mark.parametrize('method', ['tbt', 'cibp'])
def test_objectives_finite_and_clean_at_zero_eps(method):
  loss, step_metrics, grads = _loss_and_grads(_inputs(method, 0.05))
  assert np.isfinite(loss) and all(np.isfinite(l).all() for l in jax.tree.leaves(grads))
  assert sum(float(jnp.abs(l).sum()) for l in jax.tree.leaves(grads['model'])) > 0
  zero_loss, zero_metrics, _ = _loss_and_grads(_inputs(method, 0.))
  if method == 'tbt':  # Exact bounds: Reg = 0 and the loss is kappa * triplet.
    assert step_metrics['reg'] > 0 and abs(zero_metrics['reg']) < 1e-4
    inputs = _inputs(method, 0.)
    embeddings = inputs.model.apply({'params': inputs.params['model']}, inputs.images)
    triplet = losses.triplet_loss(embeddings, inputs.labels, margin=1.0)
    np.testing.assert_allclose(zero_metrics['triplet'], triplet, rtol=1e-5)
    np.testing.assert_allclose(zero_loss, 0.5 * zero_metrics['triplet'], rtol=1e-4, atol=1e-5)
  else:  # The worst case of a point is the point: robust CE = CE.
    assert step_metrics['robust_cross_entropy'] >= step_metrics['cross_entropy']
    np.testing.assert_allclose(zero_metrics['robust_cross_entropy'],
                               zero_metrics['cross_entropy'], rtol=1e-5)


def test_kakizaki_tbt_loss_is_eq_20_summed_over_triplets():
  """With Kakizaki et al.'s TBT config the batch loss is the mean over the valid triplets (a, p, n) of
  kappa * T(a, p, n) + (1 - kappa) * (Reg(a, p) + Reg(a, n)), one sum as in Eq. 20."""
  inputs = _inputs('tbt', 0.05)
  inputs.config.loss.mining = kakizaki.get_config('fmnist', 'small', 'tbt').loss.mining
  inputs.config.loss.margin = margin = 0.02  # Some triplets inactive (hinge 0), some not.
  loss, _, _ = _loss_and_grads(inputs)
  embeddings = inputs.model.apply({'params': inputs.params['model']}, inputs.images)
  lower, upper = interval(lambda x: inputs.model.apply({'params': inputs.params['model']}, x))(
      *input_box(inputs.images, 0.05))
  reg = np.asarray(certified.tightness_regularizer(embeddings, lower, upper, embeddings))
  emb, labels = np.float64(embeddings), np.asarray(inputs.labels)
  hinges, per_triplet = [], []
  for a, p, n in itertools.product(range(len(labels)), repeat=3):
    if a != p and labels[a] == labels[p] and labels[n] != labels[a]:
      hinge = max(0., np.linalg.norm(emb[a] - emb[p]) - np.linalg.norm(emb[a] - emb[n]) + margin)
      hinges.append(hinge)
      per_triplet.append(0.5 * hinge + 0.5 * (reg[a, p] + reg[a, n]))
  assert 0.2 < np.mean(np.array(hinges) > 0) < 0.8  # A mean over the active ones would differ.
  np.testing.assert_allclose(loss, np.mean(per_triplet), rtol=1e-4)


@pytest.mark.parametrize('mining,warns', [('batch_all', True), ('batch_all_mean', False)])
def test_tbt_warns_when_the_triplet_term_is_not_eq_20s_average(caplog, mining, warns):
  config = kakizaki.get_config('fmnist', 'small', 'tbt')
  config.loss.mining = mining
  objectives.get_method('tbt').init_params(config, objectives.ParamsContext(jax.random.key(0), 8, 4))
  assert ("Eq. 20 averages T over all valid triplets" in caplog.text) == warns


def _tiny_config(method, **fields):
  config = kakizaki.get_config('fmnist', 'small', method)
  config.data.name = 'embedded'
  config.model.embedding_dim = 16
  config.update({'num_steps': 6, 'batch_size': 20, 'm_per_class': 4, 'checkpoint_every_steps': 6,
                 'progress_bar': False, 'num_epochs': 1})
  config.eval.update({'num_queries': 100, 'num_candidates': 100})
  config.certified.update({'ramp_start_steps': 1, 'ramp_end_steps': 4})
  config.update(fields)
  return config


def test_tbt_then_fctb_in_the_training_loop(tmp_path):
  """TBT trains a few steps; FCTB starts from it, trains on the candidates, keeps f0 frozen."""
  tbt_config = _tiny_config('tbt')
  tbt_dir = str(tmp_path / 'tbt')
  _, tbt_state = training.train(tbt_config, tbt_dir)
  fctb_config = _tiny_config('fctb', init_from=tbt_dir)
  assert fctb_config.train_split == 'candidates' and fctb_config.certified.kappa == 0.1
  fctb_config.certified.update({'ramp_start_steps': 0, 'ramp_end_steps': 0})
  fctb_dir = str(tmp_path / 'fctb')
  _, fctb_state = training.train(fctb_config, fctb_dir)
  reference = fctb_state.params['objective']['reference']['params']
  for expected, got in zip(jax.tree.leaves(tbt_state.params['model']), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(expected, got)  # f0 = the TBT encoder, unchanged by training.
  moved = [float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(tbt_state.params['model']), jax.tree.leaves(fctb_state.params['model']))]
  assert max(moved) > 0
  lines = open(tmp_path / 'fctb' / 'metrics.jsonl').read().splitlines()
  first = json.loads(lines[0])
  assert first['drift'] < 1e-5 and first['eps'] == pytest.approx(0.2) and first['reg'] > 0
  # The restored FCTB run (as certify.py loads it) has the same encoder.
  _, variables, _, _ = checkpointing.load_trained(fctb_config, fctb_dir)
  for expected, got in zip(jax.tree.leaves(fctb_state.params['model']),
                           jax.tree.leaves(variables['params'])):
    np.testing.assert_array_equal(expected, got)
  assert checkpointing.restore_raw(tmp_path / 'fctb' / 'checkpoints')['step'] == 6


# ---------------------------------------------------------------------------------------------
# Certified triplet training (method 'certified_triplet').
# ---------------------------------------------------------------------------------------------


def _triplet_differences(anchor_points, positives, negatives):
  """||z - p||^2 - ||z - n||^2 for z (S, d), every positive p (P, d) and negative n (N, d): (S, P, N)."""
  to_p = np.sum((anchor_points[:, None] - positives[None]) ** 2, -1)
  to_n = np.sum((anchor_points[:, None] - negatives[None]) ** 2, -1)
  return to_p[:, :, None] - to_n[:, None, :]


def test_query_attack_triplet_bounds_sound_and_attained():
  """Both QA bounds hold at dense samples and at every corner of the anchor's box; the linear
  one equals the maximum over the corners (a linear function's maximum over a box), the
  distance one (Theorem 1's comparison) is never below it."""
  rng = np.random.default_rng(0)
  dim = 4
  embeddings = rng.normal(size=(6, dim))
  radius = rng.uniform(0, 0.8, (6, dim))
  center = embeddings + rng.normal(scale=0.3, size=(6, dim))  # The box need not be centred on f(a).
  with jax.enable_x64(True):
    lower, upper = jnp.asarray(center - radius), jnp.asarray(center + radius)
    bounds = {form: np.asarray(certified.query_attack_triplet_bounds(lower, upper,
                                                                     jnp.asarray(embeddings), form))
              for form in certified.QA_BOUNDS}
  corners = np.array(list(itertools.product((-1., 1.), repeat=dim)))
  for a in range(6):
    samples = center[a] + radius[a] * rng.uniform(-1, 1, (3000, dim))
    at_corners = _triplet_differences(center[a] + radius[a] * corners, embeddings, embeddings)
    at_samples = _triplet_differences(samples, embeddings, embeddings)
    for form, bound in bounds.items():
      assert np.all(at_samples <= bound[a] + 1e-10), form
      assert np.all(at_corners <= bound[a] + 1e-10), form
    np.testing.assert_allclose(at_corners.max(0), bounds['linear'][a], rtol=1e-12, atol=1e-10)
  assert np.all(bounds['distance'] >= bounds['linear'] - 1e-10)
  assert np.mean(bounds['distance'] > bounds['linear'] + 1e-6) > 0.5  # Strictly looser mostly.
  with pytest.raises(ValueError, match="valid: \\['linear', 'distance'\\]"):
    certified.query_attack_triplet_bounds(lower, upper, embeddings, 'crown')


def test_candidate_attack_triplet_bounds_sound_and_attained():
  """CA: p' and n' move in their own boxes, the anchor stays; the bound holds at samples and is
  attained at the farthest corner of p's box and the nearest point of n's box."""
  rng = np.random.default_rng(1)
  dim = 3
  embeddings = rng.normal(size=(5, dim))
  radius = rng.uniform(0, 0.6, (5, dim))
  center = embeddings + rng.normal(scale=0.2, size=(5, dim))
  with jax.enable_x64(True):
    bound = np.asarray(certified.candidate_attack_triplet_bounds(
        jnp.asarray(embeddings), jnp.asarray(center - radius), jnp.asarray(center + radius)))
  for a, p, n in itertools.product(range(5), repeat=3):
    p_samples = center[p] + radius[p] * rng.uniform(-1, 1, (500, dim))
    n_samples = center[n] + radius[n] * rng.uniform(-1, 1, (500, dim))
    sampled = (np.sum((embeddings[a] - p_samples) ** 2, -1)
               - np.sum((embeddings[a] - n_samples) ** 2, -1))
    assert np.all(sampled <= bound[a, p, n] + 1e-10)
    farthest = center[p] + radius[p] * np.where(center[p] >= embeddings[a], 1., -1.)
    nearest = np.clip(embeddings[a], center[n] - radius[n], center[n] + radius[n])
    attained = np.sum((embeddings[a] - farthest) ** 2) - np.sum((embeddings[a] - nearest) ** 2)
    np.testing.assert_allclose(attained, bound[a, p, n], rtol=1e-12, atol=1e-10)


def _certified_inputs(eps, *, batch_norm=False, seed=0, **certified_fields):
  config = kakizaki.get_config('fmnist', 'small', 'certified')
  config.certified.update({'eps': eps, 'kappa': 0.5, 'ramp_start_steps': 0, 'ramp_end_steps': 0,
                           **certified_fields})
  model = models.get_model('small_cnn', embedding_dim=8, batch_norm=batch_norm, ibp_init=True)
  images = test_interval._uniform(seed, (20, 12, 12, 1))  # pylint: disable=protected-access
  variables = models.init_variables(model, jax.random.key(seed + 1), images.shape)
  params = {'model': variables['params'], 'objective': {}}
  labels = jnp.asarray(np.arange(20) % 4, jnp.int32)
  return objectives.ObjectiveInputs(model, params, variables.get('batch_stats', {}), images, labels,
                                    jax.random.key(1), jnp.int32(0), config)


def _squared_distance_attack_loss(x, embed, point, sign):
  """Per example: sign x ||f(x) - point||^2, which PGD maximises (sign -1: pulls f(x) in)."""
  return sign * jnp.sum(jnp.square(embed(x) - point), axis=-1)


@pytest.mark.parametrize('batch_norm', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_certified_triplet_bounds_hold_for_the_encoder(batch_norm):
  """Through a Small CNN (with BatchNorm normalised by the batch's statistics, as training bounds
  it): the QA and CA bounds of every triplet are >= the triplet differences at sampled points of
  the eps-box and at PGD points pushing each anchor towards p and away from n (QA) or p away and
  n towards the anchor (CA)."""
  eps = 0.03
  inputs = _certified_inputs(eps, batch_norm=batch_norm)
  embeddings, _, variables = certified.forward_for_bounds(inputs)
  embed = jax.tree_util.Partial(inputs.model.apply, variables)
  np.testing.assert_allclose(embed(inputs.images), embeddings, rtol=1e-5, atol=1e-5)
  lower, upper, _, _ = certified.embedding_and_preactivation_bounds(
      inputs.model, variables, *input_box(inputs.images, eps))
  qa = np.asarray(certified.query_attack_triplet_bounds(lower, upper, embeddings))
  ca = np.asarray(certified.candidate_attack_triplet_bounds(embeddings, lower, upper))
  emb = np.asarray(embeddings)
  rng = np.random.default_rng(2)
  perturbed = [np.clip(np.asarray(inputs.images) + rng.uniform(-eps, eps, inputs.images.shape),
                       0, 1) for _ in range(20)]
  # PGD points: every image pushed away from / pulled towards the embeddings of images 1, 2, 0;
  # as anchors (QA) they raise d(a', p) or lower d(a', n), as candidates (CA) the same for p', n'.
  pgd = attacks.pgd(_squared_distance_attack_loss, eps=eps, step_size=eps / 4, num_steps=20)
  for point, sign in ((emb[1], 1.), (emb[2], -1.), (emb[0], 1.), (emb[0], -1.)):
    perturbed.append(np.asarray(pgd(jax.random.key(3), inputs.images, embed, jnp.asarray(point),
                                    sign)))
  for x in perturbed:
    assert np.all(np.abs(x - np.asarray(inputs.images)) <= eps + 1e-7)
    moved = np.asarray(embed(jnp.asarray(x, jnp.float32)))
    tol = 1e-4 * (1 + np.abs(qa))
    assert np.all(_triplet_differences(moved, emb, emb) <= qa + tol)  # Anchor a moved to moved[a].
    to_p = np.sum((emb[:, None] - moved[None]) ** 2, -1)
    assert np.all(to_p[:, :, None] - to_p[:, None, :] <= ca + 1e-4 * (1 + np.abs(ca)))


def test_crown_ibp_tightening_is_sound_and_never_looser():
  """CROWN-IBP rows of the QA hinge (Zhang et al. 2020) through a Small CNN: each anchor's chosen
  entries are at most their box bounds, some strictly lower, the others unchanged; every entry
  stays >= the triplet differences at sampled points of the eps-box and at PGD points that push
  each anchor towards its target and away from its first chosen negative."""
  eps, rows = 0.03, 3
  inputs = _certified_inputs(eps)
  embeddings, _, variables = certified.forward_for_bounds(inputs)
  embed = jax.tree_util.Partial(inputs.model.apply, variables)
  input_lower, input_upper = input_box(inputs.images, eps)
  lower, upper, _, _ = certified.embedding_and_preactivation_bounds(inputs.model, variables,
                                                                    input_lower, input_upper)
  targets, valid = certified.target_triplets(inputs.labels, embeddings, 'ranking', 2)
  box = certified.query_attack_triplet_bounds(lower, upper, embeddings, 'linear', targets)
  tightened, tightening = jax.jit(certified.crown_ibp_tightening, static_argnums=9)(
      embed, input_lower, input_upper, lower, upper, embeddings, targets, box, valid, rows)
  box, tightened, valid = np.asarray(box[:, 0]), np.asarray(tightened[:, 0]), np.asarray(valid[:, 0])
  assert tightening.shape == (20, rows) and np.all(np.asarray(tightening) <= 0)
  changed = tightened != box
  assert np.all(changed.sum(axis=1) <= rows) and changed.sum() > 20
  assert np.all(tightened <= box) and np.mean(box - tightened) > 0
  emb = np.asarray(embeddings)
  first_chosen = np.argmax(np.where(changed, box, -np.inf), axis=1)
  rng = np.random.default_rng(5)
  perturbed = [np.clip(np.asarray(inputs.images) + rng.uniform(-eps, eps, inputs.images.shape),
                       0, 1) for _ in range(20)]

  def hinge(x, embed, positive, negative):
    z = embed(x)
    return jnp.sum(jnp.square(z - positive), -1) - jnp.sum(jnp.square(z - negative), -1)

  pgd = attacks.pgd(hinge, eps=eps, step_size=eps / 4, num_steps=20)
  perturbed.append(np.asarray(pgd(jax.random.key(6), inputs.images, embed,
                                  jnp.asarray(emb[np.asarray(targets)]),
                                  jnp.asarray(emb[first_chosen]))))
  embed_jit = jax.jit(embed)
  for x in perturbed:
    moved = np.asarray(embed_jit(jnp.asarray(x, jnp.float32)))
    to_points = np.sum((moved[:, None] - emb[None]) ** 2, -1)  # (anchor, point)
    differences = to_points[np.arange(20), np.asarray(targets)][:, None] - to_points
    assert np.all(np.where(valid, differences - tightened, -np.inf)
                  <= 1e-4 * (1 + np.abs(tightened)))


@pytest.mark.parametrize('triplets,crown_ibp_rows', [
    ('all', 0), ('ranking', 0), pytest.param('ranking', 2, marks=pytest.mark.slow)])  # full (B, B, B) bounds; target rows; CROWN-IBP
def test_certified_triplet_objective_finite_and_clean_at_zero_eps(triplets, crown_ibp_rows):
  """One compilation: the step (traced) picks eps 0 (before the ramp) or 0.05 (after it)."""
  inputs = _certified_inputs(0.05, ramp_start_steps=1, ramp_end_steps=1, triplets=triplets,
                             exclude_nearest=2, crown_ibp_rows=crown_ibp_rows)
  objective = objectives.get_method(inputs.config.method).objective

  @jax.jit
  def loss_and_grads(params, step):
    return jax.value_and_grad(lambda p: objective(inputs._replace(params=p, step=step)),
                              has_aux=True)(params)

  (loss, (step_metrics, _)), grads = loss_and_grads(inputs.params, jnp.int32(1))
  assert float(step_metrics['eps']) == pytest.approx(0.05)
  assert np.isfinite(loss) and all(np.isfinite(l).all() for l in jax.tree.leaves(grads))
  assert sum(float(jnp.abs(l).sum()) for l in jax.tree.leaves(grads['model'])) > 0
  (_, (zero_metrics, _)), _ = loss_and_grads(inputs.params, jnp.int32(0))
  assert float(zero_metrics['eps']) == 0.
  # A point box: both bounds are the clean squared-distance hinge.
  np.testing.assert_allclose(zero_metrics['qa_bound_hinge'], zero_metrics['ca_bound_hinge'],
                             rtol=1e-5)
  assert step_metrics['qa_bound_hinge'] > zero_metrics['qa_bound_hinge']
  assert step_metrics['ca_bound_hinge'] > zero_metrics['ca_bound_hinge']
  if crown_ibp_rows:  # beta ramps from 1 to 0 with eps: 1 at step 0, 0 at step 1.
    assert float(zero_metrics['crown_ibp_beta']) == 1. and float(step_metrics['crown_ibp_beta']) == 0.
    assert float(step_metrics['crown_ibp_tightening']) < 0.


def test_sabr_box_lies_in_the_eps_box():
  rng = np.random.default_rng(4)
  images = rng.uniform(size=(50, 6))
  eps, shrink = 0.1, 0.3
  adversarial = np.clip(images + rng.uniform(-eps, eps, images.shape), 0, 1)
  lower, upper = map(np.asarray, certified.sabr_box(images, adversarial, eps, shrink))
  # input_box rounds each end outwards (eps rounded up, then one ulp): a few float32 ulps.
  ulps = 4 * np.finfo(np.float32).eps
  assert np.all(lower >= np.clip(images - eps, 0, 1) - ulps)
  assert np.all(upper <= np.clip(images + eps, 0, 1) + ulps)
  assert np.all(upper - lower <= 2 * shrink * eps + 2 * ulps) and np.all(lower <= upper)
  inside = (lower <= adversarial + 1e-7) & (adversarial <= upper + 1e-7)
  assert inside.mean() > 0.5


def test_bad_certified_triplet_configs_fail_clearly():
  for field, value, message in [('qa_bound', 'crown', "valid: \\['linear', 'distance'\\]"),
                                ('adversarial', 'pgd', "valid: \\['none', 'mtl_ibp', 'sabr'\\]"),
                                ('sabr_lambda', 0., 'sabr_lambda must be in'),
                                ('margin', -1., 'margin must be >= 0'),
                                ('allowed_violations', -1, 'allowed_violations must be an integer'),
                                ('crown_ibp_rows', -1, 'crown_ibp_rows must be an integer'),
                                ('crown_ibp_rows', 2, "triplets 'nearest_positive' or 'ranking'"),
                                ('crown_ibp_rows', 100, 'must be below the batch size'),
                                ('crown_ibp_beta_end', 1.5, r'crown_ibp_beta_end must be in \[0, 1\]')]:
    config = kakizaki.get_config('fmnist', 'small', 'certified')
    config.certified.triplets = 'all'
    config.certified[field] = value
    with pytest.raises(ValueError, match=message):
      certified.init_certified_triplet_params(config, None)


def test_warmup_regularizers_by_value():
  """L_tightness penalises pre-activation radii above input radius / tau; L_relu is 0 for a
  balanced layer and grows when every unit is surely inactive."""
  input_lower, input_upper = -0.1 * jnp.ones((2, 4)), 0.1 * jnp.ones((2, 4))
  center = jnp.array([[1., -1., 2., -2.], [1., -1., 2., -2.]])
  tight, relu = certified.warmup_regularizers(input_lower, input_upper, [center - 0.1],
                                              [center + 0.1], 0.5)
  assert float(tight) == 0. and float(relu) == 0.
  tight, _ = certified.warmup_regularizers(input_lower, input_upper, [center - 0.4],
                                           [center + 0.4], 0.5)
  np.testing.assert_allclose(tight, (0.5 - 0.1 / 0.4) / 0.5, rtol=1e-6)
  _, relu = certified.warmup_regularizers(input_lower, input_upper, [-center ** 2 - 0.1],
                                          [-center ** 2 + 0.05], 0.5)
  np.testing.assert_allclose(relu, 2., rtol=1e-6)  # No active unit: both ratios 0.


@pytest.mark.parametrize('model_name', ['small_cnn', pytest.param('large_cnn', marks=pytest.mark.slow)])
def test_ibp_init_bounds_interval_growth_through_depth(model_name):
  """Shi et al. 2021, Theorem 1: at IBP initialisation every hidden layer's mean pre-activation
  radius stays within a small factor of the input radius; the default initialisation lets it
  grow by orders of magnitude with depth."""
  images = test_interval._uniform(0, (4, 28, 28, 1))  # pylint: disable=protected-access
  eps = 0.1
  growth = {}
  for ibp_init in (False, True):
    model = models.get_model(model_name, ibp_init=ibp_init)
    variables = models.init_variables(model, jax.random.key(0), images.shape)
    _, _, lowers, uppers = certified.embedding_and_preactivation_bounds(
        model, variables, *input_box(images, eps))
    growth[ibp_init] = [float(jnp.mean(u - l) / 2) / eps for l, u in zip(lowers, uppers)]
  assert max(growth[True]) < 5, growth
  assert growth[False][-1] > 20 * growth[True][-1], growth


@pytest.mark.slow
def test_short_certified_run_does_not_collapse(tmp_path):
  """The embedded config's recipe (IBP init, BatchNorm, warm-up, clipping) compressed to 60 steps
  of batch 20 with eps ramped to 0.2 over steps 10-40: the loss stays finite and the embeddings
  of the query set do not coincide (a collapsed encoder maps every image to one point)."""
  config = _tiny_config('certified', num_steps=60, checkpoint_every_steps=60, log_every_steps=10)
  config.model.update({'ibp_init': True, 'batch_norm': True})
  config.certified.update({'ramp_start_steps': 10, 'ramp_end_steps': 40, 'warmup_weight': 0.5})
  workdir = str(tmp_path / 'certified')
  model, state = training.train(config, workdir)
  records = [json.loads(line) for line in open(f'{workdir}/metrics.jsonl', encoding='utf-8')]
  assert records[-1]['eps'] == pytest.approx(0.2)
  assert all(np.isfinite(r['loss']) for r in records)
  dataset = data.load_dataset(config.data)
  (queries, _), _ = data.query_candidate_sets(config, dataset)
  embeddings = np.asarray(model.apply(state.variables(), queries))
  distances = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)
  assert np.median(distances) > 1e-2 * np.median(np.linalg.norm(embeddings, axis=-1))
  assert len(np.unique(np.round(embeddings, 4), axis=0)) > len(embeddings) // 2


def test_selected_triplets_by_value():
  labels = jnp.array([0, 0, 0, 1, 1, 1])
  embeddings = jnp.array([[0.], [1.], [3.], [10.], [11.], [20.]])
  def triplets(selection, exclude=0):
    mask = np.asarray(certified.selected_triplets(labels, embeddings, selection, exclude))
    return {tuple(int(i) for i in t) for t in np.argwhere(mask)}
  assert triplets('all') == {t for t in itertools.product(range(6), repeat=3)
                             if t[0] != t[1] and labels[t[0]] == labels[t[1]] != labels[t[2]]}
  # Nearest positives: 0 -> 1, 1 -> 0, 2 -> 1, 3 -> 4, 4 -> 3, 5 -> 4.
  assert triplets('nearest_positive') == {(a, p, n) for a, p in
                                          ((0, 1), (1, 0), (2, 1), (3, 4), (4, 3), (5, 4))
                                          for n in range(6) if labels[n] != labels[a]}
  ranking = triplets('ranking', exclude=1)
  assert {n for a, _, n in ranking if a == 0} == {3, 4, 5}  # 2 is 0's nearest other point.
  assert {n for a, _, n in ranking if a == 5} == {0, 1, 2}  # 5 -> 4; 3 (nearest other) left out.
  with pytest.raises(ValueError, match="valid: \\['all', 'nearest_positive', 'ranking'\\]"):
    certified.selected_triplets(labels, embeddings, 'hard')


@pytest.mark.parametrize('selection', ['nearest_positive', 'ranking'])
def test_target_rows_equal_the_full_triplet_bounds(selection):
  """The target-row form (one positive per anchor, O(B^2 d)) gives exactly the entries
  [a, targets[a], n] of the full (B, B, B) bounds, and the same mean hinge over the selection."""
  rng = np.random.default_rng(3)
  size, dim = 12, 5
  labels = jnp.asarray(np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4]))  # Class 4: no positive.
  embeddings = jnp.asarray(rng.normal(size=(size, dim)))
  center = embeddings + rng.normal(scale=0.3, size=(size, dim))
  radius = rng.uniform(0, 0.5, (size, dim))
  with jax.enable_x64(True):
    lower, upper = jnp.asarray(center - radius), jnp.asarray(center + radius)
    targets, mask = certified.target_triplets(labels, embeddings, selection, exclude_nearest=2)
    full_mask = certified.selected_triplets(labels, embeddings, selection, exclude_nearest=2)
    rows = np.arange(size)
    np.testing.assert_array_equal(np.asarray(full_mask)[rows, np.asarray(targets)],
                                  np.asarray(mask)[:, 0])
    assert int(jnp.sum(mask)) == int(jnp.sum(full_mask)) > 0
    assert not np.any(np.asarray(mask)[-1])  # The anchor without positives selects nothing.
    pairs = [(certified.query_attack_triplet_bounds(lower, upper, embeddings, form),
              certified.query_attack_triplet_bounds(lower, upper, embeddings, form, targets))
             for form in certified.QA_BOUNDS]
    pairs.append((certified.candidate_attack_triplet_bounds(embeddings, lower, upper),
                  certified.candidate_attack_triplet_bounds(embeddings, lower, upper, targets)))
    for full, target_rows in pairs:
      assert target_rows.shape == (size, 1, size)
      np.testing.assert_allclose(np.asarray(full)[rows, np.asarray(targets)],
                                 np.asarray(target_rows)[:, 0], rtol=1e-13, atol=1e-13)
      np.testing.assert_allclose(certified.mean_hinge(full, 1.0, full_mask),
                                 certified.mean_hinge(target_rows, 1.0, mask), rtol=1e-13)


@pytest.mark.parametrize('allowed', [1, 3])
def test_mean_hinge_leaves_out_each_rows_worst_bounds(allowed):
  """With allowed_violations = m each row [a, p] drops its m largest valid hinges (by value,
  against a per-row numpy reference), also from the count; rows with <= m valid drop them all;
  the dropped triplets get no gradient, the others the mean's."""
  rng = np.random.default_rng(5)
  differences = rng.normal(size=(6, 2, 7))
  valid = rng.uniform(size=differences.shape) < 0.6
  valid[0, 0] = False  # a row with nothing valid
  valid[1, 1] = False
  valid[1, 1, :2] = True  # a row with fewer valid triplets than m = 3
  margin = 0.5
  total = count = 0
  kept = np.zeros(differences.shape, bool)
  for row in np.ndindex(differences.shape[:2]):
    columns = np.flatnonzero(valid[row])
    hinges = np.maximum(differences[row][columns] + margin, 0)
    keep = columns[np.argsort(-hinges, kind='stable')[allowed:]]
    kept[row + (keep,)] = True
    total += np.maximum(differences[row][keep] + margin, 0).sum()
    count += len(keep)
  with jax.enable_x64(True):
    value, grad = jax.value_and_grad(certified.mean_hinge)(
        jnp.asarray(differences), margin, jnp.asarray(valid), allowed)
  np.testing.assert_allclose(value, total / count, rtol=1e-12)
  active = kept & (differences + margin > 0)
  np.testing.assert_allclose(np.asarray(grad), np.where(active, 1 / count, 0.), atol=1e-15)
