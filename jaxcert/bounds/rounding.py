"""Outward rounding: interval bounds that hold for the real-valued function, in any float dtype.

`interval(fn, rounding='outward')` (`jaxcert.bounds.interval`) uses the rules of this module:
every rule's output contains the *real-valued* result of the primitive on every real input in its
input box, although each bound is computed in floating point with round-to-nearest (float32 on
any backend, no float64 needed). Derivations and the measured error table: docs/rigorous_float32.md.

Error model. For a floating-point format with machine epsilon `eps` (2^-23 in float32), unit
roundoff `u = eps / 2` and smallest normal number `tiny` (2^-126), every operation this module
relies on satisfies `|fl(op) - op| <= k eps |fl(op)| + k' tiny` for its own `k` (correctly rounded
`+ - * /` and `sqrt`: one rounding; transcendental functions: `ELEMENTWISE_ULPS`, measured by
scripts/measure_ulp_errors.py with a margin); the `tiny` term covers results flushed to zero
(XLA:CPU flushes subnormal results to zero, as GPUs do by default) and subnormal results. Three
widenings follow:

* `round_down` / `round_up`: one or two ulps outwards from a round-to-nearest result,
  `round_down(fl(v)) <= v`, still a bound where a later operation reads a subnormal result as 0.
* `widen_by_ulps`: `[lower, upper]` widened by `k eps |end| + (k + 2) tiny` with outward steps,
  for a function evaluated at the ends of its input box (the rule never assumes that the
  computed function is monotone, only that the real one is).
* Sums and dot products: for any summation order, `|fl(sum_i a_i b_i) - sum_i a_i b_i| <=
  gamma_n sum_i |a_i b_i| + 2 n tiny` with `gamma_n = n u / (1 - n u)` (Higham, Accuracy and
  Stability of Numerical Algorithms, 2nd ed., Sec. 3.1: Lemma 3.1 and the inner-product bound;
  the `tiny` term for underflow, his Sec. 2.1). `bilinear_rule` folds `gamma |c|` into the
  radius of the centre/radius form (Kakizaki et al., Eqs. 15-16), so one rigorous matmul layer
  costs two matmuls, as in round-to-nearest IBP, and sums long `dot_general` centre products in
  ~sqrt(n) blocks (`gamma` ~ 2 sqrt(n) u instead of n u).

Assumptions (docs/rigorous_float32.md §5): IEEE round-to-nearest; subnormal results either exact
or flushed to zero; no subnormal numbers among the concrete operands (weights; `check_no_subnormals`);
matmuls and convolutions at `Precision.HIGHEST` (this module forces it: GPU TF32 and TPU bf16
passes have another `u`); the elementwise error bounds of `ELEMENTWISE_ULPS`, measured on
XLA:CPU only.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
from jax import lax
import numpy as np

from jaxcert.bounds import rules
from jaxcert.bounds.interval import IntervalBound
from jaxcert.bounds.interval import OUTWARD_RULES
from jaxcert.bounds.interval import OUTWARD_SAME_OPERAND_RULES
from jaxcert.bounds.interval import RULES
from jaxcert.bounds.interval import SAME_OPERAND_RULES

_P = jex_core.primitives

# Error bounds in ulps (units of eps |computed value|, plus as many smallest normals) of XLA's
# elementwise functions, used by the outward rules. Measured on XLA:CPU float32 with
# scripts/measure_ulp_errors.py (docs/rigorous_float32.md §3 has the table): the measured maximum
# rounded up, plus 2, and at least 4, for the transcendental functions (1e6 samples each); 1 for
# sqrt, measured correctly rounded (0.50 ulps).
# GPU and TPU implementations were not measured; a backend whose functions err more than this
# breaks the guarantee (re-run the script there).
ELEMENTWISE_ULPS = {
    'exp': 7,
    'exp2': 69,
    'expm1': 8,
    'log': 4,
    'log1p': 5,
    'tanh': 7,
    'logistic': 5,
    'erf': 8,
    'atan': 4,
    'asinh': 5,
    'sinh': 27,
    'cbrt': 4,
    'rsqrt': 4,
    'sqrt': 1,
}

# Primitives whose rules compute their bounds without rounding: data movement, max/min, sign
# operations and comparisons (exact in any floating-point format), selections.
EXACT_PRIMITIVES = (
    _P.reshape_p, _P.broadcast_in_dim_p, _P.transpose_p, _P.squeeze_p, _P.rev_p, _P.slice_p,
    lax.split_p, _P.concatenate_p, lax.stack_p, lax.unstack_p, _P.pad_p, _P.copy_p,
    _P.stop_gradient_p, _P.sharding_constraint_p, _P.device_put_p,
    _P.max_p, _P.min_p, _P.clamp_p, _P.reduce_max_p, _P.reduce_min_p,
    _P.reduce_window_max_p, _P.reduce_window_min_p, _P.cummax_p, _P.cummin_p,
    _P.sign_p, _P.floor_p, _P.ceil_p, _P.round_p, _P.neg_p, _P.abs_p,
    _P.dynamic_slice_p, _P.dynamic_update_slice_p, _P.gather_p, _P.scatter_p, _P.sort_p,
    _P.is_finite_p, _P.gt_p, _P.ge_p, _P.lt_p, _P.le_p, _P.eq_p, _P.ne_p, _P.select_n_p,
)

# Primitives whose round-to-nearest rule evaluates one correctly rounded operation (IEEE 754
# +, -, *, /) at each end or corner of its input box: one outward step covers it.
CORRECTLY_ROUNDED_PRIMITIVES = (_P.add_p, _P.add_jaxvals_p, _P.sub_p, _P.mul_p, _P.div_p,
                                _P.square_p)


def _format(dtype) -> tuple[float, float, float]:
  """`(eps, tiny, max)` of a floating-point dtype."""
  info = jnp.finfo(dtype)
  return float(info.eps), float(info.tiny), float(info.max)


def _constant_above(value: float, dtype) -> jax.Array:
  """The smallest `dtype` number >= `value` (a Python float, computed in float64)."""
  rounded = np.asarray(value, dtype=np.float64).astype(dtype)
  if float(rounded) < value:
    rounded = np.nextafter(rounded, np.asarray(np.inf, dtype))
  return jnp.asarray(rounded, dtype)


def round_up(value: jax.Array) -> jax.Array:
  """A number above `value`, for `value` a round-to-nearest result: `round_up(fl(v)) >= v`.

  `w = fl(v)` is the float nearest `v`, so `v <= w + g / 2` with `g` the gap from `w` to the next
  float above. Computed as `fl(w + fl(fl(|w| eps) + tiny))` (docs/rigorous_float32.md §1): the
  step `delta` is at least `max(|w| eps, tiny) >= g` (`|w| eps` is exact, a power-of-two scaling,
  unless it underflows, and round-to-nearest is monotone), so `w + delta >= succ(w)` and, `succ(w)`
  being a float, so is its rounding. One to two ulps above `w` in four elementwise operations (no
  `nextafter`, whose bit manipulation cost more in the rigorous matmul layers, §10); an FMA for
  `|w| eps + tiny` keeps the argument. `-inf` becomes the most negative float, `+inf` stays.

  The result can be subnormal only where `w < 0` (else it is `>= tiny`), and then `v <= succ(w)
  <= 0`: read as 0 by a later operation under denormals-are-zero, it is still `>= v`.
  """
  value = jnp.asarray(value)
  eps, tiny, largest = _format(value.dtype)
  step = value + (jnp.abs(value) * jnp.asarray(eps, value.dtype) + jnp.asarray(tiny, value.dtype))
  return jnp.where(value == -jnp.inf, jnp.asarray(-largest, value.dtype), step)


def round_down(value: jax.Array) -> jax.Array:
  """A number below `value`, for `value` a round-to-nearest result (`-round_up(-value)`)."""
  return -round_up(-jnp.asarray(value))


def flush_outwards(lower, upper) -> tuple[jax.Array, jax.Array]:
  """`[lower, upper]` with subnormal ends moved outwards to 0 or -+tiny.

  XLA:CPU (and GPUs by default) read subnormal operands as 0 (denormals-are-zero), which could
  move an upper end below a real input; a subnormal end that a rigorous rule outputs is a bound
  also when read as 0 (`round_up`), and this makes the input box the same.
  """
  lower, upper = jnp.asarray(lower), jnp.asarray(upper)
  tiny = jnp.asarray(jnp.finfo(lower.dtype).tiny, lower.dtype)
  lower_subnormal = (jnp.abs(lower) < tiny) & (lower != 0)
  upper_subnormal = (jnp.abs(upper) < tiny) & (upper != 0)
  lower = jnp.where(lower_subnormal, jnp.where(lower > 0, 0, -tiny), lower)
  upper = jnp.where(upper_subnormal, jnp.where(upper < 0, 0, tiny), upper)
  return lower, upper


def _stepped_outwards(lower, upper) -> IntervalBound:
  return IntervalBound(round_down(lower), round_up(upper))


def widen_by_ulps(lower, upper, ulps: float) -> IntervalBound:
  """`[lower, upper]` widened by `ulps eps |end| + (ulps + 2) tiny` on each side, outwards.

  Where a function `f` (monotone as a real function) was evaluated at the ends of its input box
  with error at most `ulps` ulps of the exact value, the result contains `f` of the whole box,
  whether or not the computed `f` is monotone (docs/rigorous_float32.md §2). A lower end at
  `+inf` (overflow of a finite real value) restarts from the largest float, likewise an upper end
  at `-inf`; infinite ends on their own side stay.
  """
  lower, upper = jnp.asarray(lower), jnp.asarray(upper)
  eps, tiny, largest = _format(lower.dtype)
  # |y - f| <= k ulp(f) <= k eps |f| <= k eps (|y| + |y - f|) gives |y - f| <= k eps |y| / (1 - k eps);
  # the (1 + 4 eps) covers the rounding of the product and the sum below.
  relative = _constant_above(ulps * eps / (1 - ulps * eps) * (1 + 4 * eps), lower.dtype)
  absolute = _constant_above((ulps + 2) * tiny * (1 + 4 * eps), lower.dtype)
  lower = jnp.where(lower == jnp.inf, jnp.asarray(largest, lower.dtype), lower)
  upper = jnp.where(upper == -jnp.inf, jnp.asarray(-largest, upper.dtype), upper)

  def margin(end):
    return jnp.where(jnp.isfinite(end), jnp.abs(end) * relative + absolute, 0)

  return IntervalBound(round_down(lower - margin(lower)), round_up(upper + margin(upper)))


def gamma(n: int, dtype) -> float:
  """Higham's `gamma_n = n u / (1 - n u)` of a dtype (`u = eps / 2`); ValueError if `n u >= 1/2`."""
  unit_roundoff = _format(dtype)[0] / 2
  if n * unit_roundoff >= 0.5:
    raise ValueError(
        f'A sum of {n} terms in {jnp.dtype(dtype).name} has no useful rounding bound '
        f'(n u = {n * unit_roundoff:.3g} >= 1/2); compute in a wider dtype.')
  return n * unit_roundoff / (1 - n * unit_roundoff)


def center_radius(bound: IntervalBound) -> tuple[jax.Array, jax.Array]:
  """`(c, r)` with `[lower, upper]` inside the real interval `[c - r, c + r]`.

  `c` is any float near the midpoint; `r = round_up(max(fl(upper - c), fl(c - lower)))` is at
  least `max(upper - c, c - lower)` in real arithmetic.
  """
  center = bound.lower / 2 + bound.upper / 2
  radius = round_up(jnp.maximum(bound.upper - center, center - bound.lower))
  return center, radius


def _contraction_length(primitive, lhs_shape, rhs_shape, params) -> int:
  """How many products each output of `dot_general` / `conv_general_dilated` sums."""
  if primitive is _P.dot_general_p:
    (lhs_contracting, _), _ = params['dimension_numbers']
    return math.prod(lhs_shape[d] for d in lhs_contracting)
  rhs_spec = params['dimension_numbers'].rhs_spec  # (out feature, in feature, spatial...)
  return math.prod(rhs_shape[d] for d in rhs_spec[1:])


def _accumulation_dtype(*dtypes):
  """The dtype with the largest `eps` among `dtypes` (the coarsest rounding involved)."""
  return max((jnp.dtype(d) for d in dtypes), key=lambda d: _format(d)[0])


def _matmul_error_terms(n: int, dtype, terms: int) -> tuple[float, float]:
  """Constants `(kappa, nu)` of `bilinear_rule` for products of length `n` (Python floats).

  For `S` the float sum of `terms` computed magnitudes, the real `S kappa + nu` bounds the radius:
  `kappa = (1 + 2 terms u) / (1 - gamma_n)` and `nu = (6 n + 4) terms tiny` cover the
  roundings of the sum of the `terms` matmuls, the `gamma_n` of the magnitudes' own products and
  `2 n tiny` of flushed products per matmul (docs/rigorous_float32.md §4).
  """
  eps, tiny, _ = _format(dtype)
  unit_roundoff = eps / 2
  gamma_n = gamma(n, dtype)
  kappa = (1 + 2 * terms * unit_roundoff) / (1 - gamma_n)
  nu = (6 * n + 4) * terms * tiny * (1 + 4 * unit_roundoff)
  return kappa, nu


# Centre products of more terms than this are summed in blocks (`_centre_product`).
BLOCKING_THRESHOLD = 64


def _block_count(length: int, n: int) -> int:
  """Blocks for a contracted axis of `length` in a product of `n` terms: the divisor of
  `length` nearest to sqrt(n) (blocks of about sqrt(n) terms), 1 for `n <= BLOCKING_THRESHOLD`."""
  if n <= BLOCKING_THRESHOLD:
    return 1
  divisors = [d for d in range(1, length + 1) if length % d == 0]
  return min(divisors, key=lambda d: abs(d - math.sqrt(n)))


def _blocked_gamma(n: int, blocks: int, dtype) -> float:
  """Error factor of `n` products summed as `blocks` float sums of `n / blocks`, then added up.

  Each block is within `gamma_b` of its real sum (relative to its sum of magnitudes), and the
  sum of the `blocks` computed partials within `gamma_blocks (1 + gamma_b)` of theirs:
  `gamma_b + gamma_blocks (1 + gamma_b)` times `sum |a_i b_i|` in all (Higham Sec. 3.1 twice).
  """
  block_gamma = gamma(n // blocks, dtype)
  return block_gamma + gamma(blocks, dtype) * (1 + block_gamma)


def _blocked_dot_general(lhs, rhs, n: int, params):
  """`dot_general(lhs, rhs)` with the longest contracted axis cut into blocks summed apart.

  One `dot_general` per block, on slices of both operands (the same products and FLOPs), then
  the partial products added one after the other. As one batched `dot_general` with the blocks
  as a batch axis, reduced after, the Large CNN's rigorous bounds cost ~0.3 forward passes more
  on XLA:CPU (docs/rigorous_float32.md §10). Returns the product and the number of blocks.
  """
  (lhs_contracting, rhs_contracting), _ = params['dimension_numbers']
  if not lhs_contracting:
    return _P.dot_general_p.bind(lhs, rhs, **params), 1
  axis = max(range(len(lhs_contracting)), key=lambda i: lhs.shape[lhs_contracting[i]])
  length = lhs.shape[lhs_contracting[axis]]
  blocks = _block_count(length, n)
  if blocks == 1:
    return _P.dot_general_p.bind(lhs, rhs, **params), 1
  width = length // blocks
  partials = [
      _P.dot_general_p.bind(
          lax.slice_in_dim(lhs, block * width, (block + 1) * width, axis=lhs_contracting[axis]),
          lax.slice_in_dim(rhs, block * width, (block + 1) * width, axis=rhs_contracting[axis]),
          **params)
      for block in range(blocks)]
  return functools.reduce(jnp.add, partials), blocks


# Convolutions are cut into at most this many blocks of input channels (`_blocked_conv`).
MAX_CONVOLUTION_BLOCKS = 4


def _blocked_conv(lhs, rhs, n: int, params):
  """`conv_general_dilated(lhs, rhs)` as a sum of convolutions over blocks of input channels.

  At most `MAX_CONVOLUTION_BLOCKS` separate (ungrouped) convolutions of the same FLOPs in all:
  as one grouped convolution (`feature_group_count` = blocks) the Large CNN's rigorous bounds
  cost 7.1 forward passes on XLA:CPU (docs/rigorous_float32.md §4). Returns the product and the
  number of blocks.
  """
  if params['feature_group_count'] != 1 or params['batch_group_count'] != 1:
    return _P.conv_general_dilated_p.bind(lhs, rhs, **params), 1
  numbers = params['dimension_numbers']
  in_channels = rhs.shape[numbers.rhs_spec[1]]
  if n <= BLOCKING_THRESHOLD:
    return _P.conv_general_dilated_p.bind(lhs, rhs, **params), 1
  blocks = max(d for d in range(1, MAX_CONVOLUTION_BLOCKS + 1) if in_channels % d == 0)
  width = in_channels // blocks
  lhs_axis, rhs_axis = numbers.lhs_spec[1], numbers.rhs_spec[1]
  partials = [
      _P.conv_general_dilated_p.bind(
          lax.slice_in_dim(lhs, block * width, (block + 1) * width, axis=lhs_axis),
          lax.slice_in_dim(rhs, block * width, (block + 1) * width, axis=rhs_axis), **params)
      for block in range(blocks)]
  return functools.reduce(jnp.add, partials), blocks


def _centre_product(primitive, lhs, rhs, n: int, dtype, params):
  """`primitive(lhs, rhs)` summed in blocks (`_blocked_dot_general`, `_blocked_conv`), and its
  error factor `gamma`: `|fl(W c) - W c| <= gamma |W| |c| + 2 n tiny` (a Python float).

  The blocks are added one after the other, `blocks - 1` additions: `gamma_b` covers them as it
  covers any order of a sum of `b` terms.
  """
  blocked = _blocked_dot_general if primitive is _P.dot_general_p else _blocked_conv
  product, blocks = blocked(lhs, rhs, n, params)
  return product, gamma(n, dtype) if blocks == 1 else _blocked_gamma(n, blocks, dtype)


def _elementwise_format(*dtypes) -> tuple[float, float]:
  """`(eps, tiny)` covering every dtype in `dtypes` (the largest of each)."""
  formats = [_format(dtype) for dtype in dtypes]
  return max(f[0] for f in formats), max(f[1] for f in formats)


def _inflate(radius, center, error: float, dtype):
  """`round_up(r + fl(gamma' |c| + tiny))` >= `r + error |c|`, `gamma' = error (1 + 4 u)` rounded up
  (the tiny covers a flushed product)."""
  eps, tiny = _elementwise_format(dtype, radius.dtype)
  gamma_prime = _constant_above(error * (1 + 2 * eps), radius.dtype)
  return round_up(radius + (jnp.abs(center) * gamma_prime + jnp.asarray(tiny, radius.dtype)))


def _inflated_radius(bound: IntervalBound, center, error: float, dtype):
  """`rho >= max(upper - c, c - lower) + error |c|` in reals, for `c = fl(lower / 2 + upper / 2)`.

  `rho = round_up(fl(fl(upper - lower) h) + fl(fl(|c| g) + 8 tiny))` with `h = (1 + 3 u) / 2` and
  `g = (u + error)(1 + 3 u)`, rounded up: `c` is within `u |c| + 3 tiny` of the real midpoint, so
  `max(upper - c, c - lower) <= (upper - lower) / 2 + u |c| + 3 tiny`, and the roundings of
  `upper - lower`, of the products and of the sums are inside `h`, `g` and the tinies
  (docs/rigorous_float32.md §4, step 4). One outward step where `center_radius` and `_inflate`
  take two.
  """
  eps, tiny = _elementwise_format(dtype, center.dtype)
  unit_roundoff = eps / 2
  half = _constant_above((1 + 3 * unit_roundoff) / 2, center.dtype)
  slope = _constant_above((unit_roundoff + error) * (1 + 3 * unit_roundoff), center.dtype)
  width = bound.upper - bound.lower
  return round_up(width * half + (jnp.abs(center) * slope
                                  + jnp.asarray(8 * tiny, center.dtype)))


def _outward_from_centre(center, magnitude, kappa: float, nu: float, dtype) -> IntervalBound:
  """`[fl(m - R2), fl(m + R2)]` containing the real `[m - R, m + R]` for every `R <= S kappa + nu`.

  `R2 = fl(fl(S kappa2) + fl(fl(|m| mu) + nu2))` with `kappa2 = kappa (1 + 4 u)`,
  `mu = u (1 + 5 u)`, `nu2 = (nu + 5 tiny)(1 + 4 u)`: then `R2 (1 - u) >= R + u |m| + tiny`,
  which covers the rounding of `m -+ R2` themselves (each within `u |m -+ R2| + tiny`, the tiny
  for a flushed result), so no outward step is needed (docs/rigorous_float32.md §4, step 5).
  """
  eps, tiny = _elementwise_format(dtype, center.dtype, magnitude.dtype)
  unit_roundoff = eps / 2
  kappa2 = _constant_above(kappa * (1 + 4 * unit_roundoff), center.dtype)
  mu = _constant_above(unit_roundoff * (1 + 5 * unit_roundoff), center.dtype)
  nu2 = _constant_above((nu + 5 * tiny) * (1 + 4 * unit_roundoff), center.dtype)
  radius = magnitude.astype(center.dtype) * kappa2 + (jnp.abs(center) * mu + nu2)
  return IntervalBound(center - radius, center + radius)


def bilinear_rule(primitive: jex_core.Primitive):
  """Outward rule for `dot_general` / `conv_general_dilated` at `Precision.HIGHEST`.

  One bounded operand `x` in `[c - r, c + r]` and a concrete `W` (either side), `n` products per
  output: the real `W x` lies in `[W c - |W| r, W c + |W| r]`, the computed `m = fl(W c)` is
  within `gamma |W| |c| + 2 n tiny` of `W c`, and `fl(|W| rho)` with `rho >= r + gamma |c|`
  is at least `(1 - gamma_n) |W| rho - 2 n tiny`. So with `R = fl(fl(fl(|W| rho) kappa) + nu)`
  (`_matmul_error_terms`) the interval `[m - R, m + R]`, rounded outwards, contains `W x`: two
  matmuls, like round-to-nearest IBP. `gamma` is `gamma_n`, or, where a `dot_general` centre
  product is summed in about sqrt(n) blocks of about sqrt(n) terms (`_centre_product`), about
  `2 sqrt(n) u`. Two bounded operands: `R` bounds `|c1| (r2 + gamma |c2|) + r1 (|c2| + r2)` from
  two more matmuls (docs/rigorous_float32.md §4).
  """

  def rule(lhs, rhs, **params):
    lhs_bounded, rhs_bounded = isinstance(lhs, IntervalBound), isinstance(rhs, IntervalBound)
    params = dict(params, precision=(lax.Precision.HIGHEST, lax.Precision.HIGHEST))
    bind = functools.partial(primitive.bind, **params)
    lhs_shape = (lhs.lower if lhs_bounded else jnp.asarray(lhs)).shape
    rhs_shape = (rhs.lower if rhs_bounded else jnp.asarray(rhs)).shape
    n = _contraction_length(primitive, lhs_shape, rhs_shape, params)
    operand_dtypes = [(x.lower if isinstance(x, IntervalBound) else jnp.asarray(x)).dtype
                      for x in (lhs, rhs)]
    out_dtype = params.get('preferred_element_type') or jnp.result_type(*operand_dtypes)
    dtype = _accumulation_dtype(out_dtype, *operand_dtypes)
    terms = 2 if lhs_bounded and rhs_bounded else 1
    kappa, nu = _matmul_error_terms(n, dtype, terms)
    if lhs_bounded and rhs_bounded:
      lhs_center, lhs_radius = center_radius(lhs)
      rhs_center, rhs_radius = center_radius(rhs)
      center, error = _centre_product(primitive, lhs_center, rhs_center, n, dtype, params)
      magnitude = (bind(jnp.abs(lhs_center), _inflate(rhs_radius, rhs_center, error, dtype))
                   + bind(lhs_radius, round_up(jnp.abs(rhs_center) + rhs_radius)))
    elif lhs_bounded:
      lhs_center = lhs.lower / 2 + lhs.upper / 2
      center, error = _centre_product(primitive, lhs_center, jnp.asarray(rhs), n, dtype, params)
      magnitude = bind(_inflated_radius(lhs, lhs_center, error, dtype), jnp.abs(rhs))
    else:
      rhs_center = rhs.lower / 2 + rhs.upper / 2
      center, error = _centre_product(primitive, jnp.asarray(lhs), rhs_center, n, dtype, params)
      magnitude = bind(jnp.abs(lhs), _inflated_radius(rhs, rhs_center, error, dtype))
    return _outward_from_centre(center, magnitude, kappa, nu, dtype)

  return rule


def _summed_terms(primitive: jex_core.Primitive, operand_shape, params) -> int:
  """How many terms each output of a summing primitive adds."""
  if primitive is _P.reduce_sum_p:
    return math.prod(operand_shape[d] for d in params['axes'])
  if primitive is _P.reduce_window_sum_p:
    return math.prod(params['window_dimensions'])
  return operand_shape[params['axis']]  # cumsum


def sum_rule(primitive: jex_core.Primitive):
  """Outward rule for `reduce_sum`, `reduce_window_sum` and `cumsum` (monotone sums).

  The round-to-nearest rule sums the lower ends and the upper ends; a float sum of `n` terms is
  within `gamma_{n-1} sum |a_i| + n tiny` of the real one in any order (Higham Secs. 3.1, 4.2,
  flushed additions), and `sum |a_i| <= (fl(sum |a_i|) + n tiny) / (1 - gamma_n)`. One more sum, of
  `max(|lower|, |upper|)`, bounds both ends' errors (docs/rigorous_float32.md §4).
  """
  nearest = RULES[primitive]

  def rule(operand, **params):
    n = _summed_terms(primitive, operand.lower.shape, params)
    dtype = operand.lower.dtype
    eps, tiny, _ = _format(dtype)
    gamma_n = gamma(max(n, 1), dtype)
    kappa = _constant_above(gamma_n / (1 - gamma_n) * (1 + 4 * eps), dtype)
    nu = _constant_above((gamma_n / (1 - gamma_n) + 2) * (n + 2) * tiny * (1 + 4 * eps), dtype)
    bound = nearest(operand, **params)
    magnitude = primitive.bind(jnp.maximum(jnp.abs(operand.lower), jnp.abs(operand.upper)),
                               **params)
    error = magnitude * kappa + nu
    return _stepped_outwards(bound.lower - error, bound.upper + error)

  return rule


def widened_rule(primitive: jex_core.Primitive, ulps):
  """The round-to-nearest rule of `primitive`, its output widened by `ulps(params)` ulps."""
  nearest = RULES[primitive]

  def rule(*invals, **params):
    bound = nearest(*invals, **params)
    return widen_by_ulps(bound.lower, bound.upper, ulps(params))

  return rule


def stepped_rule(nearest):
  """A rule whose bounds are one correctly rounded operation of exact inputs, stepped outwards."""

  def rule(*invals, **params):
    bound = nearest(*invals, **params)
    if not isinstance(bound, IntervalBound):  # `x - x == 0` is exact.
      return bound
    if not jnp.issubdtype(bound.lower.dtype, jnp.floating):
      return bound
    return _stepped_outwards(bound.lower, bound.upper)

  return rule


def _convert_element_type_rule(operand, **params):
  """Casts: exact to a format that holds every value, else one rounding (a step outwards)."""
  bound = RULES[_P.convert_element_type_p](operand, **params)
  new_dtype = jnp.dtype(params['new_dtype'])
  old_dtype = jnp.dtype(operand.lower.dtype)
  if not jnp.issubdtype(new_dtype, jnp.floating):
    return bound  # to an integer: the truncation is the operation itself
  if jnp.issubdtype(old_dtype, jnp.floating) and jnp.finfo(new_dtype).bits >= jnp.finfo(old_dtype).bits \
      and jnp.finfo(new_dtype).nmant >= jnp.finfo(old_dtype).nmant:
    return bound
  return _stepped_outwards(bound.lower, bound.upper)


def _integer_pow_ulps(params) -> float:
  """`x**y` by repeated squaring: at most 2 log2|y| + 1 roundings, one more for `y < 0`."""
  y = abs(int(params['y']))
  return 2 * max(y, 1).bit_length() + 3


def check_no_subnormals(tree) -> None:
  """Raises ValueError if a floating-point leaf of `tree` holds a subnormal number.

  Under denormals-are-zero (XLA:CPU, GPUs) such a weight is read as 0, which the error bounds of
  this module do not cover (docs/rigorous_float32.md §5). Needs concrete leaves.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    leaf = np.asarray(leaf)
    if not np.issubdtype(leaf.dtype, np.floating) or not leaf.size:
      continue
    magnitude = np.abs(leaf)
    subnormal = (magnitude > 0) & (magnitude < np.finfo(leaf.dtype).tiny)
    if subnormal.any():
      raise ValueError(
          f'{jax.tree_util.keystr(path)} holds {int(subnormal.sum())} subnormal number(s); '
          'rigorous (outward-rounded) bounds assume none. Flush them to zero (the model computes '
          'the same under denormals-are-zero) or certify in float64.')


OUTWARD_RULES.update({primitive: RULES[primitive] for primitive in EXACT_PRIMITIVES})
OUTWARD_RULES.update({primitive: stepped_rule(RULES[primitive])
                      for primitive in CORRECTLY_ROUNDED_PRIMITIVES})
OUTWARD_RULES.update({primitive: bilinear_rule(primitive)
                      for primitive in rules.BILINEAR_PRIMITIVES})
OUTWARD_RULES.update({primitive: sum_rule(primitive)
                      for primitive in (_P.reduce_sum_p, _P.reduce_window_sum_p, _P.cumsum_p)})
OUTWARD_RULES.update({
    primitive: widened_rule(primitive, lambda params, ulps=ulps: ulps)
    for primitive in RULES if (ulps := ELEMENTWISE_ULPS.get(primitive.name)) is not None
})
OUTWARD_RULES.update({
    _P.convert_element_type_p: _convert_element_type_rule,
    _P.integer_pow_p: widened_rule(_P.integer_pow_p, _integer_pow_ulps),
})
OUTWARD_SAME_OPERAND_RULES.update({
    primitive: stepped_rule(rule) if primitive in (_P.mul_p, _P.sub_p) else rule
    for primitive, rule in SAME_OPERAND_RULES.items()
})


# --- Distance bounds (Kakizaki et al., Theorems 5 and 6), rounded outwards. ---------------------


def _sum_bounds(total, count: int):
  """Real bounds of `sum_i t_i` (t_i >= 0, `count` terms) from its float sum `total`, any order.

  `|total - sum t| <= gamma_count sum t + 2 count tiny` (Higham Sec. 3.1; flushed additions), so
  `sum t <= (total + 2 count tiny) / (1 - gamma)` and `>= (total - 2 count tiny) / (1 + gamma)`.
  """
  dtype = total.dtype
  eps, tiny, _ = _format(dtype)
  gamma_n = gamma(count, dtype)
  up_factor = _constant_above((1 + 4 * eps) / (1 - gamma_n), dtype)
  up_offset = _constant_above((2 * count + 4) * tiny * (1 + 4 * eps) / (1 - gamma_n), dtype)
  down_factor = np.asarray((1 - 4 * eps) / (1 + gamma_n), np.float64).astype(dtype)
  down_offset = _constant_above((2 * count + 4) * tiny * (1 + 4 * eps), dtype)
  upper = total * up_factor + up_offset
  lower = jnp.maximum(round_down(total * jnp.asarray(down_factor, dtype) - down_offset), 0)
  return lower, upper


def outward_distance_bounds(lower, upper, points) -> tuple[jax.Array, jax.Array]:
  """Real bounds of `min` and `max` over the box `[lower, upper]` of `||z - y||_2`, rounded outwards.

  `jaxcert.bounds.retrieval.distance_bounds` (Kakizaki et al., Eqs. 17-18) with every operation
  rounded outwards (docs/rigorous_float32.md §6): per coordinate the farthest gap
  `max(u_i - y_i, y_i - l_i)` rounded up and the nearest `max(l_i - y_i, y_i - u_i, 0)` rounded
  down, their squares rounded likewise, the sums of the `d` squares corrected by `_sum_bounds`
  and the square roots widened by `ELEMENTWISE_ULPS['sqrt']`. The returned `(lo, hi)` satisfy
  `lo <= ||z - y|| <= hi` for every real `z` in the box, with no slack. Accumulated by a scan over
  the coordinates like `distance_bounds` (no (N1, N2, d) broadcast for pairwise calls).

  Args:
    lower, upper: (..., d) box ends; broadcast against `points`.
    points: (..., d) points y.

  Returns:
    `(min_distance, max_distance)`, each of the broadcast leading shape.
  """
  dtype = jnp.result_type(lower, upper, points)
  shape = jnp.broadcast_shapes(jnp.shape(lower), jnp.shape(points))[:-1]
  dim = jnp.shape(points)[-1]

  def add_coordinate(sums, coordinate):
    lower_i, upper_i, points_i = coordinate
    far = round_up(jnp.maximum(upper_i - points_i, points_i - lower_i))
    near = jnp.maximum(round_down(jnp.maximum(lower_i - points_i, points_i - upper_i)), 0)
    return (sums[0] + jnp.maximum(round_down(near * near), 0),
            sums[1] + round_up(far * far)), None

  zeros = jnp.zeros(shape, dtype)
  coordinates = tuple(jnp.moveaxis(jnp.asarray(a, dtype), -1, 0) for a in (lower, upper, points))
  (min_sq, max_sq), _ = lax.scan(add_coordinate, (zeros, zeros), coordinates)
  min_sq, _ = _sum_bounds(min_sq, dim)
  _, max_sq = _sum_bounds(max_sq, dim)
  sqrt_ulps = ELEMENTWISE_ULPS['sqrt']
  min_distance = widen_by_ulps(jnp.sqrt(min_sq), jnp.sqrt(min_sq), sqrt_ulps).lower
  max_distance = widen_by_ulps(jnp.sqrt(max_sq), jnp.sqrt(max_sq), sqrt_ulps).upper
  return jnp.maximum(min_distance, 0), max_distance


def point_margins(points, point_lower, point_upper) -> tuple[jax.Array, jax.Array]:
  """How far the real embeddings can lie from the computed ones, per coordinate, over all points.

  The rank bounds compare boxes with computed embeddings `y~ = fl(f(x))`, while the real-valued
  encoder gives some `y` in the rigorous box `[point_lower, point_upper]` of `f` at `eps = 0`.
  Returns `(below, above)`, each (d,), with `y~ - y` in `[-below, above]` for every point:
  `below = max(point_upper - y~, 0)`, `above = max(y~ - point_lower, 0)`, rounded up.
  """
  below = jnp.max(jnp.maximum(round_up(point_upper - points), 0), axis=0)
  above = jnp.max(jnp.maximum(round_up(points - point_lower), 0), axis=0)
  return below, above


def widen_for_points(lower, upper, margins) -> tuple[jax.Array, jax.Array]:
  """The box `[lower - below, upper + above]`, rounded outwards (`margins = point_margins(...)`).

  For `z` in `[lower, upper]` and a real embedding `y` with `y~ - y` in `[-below, above]`,
  `z - y = (z + y~ - y) - y~` with `z + y~ - y` in the widened box, so the distance bounds of the
  widened box against the computed `y~` bound the real distances `||z - y||` (Minkowski sum,
  docs/rigorous_float32.md §6).
  """
  below, above = margins
  return round_down(lower - below), round_up(upper + above)
