"""Encoders of jaxcert.models: shapes, the L2 head, normalisation inside the model, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from jaxcert import models

EMBEDDING_DIM = 16
MNIST_SHAPE = (28, 28, 1)
CIFAR_SHAPE = (32, 32, 3)
FAST_MODELS = ('linear', 'mlp', 'small_cnn', 'large_cnn')
RESNETS = ('resnet18', 'resnet50')


@functools.lru_cache(maxsize=None)
def _built(name, image_shape):
  """(model, variables) for `name`; cached so each architecture compiles its init once."""
  model = models.get_model(name, embedding_dim=EMBEDDING_DIM)
  return model, models.init_variables(model, jax.random.key(0), image_shape)


@functools.lru_cache(maxsize=None)
def _jitted_apply(model, train):
  if train:
    return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def test_model_names():
  assert models.MODEL_NAMES == ('linear', 'mlp', 'small_cnn', 'large_cnn', 'resnet18', 'resnet50')


@pytest.mark.parametrize('name', FAST_MODELS)
def test_output_shape_and_no_training_mode_difference(name):
  model, variables = _built(name, MNIST_SHAPE)
  assert set(variables) == {'params'}
  x = conftest.uniform_images(3, MNIST_SHAPE)
  eval_out = _jitted_apply(model, False)(variables, x)
  assert eval_out.shape == (3, EMBEDDING_DIM)
  assert eval_out.dtype == jnp.float32
  assert np.isfinite(np.asarray(eval_out)).all()
  # No dropout or batch norm: training mode computes the same function.
  np.testing.assert_allclose(model.apply(variables, x, train=True), eval_out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', [RESNETS[0], pytest.param(RESNETS[1], marks=pytest.mark.slow)])
def test_resnet_batch_stats_train_and_eval_modes(name):  # ResNet-50 shares ResNet-18's blocks
  model, variables = _built(name, CIFAR_SHAPE)
  assert set(variables) == {'params', 'batch_stats'}
  x = conftest.uniform_images(2, CIFAR_SHAPE)
  eval_out = _jitted_apply(model, False)(variables, x)
  assert eval_out.shape == (2, EMBEDDING_DIM)
  # Eval mode uses running averages: an image's embedding does not depend on the rest of the batch;
  # train mode uses batch statistics, so it does.
  other_batch = x.at[1].set(1.0 - x[1])
  np.testing.assert_allclose(_jitted_apply(model, False)(variables, other_batch)[0], eval_out[0],
                             rtol=1e-4, atol=1e-5)
  train_out, updates = _jitted_apply(model, True)(variables, x)
  other_train_out, _ = _jitted_apply(model, True)(variables, other_batch)
  assert not np.allclose(other_train_out[0], train_out[0], atol=1e-4)
  assert train_out.shape == (2, EMBEDDING_DIM)
  assert np.isfinite(np.asarray(train_out)).all()
  # Train mode normalises with batch statistics and moves the running averages.
  assert not np.allclose(train_out, eval_out, atol=1e-4)
  old_mean = variables['batch_stats']['stem_norm']['mean']
  new_mean = updates['batch_stats']['stem_norm']['mean']
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])
  assert not np.allclose(old_mean, new_mean)


def test_resnet_architecture_and_stem_by_image_size():
  model = models.get_model('resnet18', embedding_dim=EMBEDDING_DIM)
  def param_shapes(image_shape):
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + image_shape))
    return jax.tree.map(lambda a: a.shape, variables['params'])
  small = param_shapes((32, 32, 3))
  assert small['stem_conv']['kernel'] == (3, 3, 3, 64)
  assert [k for k in small if k.startswith('stage')] == [
      f'stage{s}_block{b}' for s in range(1, 5) for b in (1, 2)]
  assert small['stage4_block1']['conv2']['kernel'] == (3, 3, 512, 512)
  assert 'projection_conv' in small['stage2_block1'] and 'projection_conv' not in small['stage1_block1']
  assert small['embedding']['kernel'] == (512, EMBEDDING_DIM)
  assert param_shapes((64, 64, 3))['stem_conv']['kernel'] == (7, 7, 3, 64)
  forced = models.get_model('resnet18', stem='imagenet')
  variables = jax.eval_shape(forced.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert variables['params']['stem_conv']['kernel'].shape == (7, 7, 3, 64)
  resnet50 = jax.eval_shape(models.get_model('resnet50').init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3)))['params']
  assert [k for k in resnet50 if k.startswith('stage')] == [
      f'stage{s}_block{b}' for s, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(1, n + 1)]
  assert resnet50['embedding']['kernel'].shape == (2048, 128)
  # ResNet-50 without its classifier has 23.5M parameters (He et al. 2016, Table 1).
  num_params = sum(a.size for a in jax.tree.leaves(resnet50)) - 2048 * 128 - 128
  assert 23.4e6 < num_params < 23.6e6


def test_cnn_layers_follow_gowal_et_al():
  _, small = _built('small_cnn', MNIST_SHAPE)
  shapes = jax.tree.map(lambda a: a.shape, small['params'])
  assert shapes['conv1']['kernel'] == (4, 4, 1, 16)
  assert shapes['conv2']['kernel'] == (4, 4, 16, 32)
  # VALID padding: 28 -> (28 - 4) // 2 + 1 = 13 -> 13 - 4 + 1 = 10.
  assert shapes['dense1']['kernel'] == (10 * 10 * 32, 100)
  assert shapes['embedding']['kernel'] == (100, EMBEDDING_DIM)
  _, large = _built('large_cnn', MNIST_SHAPE)
  shapes = jax.tree.map(lambda a: a.shape, large['params'])
  assert [shapes[f'conv{i}']['kernel'] for i in range(1, 6)] == [
      (3, 3, 1, 64), (3, 3, 64, 64), (3, 3, 64, 128), (3, 3, 128, 128), (3, 3, 128, 128)]
  # SAME padding, one stride-2 layer: 28 -> 14.
  assert shapes['dense1']['kernel'] == (14 * 14 * 128, 512)
  assert shapes['embedding']['kernel'] == (512, EMBEDDING_DIM)


def test_linear_is_wx_and_mlp_width_is_configurable():
  model, variables = _built('linear', MNIST_SHAPE)
  assert set(variables['params']['embedding']) == {'kernel'}  # No bias: f(x) = W x.
  x = conftest.uniform_images(2, MNIST_SHAPE)
  expected = x.reshape(2, -1) @ variables['params']['embedding']['kernel']
  np.testing.assert_allclose(model.apply(variables, x), expected, rtol=1e-5, atol=1e-6)
  mlp = models.get_model('mlp', embedding_dim=8, hidden_width=32, num_hidden_layers=3)
  params = models.init_variables(mlp, jax.random.key(0), (4, 4, 1))['params']
  assert [params[f'hidden{i}']['kernel'].shape for i in (1, 2, 3)] == [(16, 32), (32, 32), (32, 32)]
  assert params['embedding']['kernel'].shape == (32, 8)


@pytest.mark.parametrize('name, image_shape', [(n, MNIST_SHAPE) for n in FAST_MODELS]
                         + [('resnet18', CIFAR_SHAPE)])
def test_l2_head_gives_unit_norm_embeddings(name, image_shape):
  plain, variables = _built(name, image_shape)
  model = models.get_model(name, embedding_dim=EMBEDDING_DIM, l2_normalize=True)
  x = conftest.uniform_images(3, image_shape, seed=4)
  out = _jitted_apply(model, False)(variables, x)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
  # The head is a projection of the plain model's embedding.
  raw = _jitted_apply(plain, False)(variables, x)
  np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-4,
                             atol=1e-6)


def test_l2_head_is_finite_at_zero():
  value, grad = jax.value_and_grad(lambda e: jnp.sum(models.l2_normalize(e)))(jnp.zeros((1, 4)))
  assert np.isfinite(value) and np.isfinite(np.asarray(grad)).all()


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize('name, image_shape, mean, std', [
    ('linear', MNIST_SHAPE, 0.5, 0.25),
    ('linear', CIFAR_SHAPE, IMAGENET_MEAN, IMAGENET_STD),
    ('small_cnn', CIFAR_SHAPE, 0.5, 0.25),
    ('small_cnn', CIFAR_SHAPE, IMAGENET_MEAN, IMAGENET_STD),
])
def test_normalisation_happens_inside_the_model(name, image_shape, mean, std):
  plain, variables = _built(name, image_shape)
  normalised = models.get_model(name, embedding_dim=EMBEDDING_DIM, input_mean=mean, input_std=std)
  x = conftest.uniform_images(2, image_shape, seed=1)
  expected = plain.apply(variables, (x - jnp.asarray(mean)) / jnp.asarray(std))
  np.testing.assert_allclose(normalised.apply(variables, x), expected, rtol=1e-4, atol=1e-5)
  assert not np.allclose(plain.apply(variables, x), expected, atol=1e-3)


def test_config_style_lists_are_accepted():
  model = models.get_model('small_cnn', input_mean=[0.5, 0.5, 0.5], input_std=[0.2, 0.2, 0.2])
  assert model.input_mean == (0.5, 0.5, 0.5) and model.input_std == (0.2, 0.2, 0.2)
  assert models.get_model('small_cnn', input_mean=[0.5]).input_mean == 0.5


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match="valid models: .*'linear'.*'resnet50'"):
    models.get_model('vgg16')


def test_unknown_option_lists_accepted_ones():
  with pytest.raises(ValueError, match='hidden_width'):
    models.get_model('small_cnn', hidden_width=3)
  assert 'stem' in models.model_options('resnet50')
  assert 'num_channels' in models.model_options('linear')


@pytest.mark.parametrize('kwargs, message', [
    ({'input_std': 0.0}, 'input_std must be positive'),
    ({'input_std': (0.2, -0.1, 0.3)}, 'input_std must be positive'),
    ({'input_mean': (0.1, 0.2), 'input_std': (0.2, 0.2, 0.2)}, 'different numbers of channels'),
    ({'input_mean': (0.1, 0.2, 0.3), 'num_channels': 1}, 'num_channels=1'),
    ({'embedding_dim': 0}, 'embedding_dim'),
    ({'input_mean': 'zero'}, 'input_mean must be a number'),
])
def test_bad_values_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.get_model('mlp', **kwargs)


def test_wrong_channel_count_says_what_shape_is_expected():
  model = models.get_model('resnet18', num_channels=3)
  expected = r'expects images of shape \(batch, height, width, 3\).*1 channel'
  with pytest.raises(ValueError, match=expected):
    models.init_variables(model, jax.random.key(0), (32, 32, 1))
  with pytest.raises(ValueError, match='3 values but the images'):
    models.init_variables(models.get_model('linear', input_mean=(0.1, 0.2, 0.3)), jax.random.key(0),
                          MNIST_SHAPE)


def test_image_too_small_for_small_cnn():
  with pytest.raises(ValueError, match='at least 10x10'):
    models.init_variables(models.get_model('small_cnn'), jax.random.key(0), (8, 8, 1))
  # 10x10 is the smallest the two VALID convolutions take.
  variables = models.init_variables(models.get_model('small_cnn', embedding_dim=4),
                                    jax.random.key(0), (10, 10, 1))
  assert variables['params']['dense1']['kernel'].shape == (32, 100)


@pytest.mark.parametrize('image_shape', [(28, 28), (2, 1, 28, 28, 1)])
def test_bad_image_shape_rank(image_shape):
  with pytest.raises(ValueError, match='image_shape must be'):
    models.init_variables(models.get_model('linear'), jax.random.key(0), image_shape)


def test_apply_rejects_unbatched_images():
  model, variables = _built('linear', MNIST_SHAPE)
  with pytest.raises(ValueError, match='NHWC'):
    model.apply(variables, jnp.zeros(MNIST_SHAPE))


def test_init_variables_accepts_a_batch_shape():
  model = models.get_model('mlp', embedding_dim=4, hidden_width=8)
  with_batch = models.init_variables(model, jax.random.key(3), (5, 4, 4, 1))
  without = models.init_variables(model, jax.random.key(3), (4, 4, 1))
  jax.tree.map(np.testing.assert_array_equal, with_batch, without)
