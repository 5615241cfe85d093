"""Differential soundness fuzzer of `jaxcert.bounds.linear` (docs/linear_bounds.md §3.6).

The interval fuzzer's random functions and boxes (tests/test_interval_fuzz.py: elementwise
functions, affine maps, convolutions, products, reductions, pooling, sort, selections, casts,
nested calls, `l2_normalize`...) go through `linear_bounds` with CROWN-IBP and CROWN, which relax
what they can and fall back to the interval rule elsewhere. Either `linear_bounds` raises a
ValueError / NotImplementedError naming the primitive, or every sampled point, box corner and
sign-gradient ascent and descent end has a value (evaluated in float64) within the bounds:

* rounded to nearest (float64 boxes): up to 1e-12 of the magnitudes involved, the output's and
  its interval bound's (the backward pass sums terms of the intermediate values' size);
* outward (`rounding='outward'`, float32 and float64 boxes): the bounds of the real-valued
  function, up to the float64 reference's own rounding (1e-12 of the output's magnitude).

The default run checks that the fuzzer catches a known bug; `-m slow` runs it, and random
convolutional networks through the patches pass.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import interval
from jaxcert.bounds import linear
import test_interval_fuzz as fuzz
from test_interval_fuzz import _full_precision_matmuls  # pylint: disable=unused-import  (autouse)

RTOL = 1e-12
METHODS = ('crown_ibp', 'crown')
# (dtype of the box, rounding) pairs each function is bounded in.
MODES = (('float64', 'nearest'), ('float32', 'outward'), ('float64', 'outward'))


@dataclasses.dataclass
class LinearFuzzResult:
  checks: int = 0
  errors: int = 0
  violations: list = dataclasses.field(default_factory=list)


def _batched(fn):
  """`fn` of one (SIZE,) vector as a function of a batch of one (linear_bounds' convention)."""
  return lambda batch: fn(batch[0])[None]


def _bounds(fn, lower, upper, method, rounding):
  """`linear_bounds` and `interval` of `fn` on one box, as float64 numpy arrays; None if the
  library refused the function with a clear error."""
  box = jnp.asarray(lower)[None], jnp.asarray(upper)[None]
  try:
    out = jax.jit(linear.linear_bounds(_batched(fn), method, rounding=rounding))(*box)
    ibp = interval(_batched(fn), rounding=rounding)(*box)
  except (ValueError, NotImplementedError) as error:
    message = str(error)
    assert len(message) > 40 and fuzz._INFORMATIVE.search(message), message
    return None
  return [np.asarray(a[0], np.float64) for a in (*out, *ibp)]


def check_function(rng, fn, description, dtype, rounding, *, num_samples, num_attack_steps,
                   result):
  """`linear_bounds` of `fn` over a random box hold at sampled and attacked points."""
  lower, upper, kind = fuzz.random_box(rng, dtype)
  with jax.enable_x64(dtype == 'float64'):
    bounds = {method: _bounds(fn, lower, upper, method, rounding) for method in METHODS}
  points = fuzz._sample_points(rng, lower, upper, num_samples)
  with jax.enable_x64(True):
    if num_attack_steps:
      coordinates = rng.choice(fuzz.SIZE, 2, replace=False)
      attacked = fuzz._sign_gradient_ends(fn, lower.astype(np.float64), upper.astype(np.float64),
                                          coordinates, num_attack_steps)
      points = np.concatenate([points, np.clip(attacked.astype(dtype), lower, upper)])
    values = np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(points, jnp.float64)))
  finite = lambda a: np.where(np.isfinite(a), np.abs(a), 0)
  for method, found in bounds.items():
    if found is None:
      result.errors += 1
      continue
    out_lower, out_upper, ibp_lower, ibp_upper = found
    where = (f'{method} {rounding} bounds of {description} on a {kind} {dtype} box '
             f'[{lower.tolist()}, {upper.tolist()}]')
    assert not np.isnan(out_lower).any() and not np.isnan(out_upper).any(), where
    assert np.all(out_lower <= out_upper), (where, out_lower, out_upper)
    scale = np.maximum(finite(values), np.maximum(finite(out_lower), finite(out_upper)))
    if rounding == 'nearest':
      scale = np.maximum(scale, np.maximum(finite(ibp_lower), finite(ibp_upper)))
    tolerance = RTOL * scale + np.finfo(np.float64).tiny
    outside = ~np.isnan(values) & ((values < out_lower - tolerance)
                                   | (values > out_upper + tolerance))
    result.checks += 1
    if outside.any():
      index = np.argwhere(outside)[0]
      result.violations.append(
          f'{where}: f({points[index[0]].tolist()})[{index[1]}] = {values[tuple(index)]} '
          f'outside [{out_lower[index[1]]}, {out_upper[index[1]]}]')


def run_fuzzer(seed, num_functions, *, num_samples, num_attack_steps):
  rng = np.random.default_rng(seed)
  result = LinearFuzzResult()
  for _ in range(num_functions):
    fn, description = fuzz.random_function(rng)
    for dtype, rounding in MODES:
      check_function(rng, fn, description, dtype, rounding, num_samples=num_samples,
                     num_attack_steps=num_attack_steps, result=result)
  return result


def test_fuzzer_detects_a_cast_taken_as_the_identity(monkeypatch):
  """Not vacuous: with casts to another dtype taken as affine (the bug it found: bfloat16 and
  float16 casts were the identity in the backward pass) a float16 round trip is caught."""
  monkeypatch.setattr(linear, '_changes_dtype', lambda invals, out_dtype: False)
  round_trip = lambda x: x.astype(jnp.float16).astype(x.dtype) * 3 + 1
  result = LinearFuzzResult()
  rng = np.random.default_rng(5)
  for _ in range(3):
    check_function(rng, round_trip, 'float16 round trip', 'float64', 'nearest',
                   num_samples=100, num_attack_steps=0, result=result)
  assert result.violations


@pytest.mark.slow
def test_linear_fuzzer_long_run():
  """3 seeds x 20 functions, each bounded by CROWN-IBP and CROWN in float64 to nearest and in
  float32 and float64 outwards, with 1000 sampled points and 10 sign-gradient steps."""
  total = LinearFuzzResult()
  for seed in range(200, 203):
    result = run_fuzzer(seed, 20, num_samples=1000, num_attack_steps=10)
    total.checks += result.checks
    total.errors += result.errors
    total.violations += result.violations
    print(f'seed {seed}: {total.checks} checks, {total.errors} clear errors, '
          f'{len(total.violations)} violations so far', flush=True)
  assert not total.violations, '\n'.join(total.violations[:5])


def check_spec_bounds(rng, fn, description, dtype, rounding, *, num_samples, result):
  """`linear_spec_bounds` and `linear_spec_lower_bounds` (docs/linear_bounds.md §6) of random
  rows `c` hold for `c . fn(x)` at sampled points; the lower-only variant equals the first half."""
  lower, upper, kind = fuzz.random_box(rng, dtype)
  spec = rng.normal(size=(1, 4, fuzz.SIZE)).astype(dtype)
  with jax.enable_x64(dtype == 'float64'):
    box = jnp.asarray(lower)[None], jnp.asarray(upper)[None], jnp.asarray(spec)
    try:
      spec_lower, spec_upper = jax.jit(linear.linear_spec_bounds(
          _batched(fn), 'crown', rounding=rounding))(*box)
      lower_only = jax.jit(linear.linear_spec_lower_bounds(
          _batched(fn), 'crown', rounding=rounding))(*box)
    except (ValueError, NotImplementedError) as error:
      assert len(str(error)) > 40 and fuzz._INFORMATIVE.search(str(error)), str(error)
      result.errors += 1
      return
  spec_lower, spec_upper, lower_only = (np.asarray(a[0], np.float64)
                                        for a in (spec_lower, spec_upper, lower_only))
  points = fuzz._sample_points(rng, lower, upper, num_samples)
  with jax.enable_x64(True):
    values = np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(points, jnp.float64)))
  rows = spec[0].astype(np.float64)
  spec_values = values @ rows.T
  tolerance = RTOL * (np.abs(values) @ np.abs(rows).T) + np.finfo(np.float64).tiny
  where = (f'{rounding} spec bounds of {description} on a {kind} {dtype} box '
           f'[{lower.tolist()}, {upper.tolist()}], rows {rows.tolist()}')
  np.testing.assert_array_equal(lower_only, spec_lower, err_msg=where)
  result.checks += 1
  outside = ~np.isnan(spec_values) & ((spec_values < spec_lower - tolerance)
                                      | (spec_values > spec_upper + tolerance))
  if outside.any():
    index = np.argwhere(outside)[0]
    result.violations.append(f'{where}: row {index[1]} at {points[index[0]].tolist()} = '
                             f'{spec_values[tuple(index)]} outside [{spec_lower[index[1]]}, '
                             f'{spec_upper[index[1]]}]')


@pytest.mark.slow
def test_spec_bounds_fuzzer():
  """20 functions, CROWN's specification bounds in float64 to nearest and in float32 outwards."""
  rng = np.random.default_rng(250)
  result = LinearFuzzResult()
  for _ in range(20):
    fn, description = fuzz.random_function(rng)
    for dtype, rounding in MODES[:2]:
      check_spec_bounds(rng, fn, description, dtype, rounding, num_samples=500, result=result)
  assert not result.violations, '\n'.join(result.violations[:5])
  assert result.checks >= 20


# --- Random convolutional networks (the patches pass of docs/linear_bounds.md §5.1). -----------

_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
_ACTIVATIONS = {
    'relu': jax.nn.relu, 'leaky_relu': lambda h: jax.nn.leaky_relu(h, 0.125), 'abs': jnp.abs,
    'tanh': jnp.tanh, 'sigmoid': jax.nn.sigmoid, 'square': jnp.square, 'none': lambda h: h,
    'max_with_constant': lambda h: jnp.maximum(h, 0.25), 'gelu': jax.nn.gelu,
    'softplus': jax.nn.softplus,
}
_POOLS = {'max_pool': nn.max_pool, 'avg_pool': nn.avg_pool}


def _float32_exact(values):
  """`values` rounded to float32 (as float64): the same weights in either dtype."""
  return np.asarray(values, np.float32).astype(np.float64)


def _output_shape(layer, shape):
  return jax.eval_shape(layer, jax.ShapeDtypeStruct((1, *shape), jnp.float64)).shape[1:]


def random_convnet(rng):
  """An NHWC network of 1-3 random layers (convolutions of random kernel, stride, dilation and
  padding, each followed by a random activation; max or average pooling; per-channel affine
  maps), then a dense head (optionally ReLU and a second dense layer); and its description."""
  size, channels = int(rng.integers(5, 10)), int(rng.integers(1, 4))
  shape, layers, names = (size, size, channels), [], []
  for _ in range(rng.integers(1, 4)):
    kind = rng.choice(['conv', 'conv', 'pool', 'affine'])
    if kind == 'conv':
      k, stride, dilation = (int(rng.integers(1, 4)), int(rng.integers(1, 3)),
                             int(rng.choice([1, 1, 2])))
      padding = rng.choice(['SAME', 'VALID', 'explicit'])
      padding = (tuple(tuple(int(p) for p in rng.integers(0, 3, 2)) for _ in range(2))
                 if padding == 'explicit' else str(padding))
      kernel = _float32_exact(rng.normal(size=(k, k, shape[2], int(rng.integers(1, 5))))
                              / np.sqrt(k * k * shape[2]))
      bias = _float32_exact(rng.normal(size=kernel.shape[3]) * 0.3)
      conv = lambda x, kernel=kernel, stride=stride, padding=padding, dilation=dilation, bias=bias: (
          jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (stride, stride), padding,
                                       rhs_dilation=(dilation, dilation),
                                       dimension_numbers=_DIMENSION_NUMBERS) + bias.astype(x.dtype))
      if min(_output_shape(conv, shape)[:2]) < 1:
        continue
      activation = str(rng.choice(sorted(_ACTIVATIONS)))
      layer = lambda x, conv=conv, activation=_ACTIVATIONS[activation]: activation(conv(x))
      name = f'conv {k}x{k} stride {stride} dilation {dilation} {padding}, {activation}'
    elif kind == 'pool' and min(shape[:2]) >= 2:
      pool_name = str(rng.choice(sorted(_POOLS)))
      stride, padding = int(rng.integers(1, 3)), str(rng.choice(['VALID', 'SAME']))
      layer = lambda x, pool=_POOLS[pool_name], stride=stride, padding=padding: pool(
          x, (2, 2), (stride, stride), padding)
      name = f'{pool_name} stride {stride} {padding}'
    elif kind == 'affine':
      scale, shift = _float32_exact(rng.uniform(-1.5, 1.5, shape[2])), _float32_exact(
          rng.normal(size=shape[2]))
      layer = lambda x, scale=scale, shift=shift: x * scale.astype(x.dtype) + shift.astype(x.dtype)
      name = 'per-channel affine'
    else:
      continue
    shape = _output_shape(layer, shape)
    layers.append(layer)
    names.append(name)
  outputs = int(rng.integers(1, 5))
  dense = _float32_exact(rng.normal(size=(int(np.prod(shape)), outputs)) / np.sqrt(np.prod(shape)))
  second = _float32_exact(rng.normal(size=(outputs, 3))) if rng.random() < 0.5 else None

  def fn(x):
    for layer in layers:
      x = layer(x)
    x = x.reshape(x.shape[0], -1) @ dense.astype(x.dtype)
    return x if second is None else jax.nn.relu(x) @ second.astype(x.dtype)

  return fn, (size, size, channels), ' -> '.join(names + ['dense' if second is None else 'dense, relu, dense'])


def check_convnet(rng, dtype='float64', rounding='nearest', *, num_samples=200,
                  num_attack_steps=20):
  """CROWN-IBP and CROWN (patches and dense passes) bounds of a random network on two random
  boxes of `dtype`: inside IBP's, sampled points, corners and PGD ends (evaluated in float64)
  inside; rounded to nearest, the two CROWN passes equal. Returns the network's description, or
  None where the outward mode refused it (a step in float64: `gelu`'s numpy constants)."""
  fn, shape, description = random_convnet(rng)
  center = rng.normal(size=(2, *shape))
  radius = rng.uniform(0, 1, size=center.shape) * rng.choice([0.01, 0.1, 0.5])
  lower, upper = (center - radius).astype(dtype), (center + radius).astype(dtype)
  try:
    found = {(method, patches): [np.asarray(a, np.float64) for a in jax.jit(linear.linear_bounds(
        fn, method, patches=patches, rounding=rounding))(lower, upper)]
             for method, patches in (('crown_ibp', True), ('crown', True), ('crown', False))}
  except NotImplementedError as error:
    assert rounding == 'outward' and 'one floating-point dtype' in str(error), str(error)
    return None
  ibp_lower, ibp_upper = (np.asarray(a, np.float64)
                          for a in interval(fn, rounding=rounding)(lower, upper))
  lower, upper = lower.astype(np.float64), upper.astype(np.float64)
  samples = lower + rng.random((num_samples, *lower.shape)) * (upper - lower)
  corners = np.where(rng.random((num_samples, *lower.shape)) < 0.5, upper, lower)
  num_outputs = ibp_lower.shape[1]

  def ascent_end(direction):
    objective = lambda x: jnp.sum(fn(x) @ direction)
    step = 2.5 * (upper - lower) / num_attack_steps
    return jax.lax.fori_loop(0, num_attack_steps, lambda _, x: jnp.clip(
        x + step * jnp.sign(jax.grad(objective)(x)), lower, upper), (lower + upper) / 2)

  directions = jnp.concatenate([jnp.eye(num_outputs), -jnp.eye(num_outputs)])
  ends = np.asarray(jax.jit(jax.vmap(ascent_end))(directions))
  values = np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(np.concatenate([samples, corners, ends]))))
  magnitude = 1 + np.maximum(np.abs(ibp_lower), np.abs(ibp_upper))
  tolerance = RTOL * magnitude
  # The linear interpreter's own interval pass (max pooling as gathers and maxes, §3.2) rounds
  # outwards in another order than `interval`: its bound may be an ulp wider.
  ibp_tolerance = tolerance if rounding == 'nearest' else 8 * np.finfo(dtype).eps * magnitude
  for (method, patches), (out_lower, out_upper) in found.items():
    where = f'{method} (patches {patches}) {rounding} {dtype} bounds of {description}'
    assert np.all(out_lower >= ibp_lower - ibp_tolerance), where
    assert np.all(out_upper <= ibp_upper + ibp_tolerance), where
    assert np.all(values >= out_lower - tolerance), (where, np.min(values - out_lower))
    assert np.all(values <= out_upper + tolerance), (where, np.min(out_upper - values))
  if rounding == 'nearest':
    for patched, dense in zip(found['crown', True], found['crown', False]):
      np.testing.assert_allclose(patched, dense, rtol=0, atol=1e-9 * (1 + np.max(np.abs(dense))),
                                 err_msg=description)
  return description


@pytest.mark.slow
@pytest.mark.parametrize('dtype, rounding', [('float64', 'nearest'), ('float32', 'outward')])
def test_random_convnets_sound_with_patches_equal_to_dense_passes(dtype, rounding):
  """24 random networks (two boxes each): docs/linear_bounds.md §5.1's patches on strided,
  dilated, padded convolutions, pooling and every activation the rules relax (only ReLU in the
  outward mode, whose bounds hold for the real-valued network, §8.1)."""
  rng = np.random.default_rng(300)
  with jax.enable_x64(True):
    descriptions = [check_convnet(rng, dtype, rounding) for _ in range(24)]
  checked = [d for d in descriptions if d is not None]
  # Outwards, those with `gelu` are refused (a float64 step under x64: its numpy constants).
  assert len(checked) >= 20 and any('conv' in d and 'pool' in d for d in checked)
