"""Differential soundness fuzzer of `jaxcert.bounds.interval` (docs/bounds.md, "What is guaranteed").

Random functions are built from the supported primitives: elementwise functions (some defined
only on half-lines), affine maps, convolutions, products of two bounded operands, reductions,
pooling, sort, `where`/`select_n` with bounded predicates, comparisons, `isnan`/`isfinite`,
casts (float16, int32, int8, uint8), same-operand patterns (`x - x`, `x * x`, `x == x`), nested
`jit`/`vmap`/`checkpoint`, `custom_jvp` (`jax.nn.relu`, `jax.nn.gelu`...), `l2_normalize` (also
under `vmap`) and BatchNorm-style affine layers. Random boxes are zero-width, span 0, have huge
or tiny magnitudes, or leave a function's domain. For each function and box, in float32 and in
float64, either `interval` raises a ValueError / NotImplementedError whose message names the
primitive (or the box problem), or every sampled point, box corner and end point of a
sign-gradient ascent and descent has a value within the bounds, up to a rounding tolerance
relative to the magnitudes involved. Values are evaluated in float64 (float32 points are exact
there), i.e. the reference is the real function up to float64 rounding; NaN values are outside
the guarantee (they are where the function is undefined).

The default run checks a few functions; `-m slow` runs the long variant whose coverage is
written in docs/bounds.md.
"""

import dataclasses
import re

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert import bounds
from jaxcert.bounds import interval

SIZE = 6  # Every fuzzed function maps a vector of SIZE entries to SIZE entries.
RTOL = {'float32': 1e-5, 'float64': 1e-12}
MAGNITUDE = {'float32': (1e30, 1e-30), 'float64': (1e150, 1e-150)}  # huge, tiny


def _constant(rng, shape=(), scale=1.):
  """Random constants representable in float32, so float32 and float64 see the same function."""
  return np.asarray(rng.normal(size=shape) * scale, np.float32).astype(np.float64)


def _typed(value, x):
  return jnp.asarray(value, x.dtype)


def _elementwise_ops():
  """Name -> builder(rng) -> elementwise function of one array."""
  return {
      'exp': lambda rng: jnp.exp,
      'tanh': lambda rng: jnp.tanh,
      'sigmoid': lambda rng: jax.nn.sigmoid,
      'erf': lambda rng: lax.erf,
      'atan': lambda rng: jnp.arctan,
      'asinh': lambda rng: jnp.arcsinh,
      'sinh': lambda rng: jnp.sinh,
      'cbrt': lambda rng: jnp.cbrt,
      'expm1': lambda rng: jnp.expm1,
      'log1p': lambda rng: jnp.log1p,
      'sqrt': lambda rng: jnp.sqrt,
      'log': lambda rng: jnp.log,
      'rsqrt': lambda rng: lax.rsqrt,
      'abs': lambda rng: jnp.abs,
      'square': lambda rng: jnp.square,
      'cube': lambda rng: lambda x: x**3,
      'reciprocal': lambda rng: lambda x: 1 / x,
      'pow': lambda rng: (lambda e: lambda x: x**_typed(e, x))(
          rng.choice([0.5, 1.5, -0.5, 2., 3., -1., 0.])),
      'sign': lambda rng: jnp.sign,
      'floor': lambda rng: jnp.floor,
      'round': lambda rng: jnp.round,
      'relu': lambda rng: jax.nn.relu,
      'gelu': lambda rng: jax.nn.gelu,
      'silu': lambda rng: jax.nn.silu,
      'leaky_relu': lambda rng: jax.nn.leaky_relu,
      'elu': lambda rng: jax.nn.elu,
      'softplus': lambda rng: jax.nn.softplus,
      'clip': lambda rng: (lambda a, b: lambda x: jnp.clip(x, _typed(min(a, b), x),
                                                            _typed(max(a, b), x)))(
          *_constant(rng, (2,))),
      'scale_shift': lambda rng: (lambda a, b: lambda x: x * _typed(a, x) + _typed(b, x))(
          *_constant(rng, (2,), 3.)),
      'isnan_guard': lambda rng: (lambda c: lambda x: jnp.where(jnp.isnan(x), _typed(c, x), x))(
          _constant(rng)),
      'isfinite_guard': lambda rng: (
          lambda c: lambda x: jnp.where(jnp.isfinite(x), x, _typed(c, x)))(_constant(rng)),
      'nan_to_num': lambda rng: lambda x: jnp.nan_to_num(x, nan=2., posinf=3., neginf=-3.),
      'where_compare': lambda rng: (lambda c, a: lambda x: jnp.where(
          x > _typed(c, x), x, x * _typed(a, x)))(*_constant(rng, (2,))),
      'compare_to_float': lambda rng: (lambda c: lambda x: (x >= _typed(c, x)).astype(x.dtype)
                                       + x)(_constant(rng)),
      'same_sub': lambda rng: lambda x: x - x + 1,
      'same_mul': lambda rng: lambda x: x * x,
      'same_equal': lambda rng: lambda x: jnp.where(x == x, x, 5.),
      'same_less': lambda rng: lambda x: jnp.where(x < x, 7., x),
      'cast_float16': lambda rng: lambda x: x.astype(jnp.float16).astype(x.dtype),
      'cast_int32': lambda rng: (lambda c: lambda x: (x * _typed(c, x)).astype(jnp.int32)
                                 .astype(x.dtype))(_constant(rng, (), 10.)),
      'cast_int8': lambda rng: lambda x: x.astype(jnp.int8).astype(x.dtype),
      'cast_uint8': lambda rng: lambda x: (x * 100).astype(jnp.uint8).astype(x.dtype),
      'int_add': lambda rng: lambda x: (x.astype(jnp.int32) + jnp.int32(2**31 - 3)).astype(
          x.dtype),
  }


def _permute(x, permutation):
  """`x[permutation]`, the index array built in the current (x64 or not) mode."""
  return x[jnp.asarray(permutation)]


def _vector_ops():
  """Name -> builder(rng) -> function (SIZE,) -> (SIZE,) mixing entries."""
  perm = lambda rng: tuple(int(i) for i in rng.permutation(SIZE))
  return {
      'affine': lambda rng: (lambda w, b: lambda x: _typed(w, x) @ x + _typed(b, x))(
          _constant(rng, (SIZE, SIZE)), _constant(rng, (SIZE,))),
      'sparse_affine': lambda rng: (lambda w: lambda x: _typed(w, x) @ x)(
          _constant(rng, (SIZE, SIZE)) * (rng.random((SIZE, SIZE)) < 0.3)),
      'conv': lambda rng: (lambda k: lambda x: lax.conv_general_dilated(
          x[None, :, None], _typed(k, x), (1,), 'SAME',
          dimension_numbers=('NWC', 'WIO', 'NWC'))[0, :, 0])(_constant(rng, (3, 1, 1))),
      'bilinear': lambda rng: (lambda p: lambda x: jnp.ravel(
          x.reshape(3, 2).T @ _permute(x, p).reshape(3, 2)) @ jnp.ones((4, SIZE), x.dtype) / 4)(perm(rng)),
      'add_perm': lambda rng: (lambda p: lambda x: x + _permute(x, p))(perm(rng)),
      'sub_perm': lambda rng: (lambda p: lambda x: x - _permute(x, p))(perm(rng)),
      'mul_perm': lambda rng: (lambda p: lambda x: x * _permute(x, p))(perm(rng)),
      'div_perm': lambda rng: (lambda p: lambda x: x / _permute(x, p))(perm(rng)),
      'max_perm': lambda rng: (lambda p: lambda x: jnp.maximum(x, _permute(x, p)))(perm(rng)),
      'min_perm': lambda rng: (lambda p: lambda x: jnp.minimum(x, _permute(x, p)))(perm(rng)),
      'where_perm': lambda rng: (lambda p: lambda x: jnp.where(x > _permute(x, p), x, -_permute(x, p)))(perm(rng)),
      'center': lambda rng: lambda x: x - jnp.mean(x),
      'cumsum': lambda rng: jnp.cumsum,
      'sum': lambda rng: lambda x: jnp.broadcast_to(jnp.sum(x), x.shape),
      'max': lambda rng: lambda x: jnp.broadcast_to(jnp.max(x), x.shape),
      'min': lambda rng: lambda x: jnp.broadcast_to(jnp.min(x), x.shape),
      'logsumexp': lambda rng: lambda x: jnp.broadcast_to(jax.nn.logsumexp(x), x.shape),
      'sort': lambda rng: jnp.sort,
      'max_pool': lambda rng: lambda x: nn.max_pool(x[None, :, None], (2,), (1,), 'SAME')[0, :, 0],
      'avg_pool': lambda rng: lambda x: nn.avg_pool(x[None, :, None], (3,), (1,), 'SAME')[0, :, 0],
      'l2_normalize': lambda rng: (lambda eps: lambda x: bounds.l2_normalize(x, epsilon=eps))(
          rng.choice([0., 1e-12, 0.5])),
      'l2_normalize_vmap': lambda rng: lambda x: jax.vmap(
          lambda v: bounds.l2_normalize(v, axis=0))(x.reshape(2, 3)).ravel(),
      'l2_normalize_plain': lambda rng: lambda x: x * lax.rsqrt(jnp.sum(x * x) + 1e-12),
      'batch_norm': lambda rng: (lambda mean, var, scale, bias: lambda x: (
          (x - _typed(mean, x)) * lax.rsqrt(_typed(var, x) + 1e-5) * _typed(scale, x)
          + _typed(bias, x)))(_constant(rng, (SIZE,)), np.abs(_constant(rng, (SIZE,))) + 0.1,
                              _constant(rng, (SIZE,)), _constant(rng, (SIZE,))),
  }


_ELEMENTWISE = _elementwise_ops()
_VECTOR = _vector_ops()


def _random_layer(rng, depth=0):
  """One random layer: a primitive-level op or a transformation (jit/vmap/checkpoint) of one."""
  kind = rng.random()
  if kind < 0.45:
    name = rng.choice(sorted(_ELEMENTWISE))
    return name, _ELEMENTWISE[name](rng)
  if kind < 0.85 or depth > 0:
    name = rng.choice(sorted(_VECTOR))
    return name, _VECTOR[name](rng)
  inner_name, inner = _random_layer(rng, depth + 1)
  wrapper = rng.choice(['jit', 'vmap', 'checkpoint'])
  if wrapper == 'jit':
    return f'jit({inner_name})', jax.jit(inner)
  if wrapper == 'checkpoint':
    return f'checkpoint({inner_name})', jax.checkpoint(inner)
  if inner_name in _ELEMENTWISE:
    return f'vmap({inner_name})', jax.vmap(inner)
  return f'vmap({inner_name})', lambda x: jax.vmap(inner)(jnp.stack([x, x[::-1]]))[0]


def random_function(rng):
  """A composition of 1-4 random layers, and its description."""
  layers = [_random_layer(rng) for _ in range(rng.integers(1, 5))]

  def fn(x):
    for _, layer in layers:
      x = layer(x)
    return x

  return fn, ' -> '.join(name for name, _ in layers)


def random_box(rng, dtype):
  """A random box of SIZE entries, of one of several kinds; returns (lower, upper, kind)."""
  huge, tiny = MAGNITUDE[dtype]
  kind = rng.choice(['standard', 'zero_width', 'spanning_zero', 'huge', 'tiny', 'negative',
                     'mixed', 'near_zero'])
  center = rng.normal(size=SIZE) * 2
  radius = rng.uniform(0, 1, SIZE)
  if kind == 'zero_width':
    radius = np.zeros(SIZE)
  elif kind == 'spanning_zero':
    center, radius = rng.uniform(-0.5, 0.5, SIZE), rng.uniform(0.5, 2, SIZE)
  elif kind == 'huge':
    center, radius = center * huge, radius * huge
  elif kind == 'tiny':
    center, radius = center * tiny, radius * tiny
  elif kind == 'negative':
    center = -np.abs(center) - 0.1
  elif kind == 'mixed':
    magnitude = 10.**rng.uniform(np.log10(tiny), np.log10(huge), SIZE)
    center, radius = center * magnitude, radius * magnitude * (rng.random(SIZE) < 0.7)
  elif kind == 'near_zero':
    center, radius = rng.uniform(-1e-3, 1e-3, SIZE), rng.uniform(0, 1e-3, SIZE)
  lower = np.asarray(center - radius, dtype)
  upper = np.asarray(center + radius, dtype)
  return np.minimum(lower, upper), np.maximum(lower, upper), kind


def _sample_points(rng, lower, upper, num_samples):
  """Ends, centre, the point nearest 0, random corners, uniform points, all in the box's dtype."""
  shape = (num_samples // 2, SIZE)
  lower64, upper64 = lower.astype(np.float64), upper.astype(np.float64)
  corners = np.where(rng.random(shape) < 0.5, upper64, lower64)
  uniform = lower64 + rng.random(shape) * (upper64 - lower64)
  special = np.stack([lower64, upper64, lower64 / 2 + upper64 / 2, np.clip(0., lower64, upper64)])
  points = np.concatenate([special, corners, uniform]).astype(lower.dtype)
  return np.clip(points, lower, upper)  # Rounding to the dtype stays inside the box.


def _sign_gradient_ends(fn, lower, upper, coordinates, num_steps):
  """End points of sign-gradient ascent and descent on `fn(x)[coordinate]` within the box."""
  lower, upper = jnp.asarray(lower), jnp.asarray(upper)
  width = jnp.where(jnp.isfinite(upper - lower), upper - lower, 0)
  step_size = 2.5 * width / num_steps

  def attack(coordinate, direction):
    objective = lambda x: direction * fn(x)[coordinate]

    def step(x, _):
      gradient = jnp.nan_to_num(jax.grad(objective)(x))
      return jnp.clip(x + step_size * jnp.sign(gradient), lower, upper), None

    x, _ = lax.scan(step, lower / 2 + upper / 2, None, length=num_steps)
    return x

  directions = jnp.asarray([-1., 1.], lower.dtype)
  ends = jax.jit(jax.vmap(jax.vmap(attack, (None, 0)), (0, None)))(
      jnp.asarray(coordinates), directions)
  return np.asarray(ends).reshape(-1, SIZE)


@dataclasses.dataclass
class FuzzResult:
  functions: int = 0
  points: int = 0
  errors: int = 0
  violations: list = dataclasses.field(default_factory=list)


_INFORMATIVE = re.compile(r'`\w+`|box|divisor|eps')


def check_function(rng, fn, description, dtype, *, num_samples, num_attack_steps, result):
  """Bounds of `fn` over a random box hold at sampled and attacked points, or raise clearly."""
  lower, upper, kind = random_box(rng, dtype)
  with jax.enable_x64(dtype == 'float64'):
    try:
      out_lower, out_upper = interval(fn)(jnp.asarray(lower), jnp.asarray(upper))
    except (ValueError, NotImplementedError) as error:
      message = str(error)
      assert len(message) > 40 and _INFORMATIVE.search(message), (description, kind, message)
      result.errors += 1
      return
    out_lower, out_upper = np.asarray(out_lower, np.float64), np.asarray(out_upper, np.float64)
  where = f'{description} on a {kind} {dtype} box [{lower.tolist()}, {upper.tolist()}]'
  assert out_lower.shape == out_upper.shape == (SIZE,), where
  assert not np.isnan(out_lower).any() and not np.isnan(out_upper).any(), where
  assert np.all(out_lower <= out_upper), (where, out_lower, out_upper)
  points = _sample_points(rng, lower, upper, num_samples)
  with jax.enable_x64(True):
    if num_attack_steps:
      coordinates = rng.choice(SIZE, 2, replace=False)
      attacked = _sign_gradient_ends(fn, lower.astype(np.float64), upper.astype(np.float64),
                                     coordinates, num_attack_steps)
      points = np.concatenate([points, np.clip(attacked.astype(dtype), lower, upper)])
    values = np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(points, jnp.float64)))
  finite_end = lambda end: np.where(np.isfinite(end), np.abs(end), 0)
  scale = np.maximum(np.abs(np.where(np.isfinite(values), values, 0)),
                     np.maximum(finite_end(out_lower), finite_end(out_upper)))
  tolerance = RTOL[dtype] * scale + np.finfo(dtype).tiny
  outside = ~np.isnan(values) & ((values < out_lower - tolerance)
                                 | (values > out_upper + tolerance))
  result.functions += 1
  result.points += len(points)
  if outside.any():
    index = np.argwhere(outside)[0]
    result.violations.append(
        f'{where}: f({points[index[0]].tolist()})[{index[1]}] = {values[tuple(index)]} outside '
        f'[{out_lower[index[1]]}, {out_upper[index[1]]}]')


def run_fuzzer(seed, num_functions, *, num_samples, num_attack_steps):
  """Checks `num_functions` random functions per dtype; returns the FuzzResult."""
  rng = np.random.default_rng(seed)
  result = FuzzResult()
  for _ in range(num_functions):
    fn, description = random_function(rng)
    for dtype in ('float32', 'float64'):
      check_function(rng, fn, description, dtype, num_samples=num_samples,
                     num_attack_steps=num_attack_steps, result=result)
  return result


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  with jax.default_matmul_precision('highest'):
    yield


@pytest.mark.slow
def test_fuzzer_finds_no_unsound_bound():
  # 3 functions, both dtypes (22 s; test_fuzzer_attacks_with_sign_gradients is the default run's
  # smoke test, test_fuzzer_long_run the coverage).
  result = run_fuzzer(0, 3, num_samples=200, num_attack_steps=0)
  assert not result.violations, '\n'.join(result.violations[:5])
  assert result.functions >= 4  # Most cases get bounds; the rest raised a clear error.


def test_fuzzer_attacks_with_sign_gradients():
  result = run_fuzzer(1, 2, num_samples=100, num_attack_steps=10)
  assert not result.violations, '\n'.join(result.violations[:5])


def test_fuzzer_detects_an_unsound_rule():
  """The fuzzer is not vacuous: a `tanh` rule whose upper end is tanh of the box's centre (a
  plausible bug: too tight, but never inverted) is caught."""
  from jaxcert.bounds.interval import RULES  # pylint: disable=g-import-not-at-top
  tanh = jax.extend.core.primitives.tanh_p
  sound_rule = RULES[tanh]
  RULES[tanh] = lambda x, **params: bounds.IntervalBound(
      jnp.tanh(x.lower), jnp.tanh(x.lower / 2 + x.upper / 2))
  try:
    result = FuzzResult()
    rng = np.random.default_rng(2)
    for _ in range(6):
      check_function(rng, jnp.tanh, 'tanh', 'float32', num_samples=100, num_attack_steps=0,
                     result=result)
  finally:
    RULES[tanh] = sound_rule
  assert result.violations


LONG_RUN_SEEDS = range(100, 106)
LONG_RUN_FUNCTIONS_PER_SEED = 50


@pytest.mark.slow
def test_fuzzer_long_run():
  """The long run whose coverage docs/bounds.md reports: 6 seeds x 50 functions x 2 dtypes,
  2000 sampled points and 20 sign-gradient steps per function and box."""
  total = FuzzResult()
  for seed in LONG_RUN_SEEDS:
    result = run_fuzzer(seed, LONG_RUN_FUNCTIONS_PER_SEED, num_samples=2000, num_attack_steps=20)
    total.functions += result.functions
    total.points += result.points
    total.errors += result.errors
    total.violations += result.violations
    print(f'seed {seed}: {total.functions} function/box pairs, {total.points} points, '
          f'{total.errors} clear errors, {len(total.violations)} violations so far', flush=True)
  assert not total.violations, '\n'.join(total.violations[:5])
