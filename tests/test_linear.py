"""Tests of the CROWN-family linear bounds (jaxcert.bounds.linear).

Soundness: sampled points, box corners and the ends of sign-gradient (PGD) ascent toward each
bound must lie inside it; the bounds are never looser than IBP; on a 2-layer ReLU network they
equal a CROWN bound derived by hand in numpy; on standard (not IBP-trained) networks CROWN is
strictly tighter than IBP.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from jaxcert import models
from jaxcert.bounds import input_box
from jaxcert.bounds import interval
from jaxcert.bounds import l2_normalize
from jaxcert.bounds import linear_rules
from jaxcert.bounds.linear import linear_bounds
from jaxcert.bounds.linear import linear_spec_bounds
from jaxcert.bounds.linear import linear_spec_lower_bounds
from jaxcert.bounds.linear import METHODS

TOLERANCE_64 = 1e-10


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


def _random_box(rng, batch, shape, eps):
  center = rng.normal(size=(batch,) + shape)
  return center - eps, center + eps


def _sample(rng, lower, upper, count):
  """`count` uniform points per box, plus the two ends: (count + 2, batch, ...)."""
  lower, upper = np.asarray(lower), np.asarray(upper)
  uniform = rng.uniform(size=(count,) + lower.shape)
  return np.concatenate([lower[None], upper[None], lower + uniform * (upper - lower)])


def _pgd_ends(fn, lower, upper, num_outputs, steps=30):
  """Ends of projected sign-gradient ascent on `+-fn(x)[:, i]` for each output i.

  Returns (2 * num_outputs, batch, ...): for row 2i the maximiser of output i, for 2i + 1 its
  minimiser, started at the box centre.
  """
  lower, upper = jnp.asarray(lower), jnp.asarray(upper)
  step_size = (upper - lower) / 8

  def ascend(direction):
    objective = lambda x: jnp.sum(fn(x) @ direction)

    def step(_, x):
      return jnp.clip(x + step_size * jnp.sign(jax.grad(objective)(x)), lower, upper)

    return jax.lax.fori_loop(0, steps, step, (lower + upper) / 2)

  directions = jnp.concatenate([jnp.eye(num_outputs), -jnp.eye(num_outputs)])
  directions = directions.reshape(2, num_outputs, num_outputs).transpose(1, 0, 2).reshape(
      2 * num_outputs, num_outputs)
  return jax.jit(jax.vmap(ascend))(directions.astype(lower.dtype))


def _assert_inside(fn, points, out_lower, out_upper, tolerance):
  values = np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(points)))
  scale = 1 + np.abs(values)
  assert np.all(values >= np.asarray(out_lower)[None] - tolerance * scale), (
      np.min(values - np.asarray(out_lower)[None]))
  assert np.all(values <= np.asarray(out_upper)[None] + tolerance * scale), (
      np.min(np.asarray(out_upper)[None] - values))


def _assert_sound(fn, lower, upper, num_outputs, *, tolerance=TOLERANCE_64, samples=500,
                  methods=METHODS, seed=0):
  """Every method's bounds contain samples and PGD ends, and lie inside IBP's."""
  rng = np.random.default_rng(seed)
  ibp_lower, ibp_upper = interval(fn)(lower, upper)
  points = np.concatenate([_sample(rng, lower, upper, samples),
                           np.asarray(_pgd_ends(fn, lower, upper, num_outputs))])
  widths = {}
  for method in methods:
    out_lower, out_upper = jax.jit(linear_bounds(fn, method))(lower, upper)
    _assert_inside(fn, points, out_lower, out_upper, tolerance)
    assert np.all(np.asarray(out_lower) >= np.asarray(ibp_lower))
    assert np.all(np.asarray(out_upper) <= np.asarray(ibp_upper))
    assert np.all(np.asarray(out_lower) <= np.asarray(out_upper))
    widths[method] = float(np.mean(np.asarray(out_upper) - np.asarray(out_lower)))
  widths['ibp'] = float(np.mean(np.asarray(ibp_upper) - np.asarray(ibp_lower)))
  return widths


def _mlp(rng, sizes, activation=jax.nn.relu):
  weights = [(rng.normal(size=(m, n)) / np.sqrt(m), rng.normal(size=n) * 0.1)
             for m, n in zip(sizes[:-1], sizes[1:])]

  def fn(x):
    for index, (w, b) in enumerate(weights):
      x = x @ w + b
      if index < len(weights) - 1:
        x = activation(x)
    return x

  return fn, weights


def test_unknown_method_lists_valid_ones():
  with pytest.raises(ValueError, match='crown_ibp'):
    linear_bounds(lambda x: x, 'alpha')
  with pytest.raises(ValueError, match='crown_ibp'):
    linear_spec_bounds(lambda x: x, 'beta')


def test_inverted_box_is_an_error():
  with pytest.raises(ValueError, match='lower > upper'):
    linear_bounds(lambda x: 2 * x)(jnp.ones((1, 2)), jnp.zeros((1, 2)))


def test_primitive_without_rule_is_named():
  with pytest.raises(NotImplementedError, match='`sin`'):
    linear_bounds(lambda x: jnp.sin(x) @ jnp.ones((2, 1)))(jnp.zeros((1, 2)), jnp.ones((1, 2)))


def test_relu_mlp_sound_and_tighter_than_ibp():
  rng = np.random.default_rng(0)
  fn, _ = _mlp(rng, [6, 32, 32, 32, 4])
  lower, upper = _random_box(rng, 3, (6,), 0.2)
  widths = _assert_sound(fn, lower, upper, 4)
  assert widths['crown'] < widths['ibp']
  assert widths['crown_ibp'] < widths['ibp']
  assert widths['alpha_crown'] < widths['crown'] < widths['crown_ibp']


def _small_conv_net(rng, outputs: int = 3, dtype=np.float64):
  """conv (3x3, 4 channels) -> ReLU -> conv (3x3 stride 2, 6 channels) -> ReLU -> dense -> ReLU
  -> dense: patches intermediate bounds, then three ReLU steps with optimisable slopes; 10x10x1
  images; weights in `dtype` (float32 weights compute in float64 on float64 inputs)."""
  kernels = [(rng.normal(size=(3, 3, 1, 4)) / 2).astype(dtype),
             (rng.normal(size=(3, 3, 4, 6)) / 4).astype(dtype)]
  dense = [(rng.normal(size=(6 * 3 * 3, 16)) / 6).astype(dtype),
           (rng.normal(size=(16, outputs)) / 3).astype(dtype)]

  def fn(x):
    for kernel, stride in zip(kernels, (1, 2)):
      x = jax.nn.relu(jax.lax.conv_general_dilated(x, jnp.asarray(kernel, x.dtype),
                                                   (stride, stride), 'VALID',
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    return jax.nn.relu(x.reshape(x.shape[0], -1) @ dense[0]) @ dense[1]

  return fn


def test_alpha_crown_sound_for_any_slopes_in_the_unit_interval():
  """alpha-CROWN's lower lines `alpha (x - t) + t` of a straddling ReLU are valid for every alpha in
  [0, 1], so the backward pass with arbitrary slopes (random, all 0, all 1; one per row and
  neuron) must bound every sampled point and PGD end, whatever the optimiser would pick."""
  from jaxcert.bounds import linear  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(11)
  fn = _small_conv_net(rng)
  lower, upper = _random_box(rng, 1, (10, 10, 1), 0.15)
  points = np.concatenate([_sample(rng, lower, upper, 300),
                           np.asarray(_pgd_ends(fn, lower, upper, 3))])
  values = np.asarray(jax.vmap(fn)(jnp.asarray(points)))[:, 0]
  graph, (output,), _ = linear._example_graph(fn, 'crown_ibp', linear.DEFAULT_ROW_CHUNK, True,
                                              jnp.asarray(lower), jnp.asarray(upper))
  optimizable = {position: step.relaxation.optimizable
                 for position, step in enumerate(graph.steps)
                 if step.kind == 'relaxed' and step.relaxation.optimizable is not None}
  assert len(optimizable) == 3 and all(np.asarray(m).any() for m in optimizable.values())
  rows = jnp.eye(3).reshape(3, 1, 3)
  backward = jax.jit(lambda alphas: linear._backward(graph, output, rows, symmetric=True,
                                                     alphas=alphas))
  crown = np.asarray(backward({position: jnp.where(mask, graph.steps[position].relaxation
                                                   .lower_slopes[0], 0)[None].repeat(6, 0)
                               for position, mask in optimizable.items()}))
  np.testing.assert_allclose(crown, jax.jit(lambda: linear._backward(graph, output, rows,
                                                                      symmetric=True))(),
                             rtol=0, atol=TOLERANCE_64)  # CROWN's slopes give CROWN's bounds
  for draw in (lambda shape: rng.uniform(size=shape), np.zeros, np.ones):
    bounds = np.asarray(backward({position: jnp.asarray(draw((6,) + mask.shape))
                                  for position, mask in optimizable.items()}))
    out_lower, out_upper = bounds[:3], -bounds[3:]
    assert np.all(values >= out_lower - TOLERANCE_64), np.min(values - out_lower)
    assert np.all(values <= out_upper + TOLERANCE_64), np.min(out_upper - values)
    assert not np.allclose(bounds, crown)  # the slopes were used


@pytest.mark.slow
def test_alpha_crown_never_looser_than_crown_and_tighter_on_a_cnn():
  """The optimised slopes start at CROWN's and the best bound is kept: never looser than CROWN,
  strictly tighter on average on an untrained CNN (patches intermediate bounds), and sound at
  samples and PGD ends. (The MLP of `test_relu_mlp_sound_and_tighter_than_ibp` checks the same
  on dense layers, on average.)"""
  rng = np.random.default_rng(12)
  fn = _small_conv_net(rng)
  lower, upper = _random_box(rng, 2, (10, 10, 1), 0.15)
  points = np.concatenate([_sample(rng, lower, upper, 200),
                           np.asarray(_pgd_ends(fn, lower, upper, 3))])
  crown_lower, crown_upper = (np.asarray(b) for b in
                              jax.jit(linear_bounds(fn, 'crown'))(lower, upper))
  alpha_lower, alpha_upper = (np.asarray(b) for b in
                              jax.jit(linear_bounds(fn, 'alpha_crown'))(lower, upper))
  _assert_inside(fn, points, alpha_lower, alpha_upper, TOLERANCE_64)
  assert np.all(alpha_lower >= crown_lower - TOLERANCE_64)
  assert np.all(alpha_upper <= crown_upper + TOLERANCE_64)
  assert np.mean(alpha_upper - alpha_lower) < np.mean(crown_upper - crown_lower)


def test_two_layer_relu_equals_hand_derived_crown():
  """CROWN on `W2 relu(W1 x + b1) + b2`, derived by hand (Zhang et al. 2018, Theorem 3.2).

  Pre-activation bounds of a single affine layer are exact; unstable neurons get the upper line
  u (z - l) / (u - l) and the lower line a z with a = 1 if u >= -l else 0.
  """
  rng = np.random.default_rng(1)
  fn, ((w1, b1), (w2, b2)) = _mlp(rng, [5, 40, 3])
  lower, upper = _random_box(rng, 2, (5,), 0.5)
  for index in range(2):
    l, u = lower[index], upper[index]
    center, radius = (l + u) / 2, (u - l) / 2
    z_lower = center @ w1 + b1 - radius @ np.abs(w1)
    z_upper = center @ w1 + b1 + radius @ np.abs(w1)
    unstable = (z_lower < 0) & (z_upper > 0)
    assert unstable.any()
    upper_slope = np.where(z_lower >= 0, 1., np.where(z_upper <= 0, 0., z_upper / (
        np.where(unstable, z_upper - z_lower, 1))))
    upper_offset = np.where(unstable, -upper_slope * z_lower, 0.)
    lower_slope = np.where(z_lower >= 0, 1., np.where(z_upper <= 0, 0., (z_upper >= -z_lower) * 1.))
    expected_lower, expected_upper = [], []
    for sign in (1., -1.):
      a = sign * w2.T  # (outputs, hidden): the rows whose minimum is wanted
      slope = np.where(a > 0, lower_slope, upper_slope)
      offset = np.where(a > 0, 0., upper_offset)
      coeffs = a * slope  # on z
      const = (coeffs * 1).dot(b1) + (a * offset).sum(1) + sign * b2
      x_coeffs = coeffs @ w1.T
      bound = const + np.where(x_coeffs > 0, x_coeffs * l, x_coeffs * u).sum(1)
      (expected_lower if sign > 0 else expected_upper).append(sign * bound)
    ibp_lower, ibp_upper = interval(fn)(lower[index:index + 1], upper[index:index + 1])
    out_lower, out_upper = jax.jit(linear_bounds(fn, 'crown_ibp'))(lower[index:index + 1],
                                                                   upper[index:index + 1])
    np.testing.assert_allclose(out_lower[0], np.maximum(expected_lower[0], ibp_lower[0]),
                               rtol=0, atol=TOLERANCE_64)
    np.testing.assert_allclose(out_upper[0], np.minimum(expected_upper[0], ibp_upper[0]),
                               rtol=0, atol=TOLERANCE_64)
    assert np.mean(expected_upper[0] - expected_lower[0]) < np.mean(ibp_upper - ibp_lower)


@pytest.mark.slow
def test_box_corners_inside():
  rng = np.random.default_rng(2)
  fn, _ = _mlp(rng, [4, 16, 16, 2])
  lower, upper = _random_box(rng, 1, (4,), 0.4)
  corners = np.array([np.where(np.array(bits), upper, lower)
                      for bits in itertools.product([0, 1], repeat=4)])[:, :, :]
  for method in METHODS:
    out_lower, out_upper = linear_bounds(fn, method)(lower, upper)
    _assert_inside(fn, corners, out_lower, out_upper, TOLERANCE_64)


RELAXED_ACTIVATIONS = {
    'tanh': jnp.tanh, 'sigmoid': jax.nn.sigmoid, 'abs': jnp.abs, 'leaky_relu': jax.nn.leaky_relu,
    'square': jnp.square, 'min': lambda x: jnp.minimum(x, 0.3), 'mul_self': lambda x: x * x,
    'max_const': lambda x: jnp.maximum(x, -0.2)}


def test_all_relaxations_sound():
  """One network with a branch per relaxed activation, summed: every relaxation at once."""
  rng = np.random.default_rng(3)
  first = rng.normal(size=(len(RELAXED_ACTIVATIONS), 5, 12)) / 2
  second = rng.normal(size=(len(RELAXED_ACTIVATIONS), 12, 3)) / 3

  def fn(x):
    return sum(activation(x @ first[i]) @ second[i]
               for i, activation in enumerate(RELAXED_ACTIVATIONS.values()))

  lower, upper = _random_box(rng, 2, (5,), 0.3)
  widths = _assert_sound(fn, lower, upper, 3, samples=300)
  assert widths['crown'] < widths['ibp']


@pytest.mark.slow
@pytest.mark.parametrize('activation', [
    jnp.tanh, jax.nn.sigmoid, jnp.abs, jax.nn.leaky_relu, jnp.square,
    lambda x: jnp.minimum(x, 0.3), lambda x: x * x, lambda x: jnp.maximum(x, -0.2)],
    ids=['tanh', 'sigmoid', 'abs', 'leaky_relu', 'square', 'min', 'mul_self', 'max_const'])
def test_activations_sound(activation):
  rng = np.random.default_rng(3)
  fn, _ = _mlp(rng, [5, 24, 24, 3], activation)
  lower, upper = _random_box(rng, 2, (5,), 0.3)
  widths = _assert_sound(fn, lower, upper, 3, samples=300)
  assert widths['crown'] < widths['ibp']


@pytest.mark.slow
def test_product_and_fallback_steps_sound():
  """McCormick planes for x * y of two bounded values; max pooling, l2_normalize and division by
  a bounded value fall back to their interval bounds."""
  rng = np.random.default_rng(5)
  kernel = rng.normal(size=(3, 3, 1, 4))
  w1, w2 = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
  dense = rng.normal(size=(8, 3))

  def fn(x):
    h = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    h = jax.lax.reduce_window(jax.nn.relu(h), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                              'VALID')
    h = h.reshape(h.shape[0], -1)
    h = h[:, :6] / (2 + jnp.abs(h[:, 6:12]))
    return l2_normalize(((h @ w1) * jnp.tanh(h @ w2)) @ dense)

  lower, upper = _random_box(rng, 2, (6, 6, 1), 0.05)
  _assert_sound(fn, lower, upper, 3, samples=200)


@pytest.mark.slow
def test_random_convnet_sound_and_tighter():
  """Conv (stride 2, padding), average pooling, BatchNorm-style scale/shift, concatenation."""
  rng = np.random.default_rng(6)
  k1, k2 = rng.normal(size=(3, 3, 2, 4)) / 3, rng.normal(size=(3, 3, 4, 6)) / 6
  scale, shift = rng.uniform(0.5, 1.5, size=6), rng.normal(size=6)
  dense = rng.normal(size=(3 * 3 * 6 + 2, 4)) / 8
  dimension_numbers = ('NHWC', 'HWIO', 'NHWC')

  def fn(x):
    h = jax.nn.relu(jax.lax.conv_general_dilated(x, k1, (2, 2), ((1, 1), (1, 1)),
                                                 dimension_numbers=dimension_numbers))
    h = jax.lax.conv_general_dilated(h, k2, (1, 1), 'SAME', dimension_numbers=dimension_numbers)
    h = jax.nn.relu(h * scale + shift)
    h = jax.lax.reduce_window(h, 0., jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID') / 4
    flat = h.reshape(h.shape[0], -1)
    return jnp.concatenate([flat, x[:, 0, 0, :]], axis=1) @ dense

  lower, upper = _random_box(rng, 2, (12, 12, 2), 0.05)
  widths = _assert_sound(fn, lower, upper, 4, samples=200)
  assert widths['crown'] < widths['ibp']


@pytest.mark.slow
def test_row_chunks_do_not_change_bounds():
  rng = np.random.default_rng(7)
  fn, _ = _mlp(rng, [5, 20, 20, 7])
  lower, upper = _random_box(rng, 2, (5,), 0.3)
  for method in METHODS:
    whole = linear_bounds(fn, method)(lower, upper)
    chunked = jax.jit(linear_bounds(fn, method, row_chunk=3))(lower, upper)
    np.testing.assert_allclose(whole, chunked, rtol=0, atol=TOLERANCE_64)


@pytest.mark.slow
def test_small_cnn_sound_float32():
  """The Small CNN of Kakizaki et al. (Gowal et al.'s "small"), random weights, float32."""
  with jax.enable_x64(False):
    model = models.get_model('small_cnn', embedding_dim=4)
    variables = models.init_variables(model, jax.random.key(0), (1, 28, 28, 1))
    fn = lambda x: model.apply(variables, x)
    images = np.random.default_rng(8).uniform(size=(2, 28, 28, 1)).astype(np.float32)
    lower, upper = input_box(images, 0.003)
    widths = _assert_sound(fn, lower, upper, 4, tolerance=1e-5, samples=100)
  assert widths['crown'] < widths['crown_ibp'] < widths['ibp']


@pytest.mark.slow
def test_spec_bounds_sound_and_tighter_than_box():
  """Bounds of differences of outputs, through the network and from the box."""
  rng = np.random.default_rng(9)
  fn, _ = _mlp(rng, [5, 24, 24, 4])
  lower, upper = _random_box(rng, 2, (5,), 0.3)
  spec = np.stack([np.eye(4)[0] - np.eye(4)[1], np.eye(4)[2] - np.eye(4)[3],
                   rng.normal(size=4)])[None].repeat(2, 0)
  points = _sample(rng, lower, upper, 500)
  values = np.einsum('pbd,bsd->pbs', np.asarray(jax.vmap(fn)(points)), spec)
  widths = {}
  for method in METHODS:
    spec_lower, spec_upper = jax.jit(linear_spec_bounds(fn, method, row_chunk=2))(
        lower, upper, spec)
    widths[method] = np.asarray(spec_upper - spec_lower)
    assert np.all(values >= np.asarray(spec_lower) - TOLERANCE_64)
    assert np.all(values <= np.asarray(spec_upper) + TOLERANCE_64)
    box_lower, box_upper = linear_bounds(fn, method)(lower, upper)
    box_lower, box_upper = np.asarray(box_lower)[:, None], np.asarray(box_upper)[:, None]
    from_box_lower = np.where(spec > 0, spec * box_lower, spec * box_upper).sum(-1)
    from_box_upper = np.where(spec > 0, spec * box_upper, spec * box_lower).sum(-1)
    assert np.all(np.asarray(spec_lower) >= from_box_lower - TOLERANCE_64)
    assert np.all(np.asarray(spec_upper) <= from_box_upper + TOLERANCE_64)
    assert np.mean(spec_upper - spec_lower) < np.mean(from_box_upper - from_box_lower)
  assert np.all(widths['alpha_crown'] <= widths['crown'] + TOLERANCE_64)
  assert np.mean(widths['alpha_crown']) < np.mean(widths['crown'])


@pytest.mark.parametrize('method', ['crown_ibp', 'crown',
                                    pytest.param('alpha_crown', marks=pytest.mark.slow)])
def test_spec_lower_bounds_are_the_lower_half(method):
  """`linear_spec_lower_bounds` (one-sided rows) equals `linear_spec_bounds`' lower bounds."""
  rng = np.random.default_rng(12)
  fn, _ = _mlp(rng, [5, 16, 16, 3])
  lower, upper = _random_box(rng, 2, (5,), 0.3)
  spec = rng.normal(size=(2, 4, 3))
  both = jax.jit(linear_spec_bounds(fn, method, row_chunk=3))(lower, upper, spec)[0]
  one = jax.jit(linear_spec_lower_bounds(fn, method, row_chunk=3))(lower, upper, spec)
  np.testing.assert_allclose(one, both, rtol=1e-12, atol=1e-12)


def test_crown_ibp_spec_bounds_differentiable_in_the_weights():
  """The gradient of CROWN-IBP specification bounds with respect to a convolution's kernel (what
  CROWN-IBP training follows) matches finite differences."""
  rng = np.random.default_rng(12)
  kernel = jnp.asarray(rng.normal(size=(4, 6, 3, 2)))  # a convolution, then a ReLU, then a sum
  images = rng.uniform(size=(2, 6, 6, 3))
  spec = jnp.asarray(rng.normal(size=(2, 3, 2)))

  def bound_sum(weights):
    def net(x):
      hidden = jax.nn.relu(lax.conv_general_dilated(x, weights, (1, 1), ((1, 2), (0, 1)),
                                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
      return jnp.sum(hidden, axis=(1, 2))
    return jnp.sum(linear_spec_lower_bounds(net, 'crown_ibp')(images - 0.05, images + 0.05, spec))

  gradient = jax.jit(jax.grad(bound_sum))(kernel)
  direction = jnp.asarray(rng.normal(size=kernel.shape))
  step = 1e-6
  bound_sum = jax.jit(bound_sum)
  numeric = (bound_sum(kernel + step * direction) - bound_sum(kernel - step * direction)) / (2 * step)
  np.testing.assert_allclose(jnp.sum(gradient * direction), numeric, rtol=1e-5)


@pytest.mark.parametrize('padding,lhs_dilation,rhs_dilation', [
    (((3, 3), (3, 3)), (1, 1), (1, 1)), (((2, 1), (0, -1)), (2, 3), (1, 2))])
def test_channels_last_conv_gradients_are_xlas(padding, lhs_dilation, rhs_dilation):
  """The custom kernel cotangent of `linear_rules.channels_last_conv` (one matmul per kernel
  offset) equals XLA's, with input dilation, kernel dilation and negative (cropping) padding."""
  rng = np.random.default_rng(13)
  lhs, kernel = jnp.asarray(rng.normal(size=(3, 7, 6, 4))), jnp.asarray(rng.normal(size=(3, 2, 4, 5)))

  def reference(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  out, reference_vjp = jax.vjp(reference, lhs, kernel)
  value, custom_vjp = jax.vjp(lambda x, w: linear_rules.channels_last_conv(
      x, w, padding, lhs_dilation, rhs_dilation), lhs, kernel)
  np.testing.assert_array_equal(value, out)
  cotangent = jnp.asarray(rng.normal(size=out.shape))
  for got, want in zip(custom_vjp(cotangent), reference_vjp(cotangent)):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # 21 s; tests/test_through_encoder.py's reuse test stays in the default run
@pytest.mark.parametrize('method', ['crown_ibp', 'crown'])
def test_spec_bounds_from_reused_intermediates_equal_recomputed_ones(method):
  """`linear_spec_bounds` with the intermediate bounds `linear_bounds` returned for the same boxes
  gives the bounds it computes itself (on a CNN whose patches and dense passes both tighten), and
  they hold at sampled points and PGD ends of every box."""
  rng = np.random.default_rng(21)
  fn = _small_conv_net(rng, outputs=4)
  lower, upper = _random_box(rng, 3, (10, 10, 1), 0.05)
  spec = rng.normal(size=(3, 5, 4))
  out_lower, out_upper, intermediates = jax.jit(
      linear_bounds(fn, method, return_intermediates=True))(lower, upper)
  np.testing.assert_allclose(out_lower, jax.jit(linear_bounds(fn, method))(lower, upper)[0],
                             rtol=1e-12, atol=1e-12)
  recomputed = jax.jit(linear_spec_bounds(fn, method))(lower, upper, spec)
  reused = jax.jit(linear_spec_bounds(fn, method))(lower, upper, spec, intermediates)
  np.testing.assert_allclose(reused[0], recomputed[0], rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(reused[1], recomputed[1], rtol=1e-12, atol=1e-12)
  spec_values = lambda x: jnp.einsum('bd,bsd->bs', fn(x), jnp.asarray(spec))
  points = np.concatenate([_sample(rng, lower, upper, 300),
                           np.asarray(_pgd_ends(spec_values, lower, upper, 5))])
  values = np.einsum('pbd,bsd->pbs', np.asarray(jax.vmap(fn)(points)), spec)
  assert np.all(values >= np.asarray(reused[0]) - TOLERANCE_64)
  assert np.all(values <= np.asarray(reused[1]) + TOLERANCE_64)
  if method == 'crown':  # The tightened conv and dense bounds are in them.
    assert intermediates.shape[1] > 2 * lower[0].size


@pytest.mark.parametrize('method', ['crown'] + [pytest.param(method, marks=pytest.mark.slow)
                                                for method in ('crown_ibp', 'alpha_crown')])
def test_trailing_zero_rows_skipped_with_the_bounds_of_their_passes(method):
  """Rows after an example's last nonzero row get bound 0 without a pass: every row's bound is
  that of a call where the same rows are all nonzero (scaled by 1e-300 where padding)."""
  rng = np.random.default_rng(23)
  fn = _small_conv_net(rng, outputs=4)
  lower, upper = _random_box(rng, 3, (10, 10, 1), 0.05)
  spec = rng.normal(size=(3, 7, 4))
  spec[0, 2:] = 0  # 2 rows in use, 7 (all), none, with a zero row inside the rows in use
  spec[2] = 0
  spec[1, 3] = 0
  bounded = jax.jit(linear_spec_bounds(fn, method, row_chunk=2, skip_zero_rows=True))
  skipped = bounded(lower, upper, spec)
  tiny = np.where(spec == 0, 1e-300, spec)  # (a nonzero row whose bounds round to 0)
  full = bounded(lower, upper, tiny)
  for side in range(2):
    np.testing.assert_allclose(skipped[side], full[side], rtol=1e-12, atol=1e-250)
  assert np.all(np.asarray(skipped[0])[2] == 0) and np.all(np.asarray(skipped[1])[0, 2:] == 0)
  lower_only = jax.jit(linear_spec_lower_bounds(fn, method, row_chunk=2, skip_zero_rows=True))(
      lower, upper, spec)
  np.testing.assert_allclose(lower_only, skipped[0], rtol=1e-12, atol=1e-12)
  if method == 'crown_ibp':  # By default CROWN-IBP skips nothing (it stays differentiable).
    default = jax.jit(linear_spec_bounds(fn, method, row_chunk=2))(lower, upper, spec)
    np.testing.assert_allclose(default[0], skipped[0], rtol=1e-12, atol=1e-12)
    assert 'while' not in str(jax.make_jaxpr(linear_spec_lower_bounds(fn, method))(
        lower, upper, spec))


def test_intermediates_of_another_box_give_no_bounds():
  """Intermediate bounds hold only for the box they were computed on: for another box, an error
  outside jit and infinite bounds under it; those of another method or of a function with other
  intermediate shapes are an error. (Another function of the same shapes cannot be told apart:
  the docstring says to pass the same one.)"""
  rng = np.random.default_rng(22)
  fn, _ = _mlp(rng, [6, 12, 12, 4])
  lower, upper = _random_box(rng, 2, (6,), 0.2)
  spec = rng.normal(size=(2, 3, 4))
  _, _, intermediates = jax.jit(linear_bounds(fn, 'crown', return_intermediates=True))(lower,
                                                                                        upper)
  smaller_upper = np.asarray(upper).copy()
  smaller_upper[1, 0] = lower[1, 0]
  with pytest.raises(ValueError, match=r'Examples \[1\] have other boxes'):
    linear_spec_bounds(fn, 'crown')(lower, smaller_upper, spec, intermediates)
  spec_lower, spec_upper = jax.jit(linear_spec_bounds(fn, 'crown'))(
      lower, smaller_upper, spec, intermediates)
  assert np.all(np.isfinite(spec_lower[0])) and np.all(np.isfinite(spec_upper[0]))
  assert np.all(spec_lower[1] == -np.inf) and np.all(spec_upper[1] == np.inf)
  with pytest.raises(ValueError, match='do not match'):  # crown_ibp records none
    _, _, none = jax.jit(linear_bounds(fn, 'crown_ibp', return_intermediates=True))(lower,
                                                                                   upper)
    linear_spec_bounds(fn, 'crown')(lower, upper, spec, none)
  other, _ = _mlp(rng, [6, 12, 8, 4])  # (its tightened layer has 8 neurons, not 12)
  with pytest.raises(ValueError, match='do not match'):
    linear_spec_bounds(other, 'crown')(lower, upper, spec, intermediates)
  with pytest.raises(ValueError, match='do not match'):
    linear_spec_bounds(fn, 'crown')(lower, upper, spec, intermediates.astype(np.float32))


def test_spec_shape_checked():
  with pytest.raises(ValueError, match='n_spec'):
    linear_spec_bounds(lambda x: 2 * x)(jnp.zeros((2, 3)), jnp.ones((2, 3)), jnp.ones((3, 3)))


@pytest.mark.slow
def test_large_cnn_sound_float32():
  with jax.enable_x64(False):
    model = models.get_model('large_cnn', embedding_dim=2)
    variables = models.init_variables(model, jax.random.key(1), (1, 28, 28, 1))
    fn = lambda x: model.apply(variables, x)
    images = np.random.default_rng(10).uniform(size=(1, 28, 28, 1)).astype(np.float32)
    lower, upper = input_box(images, 0.001)
    widths = _assert_sound(fn, lower, upper, 2, tolerance=1e-5, samples=50,
                           methods=('crown_ibp',))
  assert widths['crown_ibp'] < widths['ibp']


@pytest.mark.parametrize('dimension_numbers', [
    ('NHWC', 'HWIO', 'NHWC'),
    pytest.param(('NCHW', 'OIHW', 'NCHW'), marks=pytest.mark.slow)])
def test_linear_network_bounds_are_its_exact_range(dimension_numbers):
  """Two convolutions (strides, padding, dilation) and a dense layer: the bounds are the exact
  range `J c +- |J| r` of the affine map (IBP is looser), whatever the layout."""
  rng = np.random.default_rng(11)
  channels_last = dimension_numbers[0] == 'NHWC'
  k1 = rng.normal(size=(3, 3, 2, 3) if channels_last else (3, 2, 3, 3))
  k2 = rng.normal(size=(2, 2, 3, 4) if channels_last else (4, 3, 2, 2))
  dense = rng.normal(size=(4 * 4 * 4, 3))

  def fn(x):
    h = jax.lax.conv_general_dilated(x, k1, (2, 1), ((1, 2), (0, 1)), rhs_dilation=(1, 2),
                                     dimension_numbers=dimension_numbers)
    h = jax.lax.conv_general_dilated(h, k2, (1, 1), 'VALID', dimension_numbers=dimension_numbers)
    return h.reshape(h.shape[0], -1)[:, :64] @ dense

  shape = (9, 8, 2) if channels_last else (2, 9, 8)
  lower, upper = _random_box(rng, 1, shape, 0.1)
  jacobian = np.asarray(jax.jacobian(lambda x: fn(x[None])[0])(jnp.asarray(lower[0])))
  jacobian = jacobian.reshape(3, -1)
  radius = ((upper - lower) / 2).reshape(-1)
  value = np.asarray(fn(jnp.asarray((lower + upper) / 2)))[0]
  ibp_lower, _ = interval(fn)(lower, upper)
  assert np.all(value - np.abs(jacobian) @ radius > np.asarray(ibp_lower)[0] + 1e-6)
  for method in METHODS:
    out_lower, out_upper = jax.jit(linear_bounds(fn, method))(lower, upper)
    np.testing.assert_allclose(out_lower[0], value - np.abs(jacobian) @ radius, rtol=0,
                               atol=TOLERANCE_64)
    np.testing.assert_allclose(out_upper[0], value + np.abs(jacobian) @ radius, rtol=0,
                               atol=TOLERANCE_64)


@pytest.mark.parametrize('transpose', [
    functools.partial(linear_rules.conv_lhs_transpose, band_max_waste=0.),  # spread only
    functools.partial(linear_rules.conv_lhs_transpose, band_max_waste=np.inf),  # banded
    linear_rules.conv_lhs_transpose_by_conv], ids=['spread', 'banded', 'by_conv'])
def test_conv_transpositions_equal_the_vjp(transpose):
  """The explicit transposed convolutions (docs/linear_bounds.md §3.1) equal the VJP of the
  convolution on random rows: strides, asymmetric and 'SAME' padding, kernel dilation, NCHW, 1-D."""
  rng = np.random.default_rng(12)
  nhwc, nchw = ('NHWC', 'HWIO', 'NHWC'), ('NCHW', 'OIHW', 'NCHW')
  cases = [(nhwc, (1, 13, 11, 3), (3, 2, 3, 5), (2, 1), ((1, 2), (0, 1)), (1, 1)),
           (nhwc, (1, 28, 28, 1), (4, 4, 1, 16), (2, 2), 'VALID', (1, 1)),
           (nhwc, (1, 14, 14, 4), (3, 3, 4, 6), (2, 2), 'SAME', (1, 1)),
           (nchw, (1, 3, 12, 9), (5, 3, 3, 3), (3, 2), ((2, 1), (1, 1)), (2, 1)),
           (('NWC', 'WIO', 'NWC'), (1, 11, 3), (3, 3, 4), (2,), ((1, 1),), (1,))]
  for numbers, lhs_shape, kernel_shape, strides, padding, dilation in cases:
    kernel = jnp.asarray(rng.normal(size=kernel_shape))
    conv = lambda x, kernel=kernel, numbers=numbers, strides=strides, padding=padding, \
        dilation=dilation: jax.lax.conv_general_dilated(
            x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=numbers)
    zeros = jnp.zeros(lhs_shape)
    out, vjp = jax.vjp(conv, zeros)
    rows = jnp.asarray(rng.normal(size=(5,) + out.shape))
    expected = jax.vmap(lambda row, vjp=vjp: vjp(row)[0])(rows)
    params = jax.make_jaxpr(conv)(zeros).jaxpr.eqns[-1].params
    transposed = jax.jit(lambda rows, kernel, params=params, lhs_shape=lhs_shape: transpose(
        rows, kernel, params, lhs_shape))(rows, kernel)
    np.testing.assert_allclose(transposed, expected, rtol=0, atol=1e-12)


def test_float32_convolutions_bound_like_float64():
  """In float32 the convolutions are transposed by `conv_lhs_transpose_by_conv`, in float64 on CPU
  by `conv_lhs_transpose` (docs/linear_bounds.md §3.1): CROWN's bounds of a small ReLU convnet
  (its output and intermediate passes both transpose convolutions) agree to float32 rounding,
  and sampled points lie inside the float32 bounds."""
  rng = np.random.default_rng(13)
  k1, k2 = rng.normal(size=(3, 3, 2, 4)) / 3, rng.normal(size=(2, 2, 4, 3)) / 3
  dense = rng.normal(size=(2 * 2 * 3, 3)) / 2
  numbers = ('NHWC', 'HWIO', 'NHWC')

  def fn(x):
    h = jax.nn.relu(jax.lax.conv_general_dilated(x, k1.astype(x.dtype), (2, 2), 'VALID',
                                                 dimension_numbers=numbers))
    h = jax.nn.relu(jax.lax.conv_general_dilated(h, k2.astype(x.dtype), (1, 1), 'VALID',
                                                 dimension_numbers=numbers))
    return h.reshape(h.shape[0], -1) @ dense.astype(x.dtype)

  lower, upper = _random_box(rng, 2, (7, 7, 2), 0.05)
  expected = jax.jit(linear_bounds(fn, 'crown'))(lower, upper)
  with jax.enable_x64(False):
    lower32, upper32 = np.float32(lower), np.float32(upper)
    got = jax.jit(linear_bounds(fn, 'crown'))(lower32, upper32)
    assert got[0].dtype == jnp.float32
    _assert_inside(fn, _sample(rng, lower32, upper32, 200).astype(np.float32), *got, 1e-5)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-5)


def test_values_that_may_be_nan_keep_comparisons_undecided():
  """`sqrt` of a range reaching below 0 is NaN there; `isnan` of it must then be undecided
  (docs/linear_bounds.md §8), so `where(isnan(y), 5, y)` may be 5 and the bounds must allow it."""
  w = np.array([[1., -2.], [0.5, 1.]])

  def fn(x):
    y = jnp.sqrt(x)
    return jax.nn.relu(jnp.where(jnp.isnan(y), 5., y) @ w) @ w

  lower, upper = np.array([[-0.5, 0.2], [0.1, 0.3]]), np.array([[0.5, 0.6], [0.4, 0.9]])
  points = _sample(np.random.default_rng(14), lower, upper, 300)
  assert (points < 0).any()  # the box holds points where sqrt is NaN
  for method in METHODS:
    out_lower, out_upper = jax.jit(linear_bounds(fn, method))(lower, upper)
    _assert_inside(fn, points, out_lower, out_upper, TOLERANCE_64)


@pytest.mark.parametrize('narrow', [jnp.bfloat16, jnp.float16])
def test_casts_to_another_dtype_are_interval_steps(narrow):
  """A cast to a narrower float rounds (bfloat16 keeps 8 significant bits; float16 flushes values
  under 6e-8 to 0), and one back would round the rows' coefficients: the bounds must contain
  what the function computes, as IBP's do. With the casts taken as the identity the bounds
  missed the rounded values by ~2e-3, also at eps 0."""
  rng = np.random.default_rng(3)
  fn, _ = _mlp(rng, [6, 16, 4])
  rounded = lambda x: fn(x.astype(narrow).astype(x.dtype))
  center = rng.normal(size=(2, 6)) * np.array([1., 1., 1., 1e-9, 3e-8, 1.])
  bounded = {method: jax.jit(linear_bounds(rounded, method)) for method in ('crown_ibp', 'crown')}
  for eps in (0., 1e-3):
    lower, upper = center - eps, center + eps
    points = _sample(np.random.default_rng(4), lower, upper, 200)
    for method, bound in bounded.items():
      _assert_inside(rounded, points, *bound(lower, upper), TOLERANCE_64)
