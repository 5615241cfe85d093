"""Rigorous linear bounds (`linear_bounds(fn, method, rounding='outward')`): they hold for the
real-valued function although computed in float32 (docs/linear_bounds.md §8).

Each soundness test compares against exact rational arithmetic (`fractions.Fraction`) on the
float32 weights, and checks that the same bounds rounded to nearest are violated on some of its
cases: the cases are ones where rounding matters, so the test would fail without the slack.
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert import models
from jaxcert.bounds import linear
from jaxcert.bounds import linear_bounds
from jaxcert.bounds import linear_spec_bounds
from jaxcert.bounds import linear_spec_lower_bounds
from jaxcert.bounds import linear_patches
from jaxcert.bounds import linear_rules


def _exact(array):
  return np.vectorize(Fraction, otypes=[object])(np.asarray(array, np.float64))


def test_outward_relu_upper_line_lies_above_the_real_function():
  rng = np.random.default_rng(0)
  scales = 10.0 ** rng.uniform(-6, 6, size=(2, 4000))
  lower = (-scales[0]).astype(np.float32)
  upper = scales[1].astype(np.float32)
  threshold = np.float32(0) * lower
  threshold[::2] = (rng.uniform(-1, 1, size=2000) * scales[1, ::2] * 1e-3).astype(np.float32)
  threshold = np.clip(threshold, lower * 0.5, upper * 0.5)
  violations = {}
  for outward in (False, True):
    slope, offset = (np.asarray(v) for v in linear_rules.relu_like(
        jnp.asarray(lower), jnp.asarray(upper), jnp.asarray(threshold), outward)[2:])
    gaps = []
    for l, u, t, s, o in zip(*(_exact(v) for v in (lower, upper, threshold, slope, offset))):
      gaps.append(min(s * l + o - max(l, t), s * u + o - max(u, t)))
    violations[outward] = sum(gap < 0 for gap in gaps)
  assert violations[True] == 0
  assert violations[False] > 0  # The cases exercise the rounding of the secant's offset.


def _two_layer(seed, n=12, hidden=80, out=4, stable=True):
  """A float32 ReLU network whose output is a difference of large, nearly equal sums."""
  rng = np.random.default_rng(seed)
  w1 = (rng.normal(size=(n, hidden)) * 300).astype(np.float32)
  b1 = (rng.normal(size=hidden) * (4e5 if stable else 30)).astype(np.float32)
  if stable:
    b1 = np.abs(b1) + np.float32(1e6)  # Every ReLU active on the box: affine there.
  w2 = rng.normal(size=(hidden, out)).astype(np.float32)
  w2[1::2] = -w2[::2] * np.float32(1 + 2 ** -20)  # Cancellation between hidden units.
  w2 = w2.astype(np.float32)
  x0 = rng.uniform(50, 100, size=(1, n)).astype(np.float32)
  return w1, b1, w2, x0


def _apply(params, x):
  w1, b1, w2 = params
  return jnp.maximum(x @ w1 + b1, 0) @ w2


def _exact_output(params, x):
  w1, b1, w2 = (_exact(p) for p in params)
  hidden = np.maximum(_exact(x) @ w1 + b1, Fraction(0))
  return hidden @ w2


def _exact_extremes(params, lower, upper, rows):
  """Exact minimum and maximum of `row . f(x)` over the box, for each row of `rows` (floats),
  on a network of `_two_layer` whose ReLUs are all active there: f is affine on the box, so they
  are attained at the vertices its exact slope's signs pick."""
  w1, b1, w2 = params
  w1_exact = _exact(w1)
  pre_min = (np.minimum(_exact(lower).T * w1_exact, _exact(upper).T * w1_exact).sum(axis=0)
             + _exact(b1))
  assert (pre_min > 0).all()  # Active at every point of the box.
  slopes = w1_exact @ _exact(w2) @ _exact(rows).T  # (n, rows)
  mins, maxs = [], []
  for slope, row in zip(slopes.T, _exact(rows)):
    low_vertex = np.where(slope > 0, _exact(lower)[0], _exact(upper)[0])
    high_vertex = np.where(slope > 0, _exact(upper)[0], _exact(lower)[0])
    mins.append((_exact_output(params, low_vertex[None]) @ row)[0])
    maxs.append((_exact_output(params, high_vertex[None]) @ row)[0])
  return mins, maxs


@pytest.mark.parametrize('method', ['crown_ibp', 'crown',
                                    pytest.param('alpha_crown', marks=pytest.mark.slow)])
def test_outward_bounds_contain_the_exact_range_of_an_affine_network(method):
  """All ReLUs active: the network is affine on the box, CROWN's relaxation is exact, and the
  real minimum and maximum of each output are attained at a vertex computed exactly."""
  violated = []
  bounds = {rounding: jax.jit(lambda params, lower, upper, rounding=rounding: linear_bounds(
      lambda x: _apply(params, x), method, rounding=rounding)(lower, upper))
            for rounding in ('outward', 'nearest')}
  for seed in range(6):
    w1, b1, w2, x0 = _two_layer(seed)
    eps = np.float32(1e-3)
    lower, upper = x0 - eps, x0 + eps
    params = (w1, b1, w2)
    out_lower, out_upper = bounds['outward'](params, lower, upper)
    near_lower, near_upper = bounds['nearest'](params, lower, upper)
    exact_mins, exact_maxs = _exact_extremes(params, lower, upper, np.eye(w2.shape[1]))
    for k, (exact_min, exact_max) in enumerate(zip(exact_mins, exact_maxs)):
      assert Fraction(float(out_lower[0, k])) <= exact_min
      assert Fraction(float(out_upper[0, k])) >= exact_max
      # Tight up to the slack: the bounds are not vacuous.
      assert float(exact_min) - float(out_lower[0, k]) < 1e-2 * (1 + abs(float(exact_min)))
      violated.append(Fraction(float(near_lower[0, k])) > exact_min
                      or Fraction(float(near_upper[0, k])) < exact_max)
  assert any(violated)  # Rounded to nearest, some bound is false on these cases.


@pytest.mark.parametrize('seeds', [range(1), pytest.param(range(1, 4), marks=pytest.mark.slow)],
                         ids=['quick', 'sweep'])
def test_outward_bounds_hold_at_exact_points_of_an_unstable_network(seeds):
  """Unstable ReLUs: the box's vertices and random points, evaluated exactly, lie inside."""
  for seed in seeds:
    w1, b1, w2, x0 = _two_layer(seed, n=6, stable=False)
    x0 = (x0 / 100).astype(np.float32)
    eps = np.float32(0.05)
    lower, upper = x0 - eps, x0 + eps
    params = (w1, b1, w2)
    fn = lambda x, params=params: _apply(params, x)
    for method in ('crown_ibp', 'crown', 'alpha_crown'):
      out_lower, out_upper = (np.asarray(b) for b in jax.jit(
          linear_bounds(fn, method, rounding='outward'))(lower, upper))
      corners = np.array(np.meshgrid(*[[0, 1]] * 6)).reshape(6, -1).T
      points = np.concatenate([
          np.where(corners == 0, lower, upper),
          np.random.default_rng(seed).uniform(lower, upper, size=(40, 6))]).astype(np.float32)
      values = _exact_output(params, points)
      assert (values >= _exact(out_lower)).all()
      assert (values <= _exact(out_upper)).all()


@pytest.mark.slow
def test_outward_small_cnn_bounds_are_sound_and_close_to_float64():
  """Small CNN in float32: the rigorous bounds lie below/above the float64 bounds (the same
  relaxation, rounding ~1e-16) and contain the float64 network at sampled points of the box and
  at the ends of sign-gradient attacks on each output, and are at most a little wider."""
  model = models.get_model('small_cnn', embedding_dim=8)
  variables = models.init_variables(model, jax.random.key(0), (1, 28, 28, 1))
  images = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1), dtype=jnp.float32)
  eps = 0.01
  lower, upper = jnp.clip(images - eps, 0, 1), jnp.clip(images + eps, 0, 1)
  fn = lambda x: model.apply(variables, x)
  with jax.enable_x64():
    variables64 = jax.tree.map(lambda v: v.astype(jnp.float64), variables)
    fn64 = lambda x: model.apply(variables64, x)
    lower64, upper64 = lower.astype(jnp.float64), upper.astype(jnp.float64)
    points = jax.random.uniform(jax.random.key(2), (20, *lower.shape), dtype=jnp.float64)
    points = lower64 + points * (upper64 - lower64)

    @jax.jit
    @jax.vmap
    def pgd_end(direction):  # Projected sign-gradient steps moving `direction . output` down.
      step = lambda _, x: jnp.clip(x - 0.25 * eps * jnp.sign(jax.grad(
          lambda z: (fn64(z) @ direction).sum())(x)), lower64, upper64)
      return jax.lax.fori_loop(0, 15, step, (lower64 + upper64) / 2)

    directions = jnp.concatenate([jnp.eye(8), -jnp.eye(8)])
    points = jnp.concatenate([points, pgd_end(directions)])
    values = np.asarray(jax.jit(jax.vmap(fn64))(points))
    bounds64 = jax.jit(linear_bounds(fn64, 'crown_ibp'))(lower.astype(jnp.float64),
                                                         upper.astype(jnp.float64))
  out_lower, out_upper = (np.asarray(b, np.float64) for b in jax.jit(
      linear_bounds(fn, 'crown_ibp', rounding='outward'))(lower, upper))
  assert (values >= out_lower).all() and (values <= out_upper).all()
  assert (out_lower <= np.asarray(bounds64[0])).all()
  assert (out_upper >= np.asarray(bounds64[1])).all()
  width64 = np.asarray(bounds64[1] - bounds64[0])
  assert np.median((out_upper - out_lower) / width64) < 1.1


@pytest.mark.parametrize('dtype', [pytest.param(jnp.float32, marks=pytest.mark.slow),
                                   jnp.float64])
def test_outward_mode_transposes_convolutions_without_a_band(monkeypatch, dtype):
  """`linear_rounding.conv_matmul_gamma` bounds the spread transposition's two-stage sums; the
  banded one sums (kernel width x features) products at once, so the rigorous mode must never
  build a band (on this net the round-to-nearest float64 CROWN does, in its dense and patches
  passes)."""
  kernels = [np.ones((3, 3, 1, 2)) / 4, np.ones((3, 3, 2, 2)) / 8]  # 6x6 -> 4x4 -> 2x2 maps

  def fn(x):
    for kernel in kernels:
      x = jax.nn.relu(jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), 'VALID',
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    return x.reshape(x.shape[0], -1)

  bands = []
  band_matrix = linear_rules._band_matrix  # pylint: disable=protected-access
  monkeypatch.setattr(linear_rules, '_band_matrix',
                      lambda *args: bands.append(args) or band_matrix(*args))
  with jax.enable_x64(dtype == jnp.float64):
    lower = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(2, 6, 6, 1)), dtype)
    jax.jit(linear_bounds(fn, 'crown', rounding='outward'))(lower, lower + 0.5)
    assert not bands
    if dtype == jnp.float64:  # (the check above would see a band if one were built)
      jax.jit(linear_bounds(fn, 'crown'))(lower, lower + 0.5)
      assert bands


def test_outward_mode_errors():
  fn = lambda x: jnp.maximum(x, 0)
  box = (jnp.zeros((1, 3)), jnp.ones((1, 3)))
  with pytest.raises(ValueError, match=r"Unknown rounding 'up'; valid: \['nearest', 'outward'\]"):
    linear_bounds(fn, 'crown', rounding='up')
  with pytest.raises(NotImplementedError, match='one floating-point dtype'):
    linear_bounds(lambda x: jnp.maximum(x.astype(jnp.float16), 0), 'crown',
                  rounding='outward')(*box)
  # A comparison's boolean output is no change of floating dtype: leaky ReLU (a select) is bounded.
  lower, upper = linear_bounds(lambda x: jax.nn.leaky_relu(x - 0.5, 0.125), 'crown',
                               rounding='outward')(*box)
  assert np.all(lower <= -0.0625) and np.all(upper >= 0.5)


def _exact_conv(x, kernel):
  """VALID, stride 1 convolution of an (H, W, C) array by an (h, w, C, O) kernel, exactly."""
  (height, width, _), (kh, kw, _, features) = x.shape, kernel.shape
  out = np.empty((height - kh + 1, width - kw + 1, features), object)
  for i, j, o in np.ndindex(*out.shape):
    out[i, j, o] = np.sum(x[i:i + kh, j:j + kw] * kernel[..., o])
  return out


def test_outward_patches_contain_the_exact_range_of_convolution_neurons():
  """CROWN's patches pass (docs/linear_bounds.md §5.1) in the rigorous mode: a float32 network
  conv (ReLU active on the box; two channels of bias 1e6) -> conv in which those two channels
  nearly cancel, centred to straddle 0 (so its bounds are tightened in patches) -> ReLU. Its second convolution is affine on the
  box, so the tightened bounds must contain each neuron's exact range (a vertex of the box,
  computed with fractions); rounded to nearest they miss it on some neurons."""
  rng = np.random.default_rng(3)
  base = (rng.normal(size=(3, 3, 1, 1)) * 50).astype(np.float32)
  other = np.abs(rng.normal(size=(3, 3, 1, 1))).astype(np.float32)
  k1 = np.concatenate([base, base, other], axis=-1)  # Two equal channels and a third ...
  b1 = np.array([1e6 + 0.5, 1e6 + 0.25, 0], np.float32)
  k2 = (rng.normal(size=(2, 2, 1, 3)) * 30).astype(np.float32)
  k2 = np.concatenate([k2, -k2 * np.float32(1 + 2 ** -18), rng.normal(size=(2, 2, 1, 3))],
                      axis=2).astype(np.float32)  # ... of which the first two cancel.
  x0 = rng.uniform(0.2, 0.8, size=(1, 6, 6, 1)).astype(np.float32)
  eps = np.float32(0.01)
  lower, upper = x0 - eps, x0 + eps
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), 'VALID',
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  with jax.enable_x64():  # Centred on 0 at x0 (float64), so the neurons straddle 0.
    b2 = -np.asarray(conv(jnp.maximum(conv(x0.astype(np.float64), k1.astype(np.float64))
                                       + b1, 0), k2.astype(np.float64)))[0].astype(np.float32)

  def layers(x):
    return conv(jnp.maximum(conv(x, k1) + b1, 0), k2) + b2

  fn = lambda x: jnp.maximum(layers(x), 0).reshape(x.shape[0], -1)

  def tightened(rounding):  # The second convolution's bounds after CROWN's tightening.
    graph, _, _ = linear._example_graph(fn, 'crown', 8, True, jnp.asarray(lower),
                                        jnp.asarray(upper), rounding == 'outward')
    (node,) = [n for n in graph.nodes if n.shape == (1, 3, 3, 3) and n.exact]
    assert linear_patches.patch_chain(graph.steps, node) is not None  # Tightened in patches.
    return np.asarray(node.bound.lower)[0], np.asarray(node.bound.upper)[0]

  # The exact affine map of the box: coefficients by exact evaluation at the basis points.
  exact_layers = lambda x: (_exact_conv(_exact_conv(x, _exact(k1)) + _exact(b1), _exact(k2))
                            + _exact(b2))
  origin = exact_layers(np.full((6, 6, 1), Fraction(0), object))
  exact_lower, exact_upper = _exact(lower[0]), _exact(upper[0])
  minimum, maximum = origin.copy(), origin.copy()
  for index in np.ndindex(6, 6, 1):
    unit = np.full((6, 6, 1), Fraction(0), object)
    unit[index] = Fraction(1)
    slope = exact_layers(unit) - origin
    minimum += np.where(slope > 0, slope * exact_lower[index], slope * exact_upper[index])
    maximum += np.where(slope > 0, slope * exact_upper[index], slope * exact_lower[index])
  assert ((minimum < 0) & (maximum > 0)).any()  # Some neurons straddle: the patches pass runs.
  out_lower, out_upper = tightened('outward')
  assert (_exact(out_lower) <= minimum).all() and (_exact(out_upper) >= maximum).all()
  near_lower, near_upper = tightened('nearest')
  assert ((_exact(near_lower) > minimum) | (_exact(near_upper) < maximum)).any()


def _random_network(seed):
  """A float32 network drawn at random, and its exact (fractions) counterpart: dense or
  convolutional layers of weights spanning several orders of magnitude, with ReLUs, biases,
  scalings and divisions; inputs of 4 pixels (16 box corners)."""
  rng = np.random.default_rng(seed)
  scale = lambda size: (rng.normal(size=size) * 10.0 ** rng.uniform(-2, 3)).astype(np.float32)
  convolutional = seed % 2 == 1
  layers = []
  width = 4
  if convolutional:
    features = int(rng.integers(2, 6))
    layers.append(('conv', scale((2, 2, 1, features)), scale(features)))
    width = features  # A 1 x 1 map after the 2 x 2 VALID convolution of the 2 x 2 image.
  for _ in range(int(rng.integers(1, 3))):
    out = int(rng.integers(2, 70))
    layers.append(('dense', scale((width, out)), scale(out)))
    width = out
  layers.append(('scale', np.float32(10.0 ** rng.uniform(-3, 3)), None))
  layers.append(('dense', scale((width, 3)), None))

  def fn(x):
    h = x.reshape(x.shape[0], 2, 2, 1) if convolutional else x
    for kind, weight, bias in layers:
      if kind == 'conv':
        h = jax.lax.conv_general_dilated(h, weight, (1, 1), 'VALID',
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        h = jnp.maximum(h + bias, 0).reshape(h.shape[0], -1)
      elif kind == 'scale':
        h = (h * weight) / np.float32(3)
      else:
        h = h @ weight + (bias if bias is not None else 0)
        h = jnp.maximum(h, 0) if bias is not None else h
    return h

  def exact(point):  # One point (4,), exactly.
    h = _exact(point)
    if convolutional:
      h = h.reshape(2, 2, 1)
    for kind, weight, bias in layers:
      if kind == 'conv':
        h = np.maximum(_exact_conv(h, _exact(weight)) + _exact(bias), Fraction(0)).reshape(-1)
      elif kind == 'scale':
        h = h * Fraction(float(weight)) / 3
      else:
        h = h @ _exact(weight) + (_exact(bias) if bias is not None else 0)
        h = np.maximum(h, Fraction(0)) if bias is not None else h
    return h

  center = rng.uniform(-2, 2, size=(1, 4)).astype(np.float32)
  radius = np.float32(10.0 ** rng.uniform(-4, 0))
  return fn, exact, center - radius, center + radius


@pytest.mark.slow
def test_outward_bounds_of_random_networks_hold_at_exact_points():
  """Fuzz: for random networks and boxes, the rigorous CROWN-IBP and CROWN bounds contain the
  exact outputs at the 16 corners and 16 random points of the box."""
  for seed in range(40):
    fn, exact, lower, upper = _random_network(seed)
    corners = np.array(np.meshgrid(*[[0, 1]] * 4)).reshape(4, -1).T
    rng = np.random.default_rng(seed)
    points = np.concatenate([np.where(corners == 0, lower, upper),
                             rng.uniform(lower, upper, size=(16, 4))]).astype(np.float32)
    values = np.stack([exact(point) for point in points])
    for method in ('crown_ibp', 'crown'):
      out_lower, out_upper = (np.asarray(b)[0] for b in jax.jit(
          linear_bounds(fn, method, rounding='outward'))(lower, upper))
      assert (values >= _exact(out_lower)).all(), (seed, method)
      assert (values <= _exact(out_upper)).all(), (seed, method)


@pytest.mark.parametrize('method', [pytest.param('crown_ibp', marks=pytest.mark.slow), 'crown'])
def test_outward_spec_bounds_contain_the_exact_range_of_an_affine_network(method):
  """`linear_spec_bounds(..., rounding='outward')`: on the affine networks above, with rows that
  cancel (a row minus a nearby one, as the QA specification's `c^ - c`), the bounds contain the
  exact minimum and maximum of `row . f(x)` (attained at vertices computed exactly); rounded to
  nearest, some are false. The lower-bound half gives the same lower bounds."""
  violated = []
  bounded = {rounding: jax.jit(lambda params, lower, upper, spec, rounding=rounding:
                               linear_spec_bounds(lambda x: _apply(params, x), method,
                                                  rounding=rounding)(lower, upper, spec))
             for rounding in ('outward', 'nearest')}
  lower_bounded = jax.jit(lambda params, lower, upper, spec: linear_spec_lower_bounds(
      lambda x: _apply(params, x), method, rounding='outward')(lower, upper, spec))
  for seed in range(6):
    w1, b1, w2, x0 = _two_layer(seed)
    eps = np.float32(1e-3)
    lower, upper = x0 - eps, x0 + eps
    params = (w1, b1, w2)
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(3, w2.shape[1])).astype(np.float32)
    spec = np.stack([base, base * np.float32(1 + 2 ** -18) - base]).reshape(
        1, -1, w2.shape[1]).astype(np.float32)
    spec_lower, spec_upper = bounded['outward'](params, lower, upper, spec)
    np.testing.assert_array_equal(lower_bounded(params, lower, upper, spec), spec_lower)
    near_lower, near_upper = bounded['nearest'](params, lower, upper, spec)
    exact_mins, exact_maxs = _exact_extremes(params, lower, upper, spec[0])
    for r, (exact_min, exact_max) in enumerate(zip(exact_mins, exact_maxs)):
      assert Fraction(float(spec_lower[0, r])) <= exact_min
      assert Fraction(float(spec_upper[0, r])) >= exact_max
      scale = 1 + float(np.abs(_exact_output(params, x0) @ _exact(np.abs(spec[0, r])))[0])
      assert float(exact_min) - float(spec_lower[0, r]) < 1e-2 * scale  # not vacuous
      violated.append(Fraction(float(near_lower[0, r])) > exact_min
                      or Fraction(float(near_upper[0, r])) < exact_max)
  assert any(violated)  # Rounded to nearest, some bound is false on these cases.


def test_outward_spec_bounds_hold_at_exact_points_and_reuse_outward_intermediates_only():
  """Unstable ReLUs, CROWN: the outward spec bounds contain the exact values at the box's
  vertices and random points; with the intermediate bounds of `linear_bounds(...,
  rounding='outward', return_intermediates=True)` they are the same, while round-to-nearest
  intermediates (a rounding short of the real ones) are refused, and vice versa."""
  w1, b1, w2, x0 = _two_layer(1, n=6, stable=False)
  x0 = (x0 / 100).astype(np.float32)
  eps = np.float32(0.05)
  lower, upper = x0 - eps, x0 + eps
  params = (w1, b1, w2)
  fn = lambda x: _apply(params, x)
  spec = np.random.default_rng(1).normal(size=(1, 5, w2.shape[1])).astype(np.float32)
  bounded = jax.jit(linear_spec_bounds(fn, 'crown', rounding='outward'))
  spec_lower, spec_upper = (np.asarray(b) for b in bounded(lower, upper, spec))
  corners = np.array(np.meshgrid(*[[0, 1]] * 6)).reshape(6, -1).T
  points = np.concatenate([
      np.where(corners == 0, lower, upper),
      np.random.default_rng(2).uniform(lower, upper, size=(40, 6))]).astype(np.float32)
  values = _exact_output(params, points) @ _exact(spec[0]).T  # (points, rows)
  assert (values >= _exact(spec_lower)).all() and (values <= _exact(spec_upper)).all()
  intermediates = {rounding: jax.jit(linear_bounds(fn, 'crown', rounding=rounding,
                                                   return_intermediates=True))(lower, upper)[2]
                   for rounding in ('outward', 'nearest')}
  reused = bounded(lower, upper, spec, intermediates['outward'])
  np.testing.assert_array_equal(reused[0], spec_lower)
  np.testing.assert_array_equal(reused[1], spec_upper)
  with pytest.raises(ValueError, match='another rounding'):
    linear_spec_bounds(fn, 'crown', rounding='outward')(lower, upper, spec,
                                                        intermediates['nearest'])
  traced = bounded(lower, upper, spec, intermediates['nearest'])
  assert np.all(np.asarray(traced[0]) == -np.inf) and np.all(np.asarray(traced[1]) == np.inf)
  with pytest.raises(ValueError, match='another rounding'):
    linear_spec_bounds(fn, 'crown')(lower, upper, spec, intermediates['outward'])
  with pytest.raises(ValueError, match="box's dtype"):
    linear_spec_bounds(fn, 'crown', rounding='outward')(lower, upper, spec.astype(np.float64))
