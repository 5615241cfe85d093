"""Coverage of the linear (CROWN-family) rules: the relaxations added for the operations of issue 22
that used to fall back to their interval bound (docs/linear_bounds.md §3.6).

Each relaxation is attacked directly (dense samples of the interval or box, its ends and the
threshold, against both lines) and through a network (sampled points, box corners and the ends of
sign-gradient ascent toward each bound). Through a network `W2 g(W1 x + b1) + b2` with one
nonlinear step `g`, an interval (fallback) step would give exactly the IBP bound (the backward
pass stops at `g`'s output box, and IBP of one affine map of a box is its range), so a bound
strictly tighter than IBP shows that `g` was relaxed.
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from jaxcert.bounds import interval
from jaxcert.bounds import linear_rules
from jaxcert.bounds.linear import linear_bounds

TOLERANCE_64 = 1e-12

# alpha-CROWN changes only the lower line of a ReLU (`max` with a constant), which
# tests/test_linear.py covers; its optimisation loop would double these tests' compilation.
METHODS = ('crown_ibp', 'crown')


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


def _intervals(rng, count, threshold):
  """Intervals around `threshold`: straddling, on either side, touching it, degenerate."""
  lower = threshold + rng.normal(size=count) * 2
  upper = lower + rng.exponential(size=count) * 2
  special = np.array([[threshold - 1, threshold], [threshold, threshold + 1],
                      [threshold, threshold], [threshold - 1, threshold - 1],
                      [threshold - 2, threshold + 0.5], [threshold - 0.5, threshold + 2]])
  return np.concatenate([lower, special[:, 0]]), np.concatenate([upper, special[:, 1]])


def _points_in(lower, upper, threshold, rng, count=400):
  """(count + 5, n): uniform points, the ends, the threshold where inside, and its neighbours."""
  uniform = lower + rng.uniform(size=(count, lower.size)) * (upper - lower)
  near = [np.clip(threshold + delta, lower, upper) for delta in (0., -1e-9, 1e-9)]
  return np.concatenate([lower[None], upper[None], np.stack(near), uniform])


def _assert_between(values, lower_line, upper_line, tolerance=TOLERANCE_64):
  scale = 1 + np.abs(values)
  assert np.all(lower_line <= values + tolerance * scale), np.max(lower_line - values)
  assert np.all(values <= upper_line + tolerance * scale), np.max(values - upper_line)


# Two-piece functions as users write them: (function of x, threshold, below piece, above piece).
SELECT_PATTERNS = {
    'leaky_relu_0.01': (lambda x: jax.nn.leaky_relu(x, 0.01), 0., (0.01, 0.), (1., 0.)),
    'leaky_relu_0.2': (lambda x: jax.nn.leaky_relu(x, 0.2), 0., (0.2, 0.), (1., 0.)),
    'where_relu': (lambda x: jnp.where(x > 0, x, 0.), 0., (0., 0.), (1., 0.)),
    'step': (lambda x: jnp.where(x > 0.1, 1., -0.5), 0.1, (0., -0.5), (0., 1.)),
    'concave': (lambda x: jnp.where(x >= 0, 0.5 * x, 2 * x), 0., (2., 0.), (0.5, 0.)),
    'jump': (lambda x: jnp.where(x < 0.3, 2 * x + 1, -x), 0.3, (2., 1.), (-1., 0.)),
    'threshold_on_the_left': (lambda x: jnp.where(0.5 <= x, x - 1, 3 - x), 0.5, (-1., 3.),
                              (1., -1.)),
}


def test_piecewise_linear_lines_sandwich_each_select_pattern():
  """Both lines of `piecewise_linear` against the function at dense points of each interval, and
  leaky ReLU's lines equal CROWN's (secant above; `x` or `a x` below by the area rule)."""
  rng = np.random.default_rng(0)
  relax = jax.jit(linear_rules.piecewise_linear)
  for function, threshold, below, above in SELECT_PATTERNS.values():
    lower, upper = _intervals(rng, 200, threshold)
    slopes_and_offsets = [np.asarray(v) for v in relax(jnp.asarray(lower), jnp.asarray(upper),
                                                       threshold, below, above)]
    lower_slope, lower_offset, upper_slope, upper_offset = slopes_and_offsets
    points = _points_in(lower, upper, threshold, rng)
    _assert_between(np.asarray(function(jnp.asarray(points))), lower_slope * points + lower_offset,
                    upper_slope * points + upper_offset)
  for slope in (0.01, 0.2):
    lower, upper = _intervals(rng, 200, 0.)
    straddles = (lower < 0) & (upper > 0)
    result = relax(jnp.asarray(lower), jnp.asarray(upper), 0., (slope, 0.), (1., 0.))
    secant = (upper - slope * lower) / np.where(straddles, upper - lower, 1)
    np.testing.assert_allclose(result[2][straddles], secant[straddles], rtol=1e-12)
    np.testing.assert_allclose(result[3][straddles], (slope - secant)[straddles] * lower[straddles],
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(result[0][straddles],
                                  np.where(upper >= -lower, 1., slope)[straddles])
    np.testing.assert_allclose(result[1][straddles], 0., atol=1e-15)


def test_max_of_two_lines_sandwich_and_are_no_looser_than_the_interval():
  """`max_of_two` against max(x, y) at dense points and the corners of each box; the lower line's
  minimum over the box is the interval's lower bound and the upper line's maximum is at most the
  interval's upper bound; a dominated pair is exact."""
  rng = np.random.default_rng(1)
  count = 300
  lower_x, lower_y = rng.normal(size=count), rng.normal(size=count)
  upper_x = lower_x + rng.exponential(size=count)
  upper_y = np.where(np.arange(count) % 5 == 0, lower_y, lower_y + rng.exponential(size=count))
  (lx_slope, ly_slope), lower_offset, (ux_slope, uy_slope), upper_offset = [
      np.asarray(v) if not isinstance(v, tuple) else tuple(np.asarray(s) for s in v)
      for v in linear_rules.max_of_two(*map(jnp.asarray, (lower_x, upper_x, lower_y, upper_y)))]
  corners = [(a, b) for a in (lower_x, upper_x) for b in (lower_y, upper_y)]
  uniform = [(lower_x + rng.uniform(size=count) * (upper_x - lower_x),
              lower_y + rng.uniform(size=count) * (upper_y - lower_y)) for _ in range(400)]
  for x, y in corners + uniform:
    _assert_between(np.maximum(x, y), lx_slope * x + ly_slope * y + lower_offset,
                    ux_slope * x + uy_slope * y + upper_offset)
  line_min = (np.minimum(lx_slope * lower_x, lx_slope * upper_x)
              + np.minimum(ly_slope * lower_y, ly_slope * upper_y) + lower_offset)
  line_max = (np.maximum(ux_slope * lower_x, ux_slope * upper_x)
              + np.maximum(uy_slope * lower_y, uy_slope * upper_y) + upper_offset)
  np.testing.assert_allclose(line_min, np.maximum(lower_x, lower_y), rtol=0, atol=1e-12)
  assert np.all(line_max <= np.maximum(upper_x, upper_y) + 1e-12)
  dominated = lower_x >= upper_y
  assert dominated.any()
  np.testing.assert_array_equal(ux_slope[dominated], 1.)
  np.testing.assert_array_equal(uy_slope[dominated], 0.)
  np.testing.assert_array_equal(upper_offset[dominated], 0.)


@pytest.mark.parametrize('window, strides, padding, base, dilation', [
    ((1, 2, 2, 1), (1, 2, 2, 1), 'VALID', None, None),
    ((1, 3, 3, 1), (1, 2, 2, 1), 'SAME', None, None),
    ((1, 3, 2, 1), (1, 1, 2, 1), ((0, 0), (1, 1), (1, 0), (0, 0)), None, None),
    ((1, 2, 2, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0)), (1, 2, 1, 1), (1, 1, 2, 1)),
], ids=['valid', 'same', 'padded', 'dilated'])
def test_window_max_gathers_equal_max_pooling(window, strides, padding, base, dilation):
  """The gathers' max equals `lax.reduce_window(x, -inf, lax.max, ...)` exactly, padding and
  dilations included."""
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 6, 3)))
  expected = lax.reduce_window(x, -jnp.inf, lax.max, window, strides, padding, base, dilation)
  shaped = jax.make_jaxpr(lambda v: lax.reduce_window(v, -jnp.inf, lax.max, window, strides,
                                                      padding, base, dilation))(x)
  params = shaped.eqns[0].params
  indices = linear_rules.window_max_gathers(
      x.shape, params['window_dimensions'], params['window_strides'], params['padding'],
      params['base_dilation'], params['window_dilation'])
  np.testing.assert_array_equal(linear_rules.max_of_gathers(x, indices), expected)


def test_window_of_padding_only_is_not_decomposed():
  assert linear_rules.window_max_gathers((1, 2, 1), (1, 2, 1), (1, 1, 1),
                                         ((0, 0), (0, 3), (0, 0)), (1, 1, 1), (1, 1, 1)) is None


def _corners(lower, upper):
  """(2**n, batch, n): every corner of each example's box (n input coordinates)."""
  return np.stack([np.where(np.array(bits), upper, lower)
                   for bits in itertools.product([0, 1], repeat=lower.shape[-1])])


def _pgd_ends(fn, lower, upper, num_outputs, steps=30):
  """Ends of projected sign-gradient ascent on +-fn(x)[:, i], from the centre and the lower
  corner: (4 * num_outputs, batch, n)."""
  step_size = (upper - lower) / 8

  def ascend(direction, start):
    objective = lambda x: jnp.sum(fn(x) @ direction)

    def step(_, x):
      return jnp.clip(x + step_size * jnp.sign(jax.grad(objective)(x)), lower, upper)

    return lax.fori_loop(0, steps, step, start)

  directions = jnp.concatenate([jnp.eye(num_outputs), -jnp.eye(num_outputs)] * 2)
  starts = jnp.repeat(jnp.stack([(lower + upper) / 2, lower]), 2 * num_outputs, axis=0)
  return jax.jit(jax.vmap(ascend))(directions, starts)


def _assert_inside_interval(out_lower, out_upper, ibp_lower, ibp_upper):
  """The linear bounds are intersected with IBP; where they pinch an output to a point, the
  backward pass's end may pass IBP's other end by rounding (`max(upper, lower)`), hence the
  float64 tolerance."""
  slack = TOLERANCE_64 * (1 + np.abs(ibp_lower) + np.abs(ibp_upper))
  assert np.all(np.asarray(out_lower) >= np.asarray(ibp_lower) - slack)
  assert np.all(np.asarray(out_upper) <= np.asarray(ibp_upper) + slack)


def _assert_relaxed(fn, methods=METHODS, seed=3, num_inputs=4, strictly_tighter=True):
  """`fn`'s linear bounds contain samples, corners and PGD ends, lie inside IBP's, and (with
  `strictly_tighter`) are strictly tighter than IBP on average (for a network with one nonlinear
  step, an interval step there would give exactly IBP)."""
  rng = np.random.default_rng(seed)
  lower = rng.normal(size=(2, num_inputs))
  upper = lower + 0.6
  ibp_lower, ibp_upper = (np.asarray(b) for b in jax.jit(interval(fn))(lower, upper))
  num_outputs = ibp_lower.shape[-1]
  points = np.concatenate([
      lower + rng.uniform(size=(500,) + lower.shape) * (upper - lower), _corners(lower, upper),
      np.asarray(_pgd_ends(fn, jnp.asarray(lower), jnp.asarray(upper), num_outputs))])
  values = np.asarray(jax.vmap(fn)(jnp.asarray(points)))
  for method in methods:
    out_lower, out_upper = (np.asarray(b)
                            for b in jax.jit(linear_bounds(fn, method))(lower, upper))
    _assert_between(values, out_lower[None], out_upper[None], 1e-10)
    _assert_inside_interval(out_lower, out_upper, ibp_lower, ibp_upper)
    if strictly_tighter:
      assert np.mean(out_upper - out_lower) < 0.99 * np.mean(ibp_upper - ibp_lower), method


def _one_hidden_layer(step, hidden=16, seed=4, num_inputs=4):
  """`W2 step(W1 x + b1) + b2`; `step` may change the width (pooling)."""
  rng = np.random.default_rng(seed)
  w1, b1 = rng.normal(size=(num_inputs, hidden)), rng.normal(size=hidden) * 0.3
  width = jax.eval_shape(step, jax.ShapeDtypeStruct((1, hidden), jnp.float64)).shape[-1]
  w2, b2 = rng.normal(size=(width, 3)) / 4, rng.normal(size=3)
  return lambda x: step(x @ w1 + b1) @ w2 + b2


@pytest.mark.parametrize('slope', [0.01, pytest.param(0.2, marks=pytest.mark.slow)])
def test_leaky_relu_is_relaxed(slope):
  """`jax.nn.leaky_relu` (a select_n of a comparison, not a max) is relaxed, soundly."""
  _assert_relaxed(_one_hidden_layer(lambda h: jax.nn.leaky_relu(h, slope)))


def _max_pool_valid(h):
  return nn.max_pool(h.reshape(-1, 4, 4, 1), (2, 2), (2, 2)).reshape(h.shape[0], -1)


def test_max_pooling_is_relaxed():
  """Max pooling becomes gathers and maxes of two values (`linear_rules.window_max_gathers`)."""
  _assert_relaxed(_one_hidden_layer(_max_pool_valid), methods=('crown_ibp',))


@pytest.mark.slow
@pytest.mark.parametrize('pattern', list(SELECT_PATTERNS))
def test_select_patterns_are_relaxed(pattern):
  # 'jump' (discontinuous): its lines are loose here, no tighter than IBP; soundness only.
  _assert_relaxed(_one_hidden_layer(SELECT_PATTERNS[pattern][0]),
                  strictly_tighter=pattern != 'jump')


@pytest.mark.slow
@pytest.mark.parametrize('step', [
    _max_pool_valid,
    lambda h: jnp.maximum(h[:, :8], h[:, 8:]),
    lambda h: nn.max_pool(h.reshape(-1, 4, 4, 1), (3, 3), (2, 2), 'SAME').reshape(h.shape[0], -1),
    lambda h: jnp.max(h.reshape(-1, 4, 4), axis=1),
    lambda h: jnp.minimum(h[:, :8], h[:, 8:]),
    lambda h: jnp.power(h, 2.),
], ids=['max_pool_valid', 'max_of_two', 'max_pool_same', 'reduce_max', 'min_of_two', 'pow_2'])
def test_pooling_and_products_are_relaxed(step):
  _assert_relaxed(_one_hidden_layer(step))


@pytest.mark.slow
@pytest.mark.parametrize('activation', [jax.nn.hard_tanh, jax.nn.elu, jax.nn.gelu],
                         ids=['hard_tanh', 'elu', 'gelu'])
def test_partly_relaxed_activations_are_sound(activation):
  """Nested selects (hard_tanh), expm1 (elu), integer_pow 3 (gelu): steps that fall back to their
  interval bound beside relaxed ones; sound, never looser than IBP."""
  fn = _one_hidden_layer(activation)
  rng = np.random.default_rng(5)
  lower = rng.normal(size=(2, 4))
  upper = lower + 0.6
  ibp_lower, ibp_upper = jax.jit(interval(fn))(lower, upper)
  points = np.concatenate([lower + rng.uniform(size=(500,) + lower.shape) * (upper - lower),
                           _corners(lower, upper),
                           np.asarray(_pgd_ends(fn, jnp.asarray(lower), jnp.asarray(upper), 3))])
  values = np.asarray(jax.vmap(fn)(jnp.asarray(points)))
  for method in METHODS:
    out_lower, out_upper = jax.jit(linear_bounds(fn, method))(lower, upper)
    _assert_between(values, np.asarray(out_lower)[None], np.asarray(out_upper)[None], 1e-10)
    _assert_inside_interval(out_lower, out_upper, ibp_lower, ibp_upper)


def test_select_with_a_constant_branch_of_a_value_that_may_be_nan():
  """`where(s > -10, s, 100)` with `s = sqrt(h)` NaN where `h < 0`: there the output is 100, which
  a relaxation in `s` (exact on `s`'s interval, where `s > -10`) would exclude; the NaN flag makes
  the step fall back to its interval bound, which holds 100."""
  def fn(x):
    s = jnp.sqrt(x[:, :1] - x[:, 1:]) * 2 - 1
    return jnp.where(s > -10, s, 100.)

  lower, upper = jnp.asarray([[0., 0.]]), jnp.asarray([[1., 0.5]])
  points = np.array([[[0.1, 0.4]], [[1., 0.]], [[0.5, 0.25]]])
  values = np.asarray(jax.vmap(fn)(jnp.asarray(points)))
  assert values[0, 0, 0] == 100.
  # The step is relaxed (or not) alike in 'crown'.
  out_lower, out_upper = jax.jit(linear_bounds(fn, 'crown_ibp'))(lower, upper)
  _assert_between(values, np.asarray(out_lower)[None], np.asarray(out_upper)[None])
