"""Tests of the interval interpreter `jaxcert.bounds` (Kakizaki et al., Eqs. 15-16).

Every rule and every encoder is attacked: thousands of points sampled in the
box (uniform, random corners, the box's ends and the point nearest 0) and the
end points of PGD runs pushing output coordinates up and down must lie within
the bounds. Small cases are checked against bounds computed by hand, and
CNN bounds against a hand-written centre/radius IBP.
"""

import functools
from fractions import Fraction
import math

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert import bounds
from jaxcert.bounds import IntervalBound
from jaxcert.bounds import input_box
from jaxcert.bounds import interval

RTOL = 1e-5


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  """float32 matmuls and convolutions at full precision.

  On GPUs and TPUs the default float32 precision is reduced (TF32/bf16
  passes, relative error ~1e-3): both the bounds and the sampled forward
  passes would carry that error (docs/bounds.md §1). On CPU this is a no-op.
  """
  with jax.default_matmul_precision('highest'):
    yield


def _sample_box(seed, lower, upper, num_samples):
  """Points of the box: ends, centre, the point nearest 0, corners, uniform.

  Drawn with numpy: eager `jax.random` compiles once per shape, too slow here.
  """
  rng = np.random.default_rng(seed)
  lower, upper = np.asarray(lower), np.asarray(upper)
  shape = (num_samples // 2,) + lower.shape
  corners = np.where(rng.random(shape) < 0.5, upper, lower)
  uniform = lower + rng.random(shape) * (upper - lower)
  special = np.stack(
      [lower, upper, (lower + upper) / 2, np.clip(0., lower, upper)])
  return jnp.asarray(np.concatenate([special, corners, uniform]),
                     jax.dtypes.canonicalize_dtype(lower.dtype))  # float64 only under x64


def _uniform(seed, shape, minval=0., maxval=1.):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(minval, maxval, shape), jnp.float32)


def _tolerance(values, rtol=RTOL):
  return rtol * jnp.maximum(1., jnp.abs(values))


def _assert_within(values, out_lower, out_upper, what='', rtol=RTOL):
  """values[..., :] within [out_lower, out_upper] up to `rtol`."""
  values, out_lower, out_upper = map(np.asarray,
                                     (values, out_lower, out_upper))
  tolerance = np.asarray(_tolerance(values, rtol))
  below = values < out_lower - tolerance
  above = values > out_upper + tolerance
  assert not below.any(), (
      f'{what}: {below.sum()} values below the lower bound, worst by '
      f'{np.max(out_lower - values)}')
  assert not above.any(), (
      f'{what}: {above.sum()} values above the upper bound, worst by '
      f'{np.max(values - out_upper)}')


def _check_sampled(fn, lower, upper, *, seed, num_samples=2000, exact=False, rtol=RTOL):
  """Asserts soundness of interval(fn) on samples (and tightness if exact), up to `rtol`.

  Returns:
    The bounds `(out_lower, out_upper)`.
  """
  out_lower, out_upper = jax.jit(interval(fn))(lower, upper)
  assert np.all(np.asarray(out_lower) <= np.asarray(out_upper))
  samples = _sample_box(seed, lower, upper, num_samples)
  values = jax.jit(jax.vmap(fn))(samples)
  _assert_within(values, out_lower, out_upper, 'sampled', rtol)
  if exact:  # The bounds are attained by sampled points (ends, corners, 0).
    np.testing.assert_allclose(values.min(0), out_lower, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(values.max(0), out_upper, rtol=rtol, atol=rtol)
  return out_lower, out_upper


def _pgd_extremes(fn, lower, upper, coordinates, *, num_steps=50):
  """PGD (signed gradient steps, projected to the box) for +-fn(x)[coord].

  Args:
    fn: function of one array.
    lower, upper: the box.
    coordinates: flat indices into fn's output to push up and down.
    num_steps: PGD steps.

  Returns:
    (len(coordinates), 2) values of fn at the end points: [:, 0] pushed
    down, [:, 1] pushed up.
  """
  step_size = 2.5 * jnp.max(upper - lower) / num_steps

  def attack(coordinate, direction):
    def objective(x):
      return direction * fn(x).ravel()[coordinate]

    def step(x, _):
      x = x + step_size * jnp.sign(jax.grad(objective)(x))
      return jnp.clip(x, lower, upper), None

    start = (lower + upper) / 2
    x, _ = lax.scan(step, start, None, length=num_steps)
    return fn(x).ravel()[coordinate]

  directions = jnp.array([-1., 1.])
  return jax.jit(jax.vmap(jax.vmap(attack, (None, 0)), (0, None)))(
      jnp.asarray(coordinates), directions)


def _check_pgd(fn, lower, upper, out_bounds, *, num_coordinates=4,
               num_steps=50, seed=0):
  """Asserts that PGD end points for a few output coordinates stay inside
  `out_bounds = interval(fn)(lower, upper)`."""
  out_lower, out_upper = out_bounds
  size = out_lower.size
  coordinates = np.random.default_rng(seed).choice(
      size, min(num_coordinates, size), replace=False)
  extremes = _pgd_extremes(fn, lower, upper, coordinates,
                           num_steps=num_steps)
  flat_lower = out_lower.ravel()[coordinates]
  flat_upper = out_upper.ravel()[coordinates]
  _assert_within(extremes, flat_lower[:, None], flat_upper[:, None], 'PGD')
  return extremes, flat_lower, flat_upper


def _init(module, image, seed=1):
  """Random variables for `module` (faster than compiling `module.init`)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), image)
  rng = np.random.default_rng(seed)

  def draw(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 100
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in),
                       jnp.float32)

  return jax.tree.map(draw, shapes)


def _random_box(seed, shape, kind='any'):
  rng = np.random.default_rng(seed)
  center = rng.uniform(-2., 2., shape)
  radius = np.where(rng.random(shape) < 0.1, 0., rng.uniform(0., 1., shape))
  if kind == 'positive':
    center = np.abs(center) + radius + 0.1
  elif kind == 'nonzero':
    center = np.sign(center) * (np.abs(center) + radius + 0.1)
  return (jnp.asarray(center - radius, jnp.float32),
          jnp.asarray(center + radius, jnp.float32))


_RNG = np.random.default_rng(1)
_W = jnp.asarray(_RNG.normal(size=(5, 8)), jnp.float32)
_C = jnp.asarray(_RNG.normal(size=(8,)), jnp.float32)
_KERNEL = jnp.asarray(_RNG.normal(size=(3, 3, 2, 3)), jnp.float32)
_MASK = jnp.asarray(_RNG.random(8) < 0.5)
# Float exponents of `pow`: integer-valued ones are defined on negative bases too.
_EXPONENTS = jnp.asarray([2., 3., -1., -2., 0.5, 1.5, 0., -0.5], jnp.float32)
_GEM_P = jnp.float32(3.)  # GeM pooling's exponent, an array so that it lowers to `pow`


def _conv(x):
  return lax.conv_general_dilated(
      x[None], _KERNEL.astype(x.dtype), (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))[0]


@jax.custom_vjp
def _custom_vjp_double(x):
  return 2 * x


_custom_vjp_double.defvjp(lambda x: (2 * x, None), lambda _, g: (2 * g,))


# (name, function, input shape, box kind, bounds attained by sampled points)
RULE_CASES = [
    ('add_const', lambda x: x + _C, (8,), 'any', True),
    ('add', lambda x: x + x[::-1], (8,), 'any', False),
    ('sub_const', lambda x: 1.5 - x, (8,), 'any', True),
    ('sub', lambda x: x - x[::-1], (8,), 'any', False),
    ('sub_same', lambda x: x - x + 1., (8,), 'any', True),
    ('neg', lambda x: -x, (8,), 'any', True),
    ('mul_const', lambda x: x * _C, (8,), 'any', True),
    ('mul', lambda x: x * x[::-1], (8,), 'any', True),
    ('mul_same', lambda x: x * x, (8,), 'any', True),
    ('div_const', lambda x: x / (_C + 3.), (8,), 'any', True),
    ('div', lambda x: x / x[::-1], (8,), 'nonzero', True),
    ('div_by_bounded', lambda x: 2. / (jnp.abs(x) + 0.5), (8,), 'any', True),
    ('dot_general', lambda x: _W @ x, (8,), 'any', False),
    ('dot_general_both', lambda x: x[:4].reshape(2, 2) @ x[4:].reshape(2, 2),
     (8,), 'any', False),
    ('conv', _conv, (5, 5, 2), 'any', False),
    ('max', lambda x: jnp.maximum(x, x[::-1]), (8,), 'any', True),
    ('min', lambda x: jnp.minimum(x, 0.3), (8,), 'any', True),
    ('relu', jax.nn.relu, (8,), 'any', True),
    ('clamp', lambda x: lax.clamp(-0.5, x, 0.7), (8,), 'any', True),
    ('clip', lambda x: jnp.clip(x, -0.5, 0.7), (8,), 'any', True),
    ('max_pool', lambda x: nn.max_pool(x, (2, 2), (2, 2)), (4, 4, 2), 'any',
     True),
    ('avg_pool', lambda x: nn.avg_pool(x, (2, 2), (1, 1), 'SAME'), (4, 4, 2),
     'any', True),
    ('reduce_sum', lambda x: jnp.sum(x.reshape(2, 4), 1), (8,), 'any', True),
    ('reduce_max', lambda x: jnp.max(x.reshape(2, 4), 1), (8,), 'any', True),
    ('reduce_min', lambda x: jnp.min(x.reshape(2, 4), 1), (8,), 'any', True),
    ('mean', lambda x: jnp.mean(x, keepdims=True), (8,), 'any', True),
    ('cumsum', lambda x: jnp.cumsum(x), (8,), 'any', True),
    ('reshape_transpose', lambda x: x.reshape(2, 4).T, (8,), 'any', True),
    ('broadcast_squeeze',
     lambda x: jnp.broadcast_to(jnp.expand_dims(x, 0), (3, 8)).squeeze()[1],
     (8,), 'any', True),
    ('concatenate', lambda x: jnp.concatenate([x, _C, x[:2]]), (8,), 'any',
     True),
    ('slice_rev', lambda x: x[1:7:2][::-1], (8,), 'any', True),
    ('split', lambda x: jnp.split(x, [3])[1] * 2., (8,), 'any', True),
    ('stack', lambda x: jnp.stack([x[:4], _C[:4], x[4:]], axis=1), (8,), 'any', True),
    ('unstack', lambda x: jnp.unstack(x.reshape(2, 4))[1] * 2., (8,), 'any', True),
    ('pad', lambda x: jnp.pad(x, (2, 1), constant_values=0.5), (8,), 'any',
     True),
    ('dynamic_slice', lambda x: lax.dynamic_slice(x, (jnp.array(2),), (3,)),
     (8,), 'any', True),
    ('gather', lambda x: x[jnp.array([0, 3, 3, 7])], (8,), 'any', True),
    ('dynamic_update_slice',
     lambda x: lax.dynamic_update_slice(_C.astype(x.dtype), x[:3], (jnp.array(4),)), (8,),
     'any', True),
    ('scatter_add', lambda x: _C.astype(x.dtype).at[jnp.array([1, 1, 5])].add(x[:3]), (8,),
     'any', True),
    ('scatter_unique',
     lambda x: _C.astype(x.dtype).at[jnp.array([1, 5])].set(x[:2], unique_indices=True), (8,),
     'any', True),
    ('select_n_const', lambda x: jnp.where(_MASK, x, -x), (8,), 'any', True),
    ('select_n_bounded', lambda x: jnp.where(x > 0.5, x, -2 * x), (8,), 'any',
     False),
    ('leaky_relu', jax.nn.leaky_relu, (8,), 'any', False),
    ('compare', lambda x: (x >= 0.3).astype(jnp.float32) + (x < x[::-1]),
     (8,), 'any', False),
    ('equal', lambda x: (x == 0.5) + 2. * (x != x), (8,), 'any', False),
    ('convert_element_type',
     lambda x: x.astype(jnp.float16).astype(jnp.float32), (8,), 'any', True),
    ('reduce_precision', lambda x: lax.reduce_precision(x, 5, 10), (8,), 'any',
     True),
    ('stop_gradient', lax.stop_gradient, (8,), 'any', True),
    ('exp', jnp.exp, (8,), 'any', True),
    ('log', jnp.log, (8,), 'positive', True),
    ('log1p', jnp.log1p, (8,), 'positive', True),
    ('tanh', jnp.tanh, (8,), 'any', True),
    ('logistic', jax.nn.sigmoid, (8,), 'any', True),
    ('erf', lax.erf, (8,), 'any', True),
    ('sqrt', jnp.sqrt, (8,), 'positive', True),
    ('rsqrt', lax.rsqrt, (8,), 'positive', True),
    ('integer_pow_2', lambda x: x**2, (8,), 'any', True),
    ('integer_pow_3', lambda x: x**3, (8,), 'any', True),
    ('integer_pow_-1', lambda x: x**-1, (8,), 'nonzero', True),
    ('integer_pow_-2', lambda x: x**-2, (8,), 'nonzero', True),
    ('square', jnp.square, (8,), 'any', True),
    ('pow', lambda x: x**jnp.float32(1.5), (8,), 'positive', True),
    ('pow_negative_exponent', lambda x: x**jnp.float32(-0.5), (8,), 'positive', True),
    ('pow_mixed_exponents', lambda x: x**_EXPONENTS, (8,), 'any', False),
    ('gem_pooling', lambda x: jnp.mean(jnp.maximum(x.reshape(2, 4), 1e-6)**_GEM_P, 1)**(1 / _GEM_P),
     (8,), 'any', False),
    ('sort', lambda x: jnp.sort(x.reshape(2, 4), axis=1), (8,), 'any', True),
    ('logsumexp', lambda x: jax.nn.logsumexp(x.reshape(2, 4), axis=1), (8,), 'any', False),
    ('is_finite', lambda x: jnp.isfinite(x).astype(jnp.float32) * x, (8,), 'any', True),
    ('abs', jnp.abs, (8,), 'any', True),
    ('sign', jnp.sign, (8,), 'any', True),
    ('softplus', jax.nn.softplus, (8,), 'any', False),
    ('gelu', jax.nn.gelu, (8,), 'any', False),
    ('elu', jax.nn.elu, (8,), 'any', False),
    ('norm', lambda x: jnp.linalg.norm(x, keepdims=True), (8,), 'any', True),
    ('l2_normalize_naive', lambda x: x / jnp.linalg.norm(x), (8,), 'nonzero',
     False),
    ('l2_normalize', bounds.l2_normalize, (8,), 'any', False),
    ('jit', jax.jit(lambda x: jnp.tanh(2 * x)), (8,), 'any', True),
    ('checkpoint', jax.checkpoint(lambda x: jax.nn.relu(x) * 2), (8,), 'any',
     True),
    ('custom_vjp', _custom_vjp_double, (8,), 'any', True),
]


def _check_rule(fn, shape, kind, exact, *, seed, num_boxes, num_samples):
  """Soundness of one rule case on `num_boxes` random boxes at once."""
  lower, upper = _random_box(seed, (num_boxes,) + shape, kind)
  _check_sampled(jax.vmap(fn), lower, upper, seed=seed + 1,
                 num_samples=num_samples, exact=exact)


@pytest.mark.parametrize('name, fn, shape, kind, exact', RULE_CASES,
                         ids=[case[0] for case in RULE_CASES])
def test_rule_sound_on_samples(name, fn, shape, kind, exact):
  del name
  _check_rule(fn, shape, kind, exact, seed=0, num_boxes=3, num_samples=2000)


@pytest.mark.parametrize('name, fn, shape, kind, exact', RULE_CASES,
                         ids=[case[0] for case in RULE_CASES])
def test_rule_sound_in_float64(name, fn, shape, kind, exact):
  """The same cases in float64 to a tolerance of 1e-12 (certify.py's default dtype): a rule off by
  more than float64 rounding fails here, where float32's tolerance of 1e-5 could hide it."""
  del name
  with jax.enable_x64(True):
    lower, upper = (np.asarray(end, np.float64) for end in _random_box(0, (3,) + shape, kind))
    if kind == 'any':  # Ends that float32 cannot represent.
      lower, upper = lower - 1e-9, upper + 1e-9
    _check_sampled(jax.vmap(fn), jnp.asarray(lower), jnp.asarray(upper), seed=1,
                   num_samples=2000, exact=exact, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize('name, fn, shape, kind, exact', RULE_CASES,
                         ids=[case[0] for case in RULE_CASES])
def test_rule_sound_on_samples_sweep(name, fn, shape, kind, exact):
  del name
  for seed in range(10, 30, 2):
    _check_rule(fn, shape, kind, exact, seed=seed, num_boxes=16,
                num_samples=10000)


@pytest.mark.parametrize(
    'fn, lower, upper, expected_lower, expected_upper',
    [
        (jnp.abs, [-2.], [1.], [0.], [2.]),
        (jnp.abs, [-3.], [-1.], [1.], [3.]),
        (jnp.square, [-1.], [3.], [0.], [9.]),
        (lambda x: x * x, [-2.], [1.], [0.], [4.]),
        (lambda x: x**3, [-2.], [1.], [-8.], [1.]),
        (lambda x: x[:1] * x[1:], [-1., 3.], [2., 4.], [-4.], [8.]),
        (lambda x: x[:1] / x[1:], [1., 2.], [2., 4.], [0.25], [1.]),
        (lambda x: x[:1] - x[1:], [1., 2.], [2., 4.], [-3.], [0.]),
        (lax.rsqrt, [0.25], [4.], [0.5], [2.]),
        (jnp.sqrt, [-1.], [4.], [0.], [2.]),
        (lambda x: jnp.array([[1., -1.]]) @ x + 0.5, [0., 0.], [1., 2.],
         [-1.5], [1.5]),
        (lambda x: jax.nn.relu(jnp.array([[1., -1.]]) @ x), [0., 0.],
         [1., 2.], [0.], [1.]),
        (lambda x: x[:2].reshape(1, 2) @ x[2:].reshape(2, 1), [0., 0., 0., 0.],
         [2., 2., 2., 2.], [-4.], [8.]),  # centre/radius: 2 -+ 2 * 3.
        # An undecided predicate takes the hull of both cases (sound, loose).
        (lambda x: jnp.where(x > 0., x, 3.), [-1.], [2.], [-1.], [3.]),
        (lambda x: jnp.where(x > 0., x, 3.), [1.], [2.], [1.], [2.]),
        (lambda x: jnp.max(x, keepdims=True), [0., 1.], [2., 1.5], [1.], [2.]),
        (bounds.l2_normalize, [1., 1.], [2., 1.],
         [1 / math.sqrt(2), 1 / math.sqrt(5)],
         [2 / math.sqrt(5), 1 / math.sqrt(2)]),
        (bounds.l2_normalize, [0., 0.], [1., 1.], [0., 0.], [1., 1.]),
        (bounds.l2_normalize, [-1., 3.], [1., 4.],
         [-1 / math.sqrt(10), 3 / math.sqrt(10)],
         [1 / math.sqrt(10), 1.]),
    ])
def test_hand_computed(fn, lower, upper, expected_lower, expected_upper):
  out_lower, out_upper = interval(fn)(jnp.array(lower), jnp.array(upper))
  np.testing.assert_allclose(out_lower.ravel(), expected_lower, rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(out_upper.ravel(), expected_upper, rtol=1e-6,
                             atol=1e-6)


# --- CNNs: equality with a hand-written IBP (Kakizaki et al. Eqs. 15-16). ----------


class _CNN(nn.Module):
  """Conv/Dense/ReLU stack like Kakizaki et al.'s Small and Large encoders."""
  conv_specs: tuple  # (features, kernel, stride) per conv layer
  dense_features: tuple

  @nn.compact
  def __call__(self, x):
    for features, kernel, stride in self.conv_specs:
      x = nn.relu(nn.Conv(features, (kernel, kernel), (stride, stride),
                          padding=((1, 1), (1, 1)))(x))
    x = x.reshape(x.shape[0], -1)
    for i, features in enumerate(self.dense_features):
      x = nn.Dense(features)(x)
      if i < len(self.dense_features) - 1:
        x = nn.relu(x)
    return x


SMALL_CNN = _CNN(((8, 4, 2), (16, 4, 1)), (32, 16))
LARGE_CNN = _CNN(((8, 3, 1), (8, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 1)),
                 (64, 16))


def _handwritten_encoder_ibp(name, params, lower, upper, input_mean, input_std):
  """Kakizaki et al. Eqs. 15-16 by hand through the Small / Large CNN of `jaxcert.models`.

  The layers as documented in jaxcert/models/cnn.py: the input normalisation (x - mean) / std
  (an increasing affine map of each pixel), convolutions ('VALID' in Small, 'SAME' in Large) and
  dense layers in centre/radius form, ReLU on both ends, the embedding layer last.
  """

  def affine(lower, upper, apply_weight, layer):
    center, radius = (upper + lower) / 2, (upper - lower) / 2
    mid = apply_weight(center, layer['kernel']) + layer['bias']
    return mid - apply_weight(radius, jnp.abs(layer['kernel'])), mid + apply_weight(
        radius, jnp.abs(layer['kernel']))

  def conv(stride, padding):
    return lambda x, kernel: lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  if name == 'small_cnn':
    convs = [('conv1', 2, 'VALID'), ('conv2', 1, 'VALID')]
  else:
    convs = [(f'conv{i + 1}', stride, 'SAME') for i, stride in enumerate((1, 1, 2, 1, 1))]
  lower, upper = (lower - input_mean) / input_std, (upper - input_mean) / input_std
  for layer, stride, padding in convs:
    lower, upper = map(jax.nn.relu, affine(lower, upper, conv(stride, padding), params[layer]))
  lower, upper = (b.reshape(b.shape[0], -1) for b in (lower, upper))
  lower, upper = map(jax.nn.relu, affine(lower, upper, jnp.matmul, params['dense1']))
  return affine(lower, upper, jnp.matmul, params['embedding'])


@pytest.mark.parametrize('name', ['small_cnn', 'large_cnn'])
def test_kakizaki_cnns_equal_handwritten_ibp(name):
  """interval() of jaxcert's Small and Large CNNs = Kakizaki et al. Eqs. 15-16 written out, to 1e-5."""
  from jaxcert import models  # pylint: disable=g-import-not-at-top
  model = models.get_model(name, embedding_dim=16, input_mean=0.3, input_std=0.4)
  images = _uniform(0, (2, 28, 28, 1))
  variables = _init(model, images)
  lower, upper = input_box(images, 0.05)
  out_lower, out_upper = jax.jit(interval(lambda x: model.apply(variables, x)))(lower, upper)
  expected_lower, expected_upper = jax.jit(_handwritten_encoder_ibp, static_argnums=0)(
      name, variables['params'], lower, upper, 0.3, 0.4)
  scale = float(jnp.max(jnp.abs(expected_upper)))
  np.testing.assert_allclose(out_lower, expected_lower, rtol=1e-5, atol=1e-5 * scale)
  np.testing.assert_allclose(out_upper, expected_upper, rtol=1e-5, atol=1e-5 * scale)
  assert float(jnp.mean(out_upper - out_lower)) > 0


@pytest.mark.slow  # The encoders of jaxcert.models are attacked by default.
@pytest.mark.parametrize('module', [SMALL_CNN, LARGE_CNN],
                         ids=['small', 'large'])
def test_cnn_sound_under_sampling_and_pgd(module):
  image = _uniform(0, (1, 12, 12, 1))
  variables = _init(module, image)
  fn = lambda x: module.apply(variables, x)
  lower, upper = input_box(image, 0.03)
  out_bounds = _check_sampled(fn, lower, upper, seed=2, num_samples=1000)
  extremes, flat_lower, flat_upper = _check_pgd(fn, lower, upper, out_bounds)
  # PGD makes progress toward the bounds: pushed up ends above pushed down.
  assert np.all(extremes[:, 1] >= extremes[:, 0])
  assert np.all(flat_upper - flat_lower > 0)


# --- BatchNorm in inference mode and L2-normalisation heads. -----------------


class _BatchNormNet(nn.Module):
  normalize: str = 'none'  # 'none', 'naive' (x / ||x||) or 'tight'

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(6, (3, 3), (2, 2))(x)
    x = nn.BatchNorm(use_running_average=True)(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(8)(x)
    x = nn.BatchNorm(use_running_average=True)(x)
    if self.normalize == 'naive':
      return x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    if self.normalize == 'tight':
      return bounds.l2_normalize(x)
    return x


def _perturb_statistics(variables, seed=2):
  """Non-trivial BatchNorm statistics, scales and biases (init has var = 1,
  mean = 0 and, in ResNet blocks, scale = 0)."""
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    name = path[-1].key
    noise = jnp.asarray(rng.normal(size=leaf.shape), jnp.float32)
    if name == 'var':
      return 0.5 + jnp.abs(noise)
    if name in ('mean', 'bias'):
      return 0.3 * noise
    if name == 'scale':
      return 1. + 0.5 * noise  # Mostly positive, some negative.
    return leaf

  return jax.tree_util.tree_map_with_path(perturb, dict(variables))


def _batch_norm_variables(module, image):
  return _perturb_statistics(_init(module, image))


@pytest.mark.parametrize('normalize', [
    'none', pytest.param('naive', marks=pytest.mark.slow), 'tight'])
def test_batch_norm_and_l2_heads_sound(normalize):
  module = _BatchNormNet(normalize)
  image = _uniform(0, (1, 10, 10, 2))
  variables = _batch_norm_variables(module, image)
  fn = lambda x: module.apply(variables, x)
  lower, upper = input_box(image, 0.02)
  out_bounds = _check_sampled(fn, lower, upper, seed=3, num_samples=1000)
  _check_pgd(fn, lower, upper, out_bounds, num_coordinates=8)


def _l2_witnesses(lower, upper, index):
  """The points of the box where x_i/||x|| attains its max and its min.

  docs/bounds.md: x_i at its upper (lower) end, every other |x_j| at its
  smallest when that end is positive (negative), at its largest otherwise.
  """
  nearest_zero = jnp.clip(0., lower, upper)
  farthest = jnp.where(-lower > upper, lower, upper)
  maximiser = jnp.where(upper[index] > 0, nearest_zero, farthest)
  minimiser = jnp.where(lower[index] < 0, nearest_zero, farthest)
  return (maximiser.at[index].set(upper[index]),
          minimiser.at[index].set(lower[index]))


@functools.partial(jax.jit, static_argnames='epsilon')
def _l2_bounds_and_witness_values(lower, upper, samples, epsilon):
  """l2_normalize_bounds, g = x/sqrt(||x||^2 + epsilon) on samples and at the
  witness points."""
  normalize = lambda x: x / jnp.sqrt(jnp.sum(jnp.square(x)) + epsilon)
  out_lower, out_upper = bounds.l2_normalize_bounds(lower, upper,
                                                    epsilon=epsilon)
  # x = 0 (where the box contains it) is outside the domain if epsilon = 0.
  samples = jnp.where(jnp.linalg.norm(samples, axis=-1, keepdims=True) > 0,
                      samples, upper)
  indices = jnp.arange(lower.shape[0])
  maximisers, minimisers = jax.vmap(_l2_witnesses, (None, None, 0))(
      lower, upper, indices)
  witness_values = []
  for witnesses in (maximisers, minimisers):
    nonzero = jnp.linalg.norm(witnesses, axis=-1) > 0
    value = jax.vmap(normalize)(jnp.where(nonzero[:, None], witnesses, 1.))
    witness_values.append((value[indices, indices], nonzero))
  return (out_lower, out_upper), jax.vmap(normalize)(samples), witness_values


@pytest.mark.parametrize('dim, epsilon',
                         [(2, 0.), (3, 0.), (16, 0.), (3, 0.5), (16, 1e-12)])
def test_l2_normalize_bounds_sound_and_attained(dim, epsilon):
  for seed in range(12):
    lower, upper = _random_box(seed, (dim,))
    if seed % 4 == 0:  # Boxes that contain 0.
      lower, upper = lower - 3, upper + 3
    elif seed % 4 == 1:  # Small boxes near 0, where epsilon matters.
      lower, upper = 0.2 * lower, 0.2 * upper
    (out_lower, out_upper), values, witness_values = (
        _l2_bounds_and_witness_values(
            lower, upper, _sample_box(1000 + seed, lower, upper, 4000),
            epsilon))
    _assert_within(values, out_lower, out_upper, f'seed {seed}')
    # Each bound is attained at its witness point (where that point is not 0).
    for (attained, nonzero), bound in zip(witness_values,
                                          (out_upper, out_lower)):
      nonzero = np.asarray(nonzero) | (epsilon > 0)
      np.testing.assert_allclose(np.asarray(attained)[nonzero],
                                 np.asarray(bound)[nonzero], rtol=1e-5,
                                 atol=1e-6)


def test_l2_normalize_bounds_on_dense_grid():
  """In 2-D the extremes over a fine grid match the bounds (tightness)."""
  normalize = jax.vmap(lambda x: x / jnp.linalg.norm(x))
  for lower, upper in [([0.5, -1.], [2., 0.3]), ([-2., -1.], [-0.5, -0.2]),
                       ([0.1, 0.2], [0.1, 3.])]:
    lower, upper = jnp.array(lower), jnp.array(upper)
    grid = jnp.stack(jnp.meshgrid(jnp.linspace(lower[0], upper[0], 401),
                                  jnp.linspace(lower[1], upper[1], 401)),
                     -1).reshape(-1, 2)
    values = normalize(grid)
    out_lower, out_upper = bounds.l2_normalize_bounds(lower, upper)
    _assert_within(values, out_lower, out_upper, 'grid')
    np.testing.assert_allclose(values.max(0), out_upper, atol=1e-3)
    np.testing.assert_allclose(values.min(0), out_lower, atol=1e-3)


def test_l2_normalize_through_interpreter_uses_tight_rule():
  """`l2_normalize` inside a function gets l2_normalize_bounds, not the
  composition of square, sum, rsqrt and mul."""
  lower, upper = _random_box(3, (4, 6), 'nonzero')
  for epsilon in (1e-12, 0.5):
    fn = lambda x, epsilon=epsilon: bounds.l2_normalize(x, epsilon=epsilon)
    out_lower, out_upper = interval(fn)(lower, upper)
    expected = bounds.l2_normalize_bounds(lower, upper, epsilon=epsilon)
    np.testing.assert_allclose(out_lower, expected[0], rtol=1e-6)
    np.testing.assert_allclose(out_upper, expected[1], rtol=1e-6)
    composed = interval(
        lambda x, epsilon=epsilon: x * lax.rsqrt(
            jnp.sum(jnp.square(x), -1, keepdims=True) + epsilon))(lower, upper)
    assert np.all(out_lower >= composed[0] - 1e-6)
    assert np.all(out_upper <= composed[1] + 1e-6)
    assert float(jnp.sum(out_upper - out_lower)) < float(
        jnp.sum(composed[1] - composed[0]))
  with pytest.raises(ValueError, match='epsilon must be >= 0'):
    bounds.l2_normalize(lower, epsilon=-1.)


def test_l2_normalize_matches_plain_normalisation():
  x = _uniform(0, (3, 5), -1., 1.)
  np.testing.assert_allclose(bounds.l2_normalize(x),
                             x / jnp.linalg.norm(x, axis=-1, keepdims=True),
                             rtol=1e-6)
  np.testing.assert_allclose(bounds.l2_normalize(x, axis=0),
                             x / jnp.linalg.norm(x, axis=0, keepdims=True),
                             rtol=1e-6)
  np.testing.assert_allclose(
      bounds.l2_normalize(x, epsilon=0.5),
      x / jnp.sqrt(jnp.sum(x**2, -1, keepdims=True) + 0.5), rtol=1e-6)


# --- Interpreter behaviour. ---------------------------------------------------


def test_unknown_primitive_error_names_primitive_and_line():
  with pytest.raises(NotImplementedError, match=r'`sin`.*test_interval\.py'):
    interval(lambda x: jnp.sin(2 * x))(jnp.zeros(3), jnp.ones(3))
  # Inside a jitted library function (jnp.cumprod) the user's line is found on
  # the enclosing call.
  with pytest.raises(NotImplementedError, match=r'`cumprod`.*test_interval\.py'):
    interval(lambda x: jnp.cumprod(x + 1.))(jnp.zeros(3), jnp.ones(3))


def test_input_dependent_permutations_and_exponents_are_rejected():
  lower, upper = -jnp.ones(4), jnp.ones(4)
  with pytest.raises(NotImplementedError, match='payload operands'):
    interval(jnp.argsort)(lower, upper)
  with pytest.raises(NotImplementedError, match='exponent that does not depend'):
    interval(lambda x: jnp.float32(2.)**x)(lower, upper)


def test_concrete_subexpressions_stay_exact():
  constant = jnp.linspace(-1., 1., 3)
  # sin and sort have no rules: they are evaluated because they do not
  # depend on x.
  ignores_x = lambda x: jnp.sort(jnp.sin(constant)) * 3.
  out_lower, out_upper = interval(ignores_x)(jnp.zeros(3), jnp.ones(3))
  np.testing.assert_array_equal(out_lower, ignores_x(None))
  np.testing.assert_array_equal(out_upper, ignores_x(None))
  mixed = lambda x: (x + jnp.sin(constant), jnp.cos(constant))
  (low_sum, low_cos), (high_sum, high_cos) = interval(mixed)(
      jnp.zeros(3), jnp.ones(3))
  np.testing.assert_allclose(low_sum, jnp.sin(constant))
  np.testing.assert_allclose(high_sum, 1. + jnp.sin(constant))
  np.testing.assert_array_equal(low_cos, high_cos)


def test_degenerate_box_gives_exact_output():
  image = _uniform(0, (2, 8, 8, 1))
  variables = _init(SMALL_CNN, image)
  fn = lambda x: SMALL_CNN.apply(variables, x)
  out_lower, out_upper = jax.jit(interval(fn))(image, image)
  np.testing.assert_allclose(out_lower, fn(image), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out_upper, fn(image), rtol=1e-5, atol=1e-6)


def test_jit_vmap_and_batched_boxes_agree():
  images = _uniform(0, (3, 8, 8, 1))
  variables = _init(SMALL_CNN, images)
  bounded = interval(lambda x: SMALL_CNN.apply(variables, x))
  lower, upper = input_box(images, 0.02)
  batched = bounded(lower, upper)
  jitted = jax.jit(bounded)(lower, upper)
  mapped = jax.jit(jax.vmap(bounded))(lower[:, None], upper[:, None])
  jitted_single = jax.jit(bounded)
  per_image = [jitted_single(lower[i:i + 1], upper[i:i + 1])
               for i in range(3)]
  for end in range(2):
    np.testing.assert_allclose(jitted[end], batched[end], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(mapped[end][:, 0], batched[end], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(
        jnp.concatenate([bounds_i[end] for bounds_i in per_image]),
        batched[end], rtol=1e-5, atol=1e-6)


def test_bounds_differentiable_wrt_params():
  """Certified training differentiates the bound width w.r.t. parameters."""
  image = _uniform(0, (2, 8, 8, 1))
  variables = _init(SMALL_CNN, image)
  lower, upper = input_box(image, 0.05)

  def width(variables):
    out_lower, out_upper = interval(
        lambda x: SMALL_CNN.apply(variables, x))(lower, upper)
    return jnp.sum(out_upper - out_lower)

  grads = jax.jit(jax.grad(width))(variables)
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(leaf).all() for leaf in leaves)
  assert sum(float(jnp.abs(leaf).sum()) for leaf in leaves) > 0


def test_interval_bound_is_a_pytree():
  bound = IntervalBound(jnp.zeros(3), jnp.ones(3))
  doubled = jax.jit(lambda b: jax.tree.map(lambda v: 2 * v, b))(bound)
  assert isinstance(doubled, IntervalBound)
  np.testing.assert_array_equal(doubled.upper, 2 * jnp.ones(3))
  np.testing.assert_array_equal(bound.center, jnp.full(3, 0.5))
  np.testing.assert_array_equal(bound.radius, jnp.full(3, 0.5))
  assert bound.shape == (3,)


def test_pytree_outputs():
  lower, upper = interval(lambda x: {'a': x * 2, 'b': (x.sum(), 1.)})(
      jnp.zeros(2), jnp.ones(2))
  np.testing.assert_array_equal(lower['a'], [0., 0.])
  np.testing.assert_array_equal(upper['b'][0], 2.)
  assert float(lower['b'][1]) == float(upper['b'][1]) == 1.


# --- Errors for users. --------------------------------------------------------


def test_box_errors():
  with pytest.raises(ValueError, match='lower > upper'):
    interval(jnp.tanh)(jnp.ones(3), jnp.zeros(3))
  with pytest.raises(ValueError, match='same shape'):
    interval(jnp.tanh)(jnp.zeros(3), jnp.ones(4))
  with pytest.raises(ValueError, match='NaN'):
    interval(jnp.tanh)(jnp.full(3, jnp.nan), jnp.ones(3))
  with pytest.raises(ValueError, match='eps must be >= 0'):
    input_box(jnp.zeros(3), -0.1)
  with pytest.raises(ValueError, match=r'must lie in \[0.0, 1.0\]'):
    input_box(jnp.array([0.5, 1.5]), 0.1)
  with pytest.raises(ValueError, match='divisor interval contains 0'):
    interval(lambda x: 1. / x)(-jnp.ones(2), jnp.ones(2))
  # Under jit the divisor check cannot raise: the quotient is unbounded.
  out_lower, out_upper = jax.jit(interval(lambda x: 1. / x))(
      -jnp.ones(2), jnp.ones(2))
  assert np.all(np.isneginf(out_lower)) and np.all(np.isposinf(out_upper))


def test_input_box_clips_to_pixel_range():
  ulp = functools.partial(np.testing.assert_allclose, rtol=2e-7, atol=1e-7)  # ends rounded outwards
  lower, upper = input_box(jnp.array([0., 0.5, 1.]), 0.2)
  ulp(lower, [0., 0.3, 0.8])
  ulp(upper, [0.2, 0.7, 1.])
  assert lower[0] == 0 and upper[2] == 1  # clipped exactly
  lower, upper = input_box(jnp.array([0., 2.]), 0.5, clip=None)
  ulp(lower, [-0.5, 1.5])
  lower, upper = input_box(jnp.zeros((2, 1)), jnp.array([[0.1], [0.2]]))
  ulp(upper, [[0.1], [0.2]])
  # Under jit the value checks are skipped; the box is the same.
  jitted = jax.jit(input_box)(jnp.array([0., 0.5, 1.]), 0.2)
  ulp(jitted[0], [0., 0.3, 0.8])
  ulp(jitted[1], [0.2, 0.7, 1.])


def test_input_box_contains_the_real_box_despite_rounding():
  """The float box holds [x - eps, x + eps] in exact arithmetic, which round-to-nearest does not."""
  rng = np.random.default_rng(0)
  x = rng.uniform(size=2000).astype(np.float32)
  eps = np.float32(0.2)
  lower, upper = (np.asarray(end) for end in input_box(x, eps, clip=None))
  exact_lower = [Fraction(float(v)) - Fraction(float(eps)) for v in x]
  exact_upper = [Fraction(float(v)) + Fraction(float(eps)) for v in x]
  assert all(Fraction(float(l)) <= e for l, e in zip(lower, exact_lower))
  assert all(Fraction(float(u)) >= e for u, e in zip(upper, exact_upper))
  # Round-to-nearest alone lands inside the real box for some of these pixels.
  assert any(Fraction(float(l)) > e for l, e in zip(x - eps, exact_lower))
  assert any(Fraction(float(u)) < e for u, e in zip(x + eps, exact_upper))
  # At most one ulp wider, and exact where nothing is perturbed.
  assert np.all(np.nextafter(lower, np.float32(np.inf)) >= x - eps)
  zero_lower, zero_upper = input_box(x, 0.)
  np.testing.assert_array_equal(zero_lower, x)
  np.testing.assert_array_equal(zero_upper, x)
  # Differentiable as x -+ eps (nextafter itself has no derivative), also at eps = 0.
  for radius in (0., 0.1):
    d_lower_dx, d_upper_dx = jax.jacfwd(lambda v, r=radius: input_box(v, r, clip=None))(x[:3])
    np.testing.assert_array_equal(d_lower_dx, np.eye(3))
    np.testing.assert_array_equal(d_upper_dx, np.eye(3))
    d_lower_deps, d_upper_deps = jax.jacfwd(lambda r: input_box(x[:3], r, clip=None))(radius)
    np.testing.assert_array_equal(d_lower_deps, -np.ones(3))
    np.testing.assert_array_equal(d_upper_deps, np.ones(3))


# --- Encoders of jaxcert.models. ----------------------------------------------


def _encoder(name, image_shape, l2_normalize, dtype=jnp.float32, **options):
  """`embed(x)` of the jaxcert.models encoder `name`, statistics perturbed, variables in `dtype`."""
  from jaxcert import models  # pylint: disable=g-import-not-at-top
  model = models.get_model(name, embedding_dim=16, l2_normalize=l2_normalize,
                           input_mean=0.4, input_std=0.3, **options)
  # Random variables of the structure `models.init_variables` returns, drawn
  # with numpy: compiling the models' initialisers takes 4-15 s per model.
  variables = _perturb_statistics(_init(model, jnp.zeros(image_shape)))
  variables = jax.tree.map(lambda leaf: leaf.astype(dtype), variables)
  return lambda x: model.apply(variables, x)


# Default: small images and a narrow ResNet-18 to stay fast on CPU; the two
# largest encoders in one variant each (all variants in the slow test below).
@pytest.mark.parametrize('name, image_shape, options, l2_normalize', [
    ('linear', (1, 12, 12, 1), {}, False),
    ('linear', (1, 12, 12, 1), {}, True),
    ('mlp', (1, 12, 12, 1), {}, False),
    ('mlp', (1, 12, 12, 1), {}, True),
    ('small_cnn', (1, 12, 12, 1), {}, False),
    ('small_cnn', (1, 12, 12, 1), {}, True),
    ('large_cnn', (1, 12, 12, 1), {}, False),
    ('resnet18', (1, 8, 8, 3), {'num_filters': 8}, True),
], ids=['linear', 'linear-l2', 'mlp', 'mlp-l2', 'small_cnn', 'small_cnn-l2',
        'large_cnn', 'resnet18_narrow-l2'])
def test_encoder_sound(name, image_shape, options, l2_normalize):
  fn = _encoder(name, image_shape, l2_normalize, **options)
  lower, upper = input_box(_uniform(1, image_shape), 0.02)
  out_bounds = _check_sampled(fn, lower, upper, seed=2, num_samples=256)
  if name != 'resnet18':  # Compiling PGD through it takes long: slow test.
    _check_pgd(fn, lower, upper, out_bounds, num_coordinates=2)


@pytest.mark.parametrize('name, image_shape, options', [
    ('small_cnn', (1, 12, 12, 1), {}),
    ('resnet18', (1, 8, 8, 3), {'num_filters': 8}),
], ids=['small_cnn-l2', 'resnet18_narrow-l2'])
def test_encoder_sound_in_float64(name, image_shape, options):
  """Encoders in float64 (certify.py's default, weights cast exactly), BatchNorm and L2 head
  included: sampled outputs within the bounds to 1e-10 of the magnitudes, 1e5 times tighter than
  the float32 tests allow."""
  with jax.enable_x64(True):
    fn = _encoder(name, image_shape, True, dtype=jnp.float64, **options)
    lower, upper = input_box(jnp.asarray(_uniform(1, image_shape), jnp.float64), 0.02)
    out_lower, _ = _check_sampled(fn, lower, upper, seed=2, num_samples=256, rtol=1e-10)
    assert out_lower.dtype == jnp.float64


@pytest.mark.slow
@pytest.mark.parametrize('l2_normalize', [False, True], ids=['plain', 'l2'])
@pytest.mark.parametrize('name, image_shape, eps', [
    ('linear', (1, 28, 28, 1), 0.1),
    ('mlp', (1, 28, 28, 1), 0.1),
    ('small_cnn', (1, 28, 28, 1), 0.1),
    ('large_cnn', (1, 28, 28, 1), 0.02),
    ('resnet18', (1, 32, 32, 3), 2 / 255),
])
def test_encoder_sound_full_size(name, image_shape, eps, l2_normalize):
  """Paper-size inputs, every embedding coordinate pushed up and down."""
  fn = _encoder(name, image_shape, l2_normalize)
  lower, upper = input_box(_uniform(1, image_shape), eps)
  out_bounds = _check_sampled(fn, lower, upper, seed=2, num_samples=2000)
  _check_pgd(fn, lower, upper, out_bounds, num_coordinates=16)


# --- Soundness regressions: NaN, infinities, overflow, casts, vmap, dtypes. ----


def _assert_contains(fn, lower, upper, points, rtol=0.):
  """`interval(fn)` over [lower, upper] contains fn at each point whose value is not NaN (up to
  `rtol` of its magnitude)."""
  out_lower, out_upper = interval(fn)(jnp.asarray(lower), jnp.asarray(upper))
  out_lower, out_upper = np.asarray(out_lower), np.asarray(out_upper)
  assert not np.isnan(out_lower).any() and not np.isnan(out_upper).any(), (out_lower, out_upper)
  assert np.all(out_lower <= out_upper), (out_lower, out_upper)
  for point in points:
    value = np.asarray(fn(jnp.asarray(point, jnp.asarray(lower).dtype)))
    defined = ~np.isnan(value)
    slack = rtol * np.abs(np.where(np.isfinite(value), value, 0))
    assert np.all((out_lower <= value + slack)[defined] & (value <= out_upper + slack)[defined]), (
        point, value, out_lower, out_upper)
  return out_lower, out_upper


@pytest.mark.parametrize('fn', [
    lambda x: jnp.where(jnp.isnan(jnp.sqrt(x)), 100., jnp.sqrt(x)),
    lambda x: jnp.nan_to_num(jnp.sqrt(x), nan=7.),
    lambda x: jnp.where(jnp.isfinite(jnp.sqrt(x)), 1., 0.),
    lambda x: jnp.where(jnp.sqrt(x) >= 0, 1., 0.),
    lambda x: jnp.where(jnp.log(x) < 5., 1., 0.),
    lambda x: jnp.where(x**jnp.float32(0.5) == x**jnp.float32(0.5), 1., 0.),
    lambda x: jnp.sort(jnp.concatenate([jnp.sqrt(x), jnp.array([5., 6.])])),
], ids=['isnan', 'nan_to_num', 'isfinite', 'ge', 'log', 'pow_eq_self', 'sort'])
def test_values_that_may_be_nan_make_comparisons_unknown(fn):
  """Outside sqrt's/log's/pow's domain the value is NaN: comparisons, isnan and isfinite of it
  are then undecided, and where/sort see both possibilities (issue case 1)."""
  _assert_contains(fn, [-1.], [4.], [[-1.], [-0.5], [0.], [1.], [4.]])


@pytest.mark.parametrize('fn, lower, upper, points', [
    (lambda x: jnp.log(x) @ jnp.ones((1, 1)), [0.], [1.], [[0.], [0.5], [1.]]),
    (lambda x: jnp.where(jnp.log(x) @ jnp.ones((1, 1)) > -1., 1., 0.), [0.], [1.],
     [[0.], [0.5], [1.]]),
    (lambda x: x * lax.rsqrt(x), [0.], [1.], [[0.], [0.25], [1.]]),
    (lambda x: jnp.where(x * lax.rsqrt(x) > 0.3, 1., 0.), [0.], [1.], [[0.], [0.25], [1.]]),
    (lambda x: jnp.log(x) - jnp.log(x[::-1]), [0., 0.], [1., 1.], [[0., 0.5], [1., 0.]]),
    (lambda x: jnp.where(jnp.log(x) - jnp.log(x) < 1., 0., 1.), [0.], [1.], [[0.], [1.]]),
    (lambda x: jnp.sum(jnp.log(x) * jnp.array([1., -1.])), [0., 0.], [1., 1.],
     [[0., 0.5], [0.5, 0.]]),
], ids=['dot_inf', 'compare_dot_inf', 'zero_times_inf', 'compare_zero_times_inf',
        'inf_minus_inf', 'same_operand_inf_minus_inf', 'sum_of_opposite_infinities'])
def test_infinite_ends_never_become_nan_bounds(fn, lower, upper, points):
  """inf - inf and 0 * inf inside a rule give infinite ends, never NaN ends, and the NaN values
  they can produce keep later comparisons undecided (issue case 2)."""
  _assert_contains(fn, lower, upper, points)


def test_centre_radius_form_does_not_overflow_for_finite_boxes():
  """`x @ 1` over [2e38, 3e38] and `exp(x) @ 1` over [88, 88.5] are finite (issue case 3)."""
  # Round-to-nearest centre and radius: ends within an ulp or two of the real ones.
  out_lower, out_upper = _assert_contains(lambda x: x @ jnp.ones((1, 1)), [2e38], [3e38],
                                          [[2e38], [3e38]], rtol=3e-7)
  np.testing.assert_allclose([out_lower[0], out_upper[0]], [2e38, 3e38], rtol=1e-6)
  out_lower, out_upper = _assert_contains(lambda x: jnp.exp(x) @ jnp.ones((1, 1)), [88.], [88.5],
                                          [[88.], [88.5]], rtol=3e-7)
  assert np.isfinite(out_lower).all() and np.isfinite(out_upper).all()
  # Both operands bounded.
  out_lower, out_upper = _assert_contains(
      lambda x: x[:1].reshape(1, 1) @ x[1:].reshape(1, 1), [2e38, 0.5], [3e38, 1.],
      [[2e38, 0.5], [3e38, 1.]], rtol=3e-7)
  assert np.isfinite(out_upper).all()


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_l2_normalize_bounds_at_extreme_magnitudes(dtype):
  """Squares of 1e20 overflow and of 1e-30 underflow in float32: the tight rule scales first
  (issue case 4). The reference is the exact value of x / ||x||."""
  cases = [  # (lower, upper, epsilon, points)
      ([1e18, 0.], [1e20, 0.], 1e-12, [[1e18, 0.], [1e20, 0.]]),
      ([1e-30, -1e-30], [1e-30, 1e-30], 0., [[1e-30, 0.], [1e-30, 1e-30], [1e-30, -1e-30]]),
      ([1e-30, -1e10], [1e-30, 1e10], 0., [[1e-30, 0.], [1e-30, 1e10]]),
      ([1e-30, 1e-30, -3e30], [1e30, 1e-29, 3e30], 1e-12,
       [[1e-30, 1e-30, 0.], [1e30, 1e-29, 3e30], [1e-30, 1e-29, -3e30]]),
      ([-1e38, 1e-38], [1e38, 2e-38], 0., [[0., 1e-38], [1e38, 2e-38], [-1e38, 1e-38]]),
  ]
  with jax.enable_x64(dtype == 'float64'):
    for lower, upper, epsilon, points in cases:
      out_lower, out_upper = (np.asarray(end, np.float64) for end in bounds.l2_normalize_bounds(
          jnp.asarray(lower, dtype), jnp.asarray(upper, dtype), epsilon=epsilon))
      assert np.all(out_lower <= out_upper), (lower, upper, out_lower, out_upper)
      for point in points:
        exact = np.asarray([float(Fraction(v) / Fraction(math.sqrt(
            float(sum(Fraction(w)**2 for w in point) + Fraction(epsilon))))) for v in point])
        slack = 1e-6 if dtype == 'float32' else 1e-14
        assert np.all(out_lower <= exact + slack) and np.all(exact <= out_upper + slack), (
            lower, upper, point, exact, out_lower, out_upper)


def test_l2_normalize_under_vmap_normalises_the_right_axis():
  """Under `jax.vmap` the named call's body reduces over a shifted axis: the tight rule must not
  reuse the unbatched axis (issue case 5)."""
  fn = jax.vmap(lambda v: bounds.l2_normalize(v, axis=0))
  x = jnp.asarray([[1., 2., 3.], [4., 5., 6.]])
  out_lower, out_upper = interval(fn)(x, x)
  np.testing.assert_allclose(out_lower, fn(x), rtol=1e-6)
  np.testing.assert_allclose(out_upper, fn(x), rtol=1e-6)
  lower, upper = _random_box(5, (3, 4))
  _check_sampled(jax.vmap(lambda v: bounds.l2_normalize(v, axis=0, epsilon=0.1)), lower, upper,
                 seed=6)


@pytest.mark.parametrize('fn, lower, upper, points', [
    (lambda x: x.astype(jnp.int32).astype(jnp.int8).astype(jnp.float32), [100.], [200.],
     [[100.], [120.], [127.], [128.], [200.]]),
    (lambda x: x.astype(jnp.uint8).astype(jnp.float32), [-1.], [1.], [[-1.], [-0.5], [0.], [1.]]),
    (lambda x: x.astype(jnp.uint8).astype(jnp.float32), [250.], [300.], [[250.], [255.], [300.]]),
    (lambda x: x.astype(jnp.int32).astype(jnp.uint32).astype(jnp.float32), [-2.], [2.],
     [[-2.], [0.], [2.]]),
    (lambda x: (x.astype(jnp.int32) + jnp.int32(2**31 - 10)).astype(jnp.float32), [0.], [20.],
     [[0.], [9.], [10.], [20.]]),
    (lambda x: (x.astype(jnp.int32) * jnp.int32(2**20)).astype(jnp.float32), [0.], [4096.],
     [[0.], [2047.], [2048.], [4096.]]),
    (lambda x: jnp.sum(x.astype(jnp.int8)).astype(jnp.float32), [0., 0., 0.], [100., 100., 100.],
     [[0., 0., 0.], [100., 100., 100.], [50., 50., 50.]]),
    (lambda x: (jnp.uint8(3) - x.astype(jnp.uint8)).astype(jnp.float32), [0.], [10.],
     [[0.], [3.], [4.], [10.]]),
    (lambda x: jnp.where(jnp.sqrt(x).astype(jnp.int32) > 0, 1., 0.), [-1.], [4.], [[-1.], [4.]]),
], ids=['int32_to_int8', 'float_to_uint8_negative', 'float_to_uint8_overflow',
        'int32_to_uint32', 'int32_add_overflow', 'int32_mul_overflow', 'int8_sum_overflow',
        'uint8_sub_wraps', 'nan_to_int'])
def test_integer_casts_and_overflow_are_sound(fn, lower, upper, points):
  """Narrowing casts wrap and integer arithmetic overflows: bounds must cover the wrapped values
  (issue case 6)."""
  _assert_contains(fn, lower, upper, points)


def test_integer_operations_without_a_sound_rule_are_rejected():
  with pytest.raises(NotImplementedError, match='integer.*`div`.*cast'):
    interval(lambda x: x.astype(jnp.int32) // 3)(jnp.zeros(2), jnp.ones(2))
  with pytest.raises(NotImplementedError, match='integer.*`dot_general`'):
    interval(lambda x: x.astype(jnp.int32) @ jnp.ones((2, 2), jnp.int32))(jnp.zeros(2), jnp.ones(2))


def test_inverted_rule_output_is_an_error():
  """`interval` checks every rule's output: lower <= upper, no NaN (issue case 6)."""
  from jaxcert.bounds.interval import RULES  # pylint: disable=g-import-not-at-top
  broken = jax.extend.core.Primitive('broken_for_test')
  broken.def_impl(lambda x: x)
  broken.def_abstract_eval(lambda x: x)
  RULES[broken] = lambda x: IntervalBound(x.upper, x.lower)
  try:
    with pytest.raises(RuntimeError, match='broken_for_test.*lower > upper.*bug in the rule'):
      interval(broken.bind)(jnp.zeros(2), jnp.ones(2))
  finally:
    del RULES[broken]


def test_float64_encoder_is_the_real_function_of_its_parameters():
  """In float64 the input normalisation stays in float64: a linear encoder's output over a
  zero-width box equals the exact rational value to float64 rounding (issue case 7), and
  float32 evaluation still works as before."""
  from jaxcert import models  # pylint: disable=g-import-not-at-top
  model = models.get_model('linear', embedding_dim=4, input_mean=0.4, input_std=0.3)
  image = np.random.default_rng(0).uniform(size=(1, 2, 2, 1)).astype(np.float32)
  variables = _init(model, jnp.asarray(image))
  kernel = np.asarray(variables['params']['embedding']['kernel'], np.float64)
  normalized = [(Fraction(float(v)) - Fraction(0.4)) / Fraction(0.3) for v in image.ravel()]
  exact = [sum(n * Fraction(float(kernel[i, j])) for i, n in enumerate(normalized))
           for j in range(4)]  # The linear encoder has no bias.
  with jax.enable_x64(True):
    variables64 = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float64), variables)
    x = jnp.asarray(image, jnp.float64)
    out_lower, out_upper = interval(lambda v: model.apply(variables64, v))(x, x)
    assert out_lower.dtype == jnp.float64
  for end in (out_lower, out_upper):
    error = max(abs(Fraction(float(v)) - e) for v, e in zip(np.asarray(end).ravel(), exact))
    assert error < 1e-13, float(error)
  float32_output = model.apply(variables, jnp.asarray(image))
  assert float32_output.dtype == jnp.float32
  np.testing.assert_allclose(float32_output.ravel(), [float(e) for e in exact], rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize('x, eps', [(3 / 255, 0.01), (0.5, 0.1), (0.7, 1 / 3), (0.25, 0.3)])
def test_input_box_contains_the_real_box_for_python_float_eps(x, eps):
  """A Python-float eps is not rounded to float32 before the outward step (issue case 8)."""
  x32 = np.float32(x)
  lower, upper = (np.asarray(end) for end in input_box(jnp.asarray([x32]), eps))
  assert lower.dtype == np.float32
  exact_lower = max(Fraction(float(x32)) - Fraction(eps), Fraction(0))
  exact_upper = min(Fraction(float(x32)) + Fraction(eps), Fraction(1))
  assert Fraction(float(lower[0])) <= exact_lower
  assert Fraction(float(upper[0])) >= exact_upper
  # Still within a few ulps of the real ends.
  assert float(exact_lower - Fraction(float(lower[0]))) <= 4 * np.spacing(np.float32(1))
  with jax.enable_x64(True):  # float64 boxes too.
    lower64, upper64 = input_box(jnp.asarray([float(x32)], jnp.float64), eps)
    assert Fraction(float(lower64[0])) <= exact_lower
    assert Fraction(float(upper64[0])) >= exact_upper


def test_arithmetic_narrower_than_lists_the_rounding_steps_on_the_inputs():
  """What `check_computes_in` refuses: input-dependent steps that round in a narrower float dtype;
  not casts, sorting or data movement (exact in any dtype), nor arithmetic on constants alone."""
  from jaxcert.bounds.interval import arithmetic_narrower_than  # pylint: disable=g-import-not-at-top
  weight = jnp.arange(9.).reshape(3, 3).astype(jnp.bfloat16)

  def fn(x):
    doubled = weight * 2  # constants only: the model computes the same
    inner = jax.jit(lambda h: jnp.tanh(h))(x.astype(jnp.float16)).astype(x.dtype)
    return ((x.astype(jnp.bfloat16) @ doubled).astype(x.dtype) + inner
            + jnp.sort(x.astype(jnp.float16)).astype(x.dtype)[::-1])

  steps = arithmetic_narrower_than(fn, jnp.float32, jax.ShapeDtypeStruct((3,), jnp.float32))
  assert [step.split(' at ')[0] for step in steps] == ['`tanh` in float16',
                                                       '`dot_general` in bfloat16']
  assert all('test_interval.py' in step for step in steps)
  assert arithmetic_narrower_than(lambda x: jnp.sort(x) * 2, jnp.float32, jnp.ones(3)) == []
  in_a_loop = lambda x: lax.fori_loop(
      0, 3, lambda _, h: (h.astype(jnp.bfloat16) * 3).astype(h.dtype), x)
  assert [step.split(' at ')[0] for step in arithmetic_narrower_than(
      in_a_loop, jnp.float32, jnp.ones(3))] == ['`mul` in bfloat16']
