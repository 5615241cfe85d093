"""Tests of the empirical defences (`jaxcert.objectives.adversarial`): they train, and they train on
the adversarial examples their attacks produce, with the outer gradient taken at those points.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import conftest
from configs import default
from jaxcert import attacks
from jaxcert import checkpointing
from jaxcert import data
from jaxcert import losses
from jaxcert import models
from jaxcert import objectives
from jaxcert import training
from jaxcert.objectives import adversarial
from jaxcert.objectives import base

IMAGE_SHAPE = (6, 6, 1)


def _config(method, **overrides):
  config = default.get_config()
  config.method = method
  config.model.name = 'mlp'
  config.model.embedding_dim = 4
  config.model.hidden_width = 16
  config.loss.margin = 0.5
  config.batch_size = 12
  config.m_per_class = 4
  config.num_steps = 30
  config.learning_rate = 3e-3
  config.lr_decay_epochs = ()
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1000
  config.progress_bar = False
  config.eval.num_queries = 12
  config.eval.num_candidates = 30
  config.eval.ks = (1, 5)
  config.adversarial.eps = 0.05
  config.act.eps, config.act.step_size, config.act.num_steps = 0.1, 0.025, 6
  return conftest.with_overrides(config, overrides)


def _batch(seed, num_classes=3, per_class=4):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
  images = np.clip(0.2 + 0.2 * labels[:, None, None, None] + 0.1 * rng.normal(
      size=(len(labels),) + IMAGE_SHAPE), 0, 1).astype(np.float32)
  return jnp.asarray(images), jnp.asarray(labels)


def _inputs(config, seed=0, step_key=1):
  model = models.build_model(config.model)
  variables = models.init_variables(model, jax.random.key(seed), IMAGE_SHAPE)
  images, labels = _batch(seed)
  params = {'model': variables['params'], 'objective': {}}
  return objectives.ObjectiveInputs(model, params, {}, images, labels, jax.random.key(step_key),
                                    jnp.zeros((), jnp.int32), config)


def _loss_and_grad(objective, inputs):
  def loss_fn(params):
    return objective(inputs._replace(params=params))
  return jax.value_and_grad(loss_fn, has_aux=True)(inputs.params)


@pytest.mark.parametrize('negatives', adversarial.NEGATIVE_SAMPLERS)
def test_sample_tuples_pick_same_and_other_class(negatives):
  labels = jnp.asarray([0, 0, 1, 1, 1, 2, 2, 3])  # class 3 has no positive
  embeddings = jax.random.normal(jax.random.key(0), (8, 4))
  embeddings = embeddings / jnp.linalg.norm(embeddings, axis=1, keepdims=True)
  sample = jax.jit(lambda key: adversarial.sample_tuples(key, labels, embeddings,
                                                        negatives=negatives))
  for seed in range(5):
    positive, negative, valid = sample(jax.random.key(seed))
    labels_np, positive, negative = map(np.asarray, (labels, positive, negative))
    np.testing.assert_array_equal(valid, labels_np != 3)
    rows = np.asarray(valid)
    assert np.all(labels_np[positive[rows]] == labels_np[rows])
    assert np.all(positive[rows] != np.arange(8)[rows])
    assert np.all(labels_np[negative] != labels_np)


def test_adversarial_training_uses_pgd_positives_and_danskin_gradient():
  """With P(gamma=1) = 1 the loss and gradient are those of the tuple loss at PGD positives."""
  config = _config('adversarial', **{'adversarial.attack_rate': 1.0, 'loss.name': 'triplet'})
  inputs = _inputs(config)
  (loss, (logged, _)), grads = _loss_and_grad(adversarial.adversarial_objective, inputs)
  assert float(logged['attacked_fraction']) == 1.0
  assert float(logged['perturbation_linf']) == pytest.approx(0.05, abs=1e-6)

  # The same attack, rebuilt outside the objective from the same keys.
  tuple_key, attack_key, _ = jax.random.split(inputs.key, 3)
  embed = jax.tree_util.Partial(inputs.model.apply, {'params': inputs.params['model']})
  clean = embed(inputs.images)
  positive, negative, valid = adversarial.sample_tuples(tuple_key, inputs.labels, clean,
                                                        negatives='distance_weighted')
  x_adv = attacks.get_attack('pgd', attacks.squared_embedding_distance, eps=0.05, num_steps=5)(
      attack_key, inputs.images[positive], embed, clean)
  moved = attacks.squared_embedding_distance(x_adv, embed, clean)
  assert np.all(moved > attacks.squared_embedding_distance(inputs.images[positive], embed, clean))

  def fixed_point_loss(params):
    emb = inputs.model.apply({'params': params['model']}, jnp.concatenate([inputs.images, x_adv]))
    anchor, pos = jnp.split(emb, 2)
    return adversarial.tuple_loss(config.loss, anchor, pos, anchor[negative], valid)

  expected_loss, expected_grads = jax.value_and_grad(fixed_point_loss)(inputs.params)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

  natural = _config('adversarial', **{'adversarial.attack_rate': 0.0, 'loss.name': 'triplet'})
  natural_loss, (natural_logged, _) = adversarial.adversarial_objective(
      inputs._replace(config=natural))
  assert float(natural_logged['attacked_fraction']) == 0.0
  assert float(loss) > float(natural_loss)


def test_contrastive_tuple_loss_by_hand():
  loss_config = ml_collections.ConfigDict({'name': 'contrastive', 'pos_margin': 0.0,
                                           'neg_margin': 1.0})
  anchor = jnp.zeros((2, 2))
  positive = jnp.asarray([[0.3, 0.4], [0.0, 0.0]])  # d = 0.5, 0
  negative = jnp.asarray([[0.6, 0.8], [3.0, 0.0]])  # d = 1.0 (hinge 0), 3 (hinge 0)
  loss = adversarial.tuple_loss(loss_config, anchor, positive, negative, jnp.asarray([True, True]))
  assert float(loss) == pytest.approx(0.5 / 4)
  with pytest.raises(ValueError, match='triplet'):
    adversarial.tuple_loss(ml_collections.ConfigDict({'name': 'margin'}), anchor, positive,
                           negative, jnp.asarray([True, True]))


def test_act_collapses_positive_and_negative_then_separates_them():
  config = _config('act')
  inputs = _inputs(config)
  (loss, (logged, _)), grads = _loss_and_grad(adversarial.act_objective, inputs)
  positive, negative, valid = adversarial.sample_tuples(inputs.key, inputs.labels)
  embed = jax.tree_util.Partial(inputs.model.apply, {'params': inputs.params['model']})
  clean = attacks.paired_distances(embed(inputs.images[positive]), embed(inputs.images[negative]))
  assert float(logged['collapsed_distance']) < float(jnp.mean(clean))
  assert 0.05 < float(logged['perturbation_linf']) <= 0.1 + 1e-6
  emb = embed(inputs.images)
  clean_loss = jnp.mean(losses.triplet_loss_explicit(emb, emb[positive], emb[negative],
                                                     margin=0.5))
  assert bool(jnp.all(valid)) and float(loss) > float(clean_loss)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  with pytest.raises(ValueError, match='triplet'):
    adversarial.act_objective(inputs._replace(config=_config('act', **{'loss.name': 'margin'})))


def test_spectral_penalty_is_top_eigenvalues_of_wtw():
  weight = jax.random.normal(jax.random.key(0), (3, 10))
  eigenvalues = np.sort(np.linalg.eigvalsh(np.asarray(weight.T @ weight, np.float64)))
  np.testing.assert_allclose(adversarial.top_eigenvalues(weight, 2), eigenvalues[-2:], rtol=1e-4)
  assert float(adversarial.spectral_penalty(weight, (0.5, 2.0))) == pytest.approx(
      0.5 * eigenvalues[-2] + 2.0 * eigenvalues[-1], rel=1e-4)
  with pytest.raises(ValueError, match='k must be'):
    adversarial.top_eigenvalues(weight, 4)


def test_pairwise_margin_loss_by_hand():
  embeddings = jnp.asarray([[0.0], [0.5], [2.0]])  # D: (0,1) 0.25 same; (0,2) 4, (1,2) 2.25 diff
  labels = jnp.asarray([0, 0, 1])
  # same: (1 + 0.25 - 2)_+ = 0; diff: (1 - (4 - 2))_+ = 0, (1 - 0.25)_+ = 0.75.
  loss = adversarial.pairwise_margin_loss(embeddings, labels, gamma=2.0)
  assert float(loss) == pytest.approx(0.75 / 3)


def test_spectral_objective_needs_a_linear_encoder():
  config = _config('spectral', **{'spectral.alphas': (1.0,)})
  with pytest.raises(ValueError, match='linear'):
    adversarial.spectral_objective(_inputs(config))


def _synthetic_run(tmp_path, config):
  dataset = data.synthetic.two_gaussians(num_train=48, num_test=40, image_size=6, num_channels=1,
                                         sigma=0.1)
  training.train(config, str(tmp_path), dataset)
  return [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]


@pytest.mark.parametrize('method,overrides', [
    ('adversarial', {'adversarial.attack_rate': 0.5, 'loss.name': 'triplet'}),
    ('act', {}),
    ('spectral', {'model.name': 'linear', 'spectral.alphas': (0.1,), 'learning_rate': 1e-2}),
])
def test_defences_train(tmp_path, method, overrides):
  """A few steps of train.py's loop: finite, decreasing loss, and the attack is in use."""
  config = _config(method, m_per_class=6, **overrides)
  if method == 'spectral':
    del config.model['hidden_width']
  records = _synthetic_run(tmp_path, config)
  loss = np.array([r['loss'] for r in records])
  assert np.all(np.isfinite(loss)) and len(loss) == 30
  assert loss[-10:].mean() < loss[:5].mean()
  if method == 'adversarial':
    assert 0.0 < np.mean([r['attacked_fraction'] for r in records]) < 1.0
  if method == 'act':
    assert np.all([r['perturbation_linf'] > 0 for r in records])
  if method == 'spectral':
    weight = adversarial.linear_encoder_weight(
        models.build_model(config.model),
        checkpointing.load_trained(config, str(tmp_path), data.synthetic.two_gaussians(
            num_train=48, num_test=40, image_size=6, num_channels=1))[1]['params'])
    assert float(adversarial.top_eigenvalues(weight, 1)[0]) == pytest.approx(
        records[-1]['lambda_max'], rel=0.2)


def test_methods_are_registered():
  for name in ('adversarial', 'act', 'spectral'):
    assert isinstance(objectives.get_method(name), base.Method)
