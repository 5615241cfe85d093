"""Interval rules for JAX primitives (L2 normalisation: `jaxcert.bounds.l2_normalize`).

Each rule takes the equation's inputs (concrete arrays or `IntervalBound`s, at
least one bounded) and the equation's params, and returns an `IntervalBound`
containing the primitive's output for every input inside the bounds. The
table `RULES` (defined in `jaxcert.bounds.interval`, filled here) is built from
lists:

* `MONOTONE_PRIMITIVES`: non-decreasing in every operand (shape ops, `add`,
  `max`, `min`, reductions, pooling, monotone activations): one generic rule
  that binds the primitive on the lower and on the upper ends;
* `INDEXED_PRIMITIVES` (and overwriting `scatter` with unique indices):
  monotone in the data operands, with index operands that must not depend on
  the perturbed input;
* `DOMAIN_MONOTONE_PRIMITIVES`: monotone on a half-line domain (`sqrt`, `log`,
  `log1p`): the ends are first clipped to the domain;
* `BILINEAR_PRIMITIVES` (`dot_general`, `conv_general_dilated`): the
  centre/radius form of Kakizaki et al. Eqs. 15-16;
* specific rules for `sub`, `neg`, `mul`, `div`, `abs`, `square`,
  `integer_pow`, `pow` (constant exponent), `rsqrt`, `sort` (values only),
  comparisons, `is_finite` and `select_n`.

Derivations: docs/bounds.md (sections are given in each docstring).
"""

import functools

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
from jax import lax
import numpy as np

from jaxcert.bounds.interval import IntervalBound
from jaxcert.bounds.interval import is_concrete
from jaxcert.bounds.interval import NAN_SOURCES
from jaxcert.bounds.interval import RULES
from jaxcert.bounds.interval import SAME_OPERAND_RULES

_P = jex_core.primitives  # `split_p`, `stack_p`, `unstack_p` are only exported by `lax`.


def ends(value):
  """`(lower, upper)` of an IntervalBound; a concrete value is both ends."""
  if isinstance(value, IntervalBound):
    return value.lower, value.upper
  return value, value


def _is_bound(value) -> bool:
  return isinstance(value, IntervalBound)


def _check_excludes_zero(lower, upper, what: str) -> None:
  """Raises if a concrete interval `[lower, upper]` contains 0 somewhere."""
  if not (is_concrete(lower) and is_concrete(upper)):
    return
  lower_np, upper_np = np.asarray(lower), np.asarray(upper)
  straddles = (lower_np <= 0) & (upper_np >= 0)
  if straddles.any():
    index = tuple(int(i) for i in np.argwhere(straddles)[0])
    raise ValueError(
        f'The {what} interval contains 0 at {int(straddles.sum())} '
        f'position(s), e.g. [{lower_np[index]}, {upper_np[index]}] at index '
        f'{index}, so the result is unbounded. Use a smaller box, or guard '
        'the division in the model (e.g. jnp.maximum(divisor, eps)).')


# --- Monotone primitives: one generic rule. ---------------------------------


def _monotone_rule(primitive: jex_core.Primitive,
                   index_operands: slice = slice(0, 0)):
  """Rule for a primitive non-decreasing in each of its data operands.

  If `p` is non-decreasing in every argument, `l <= x <= u` implies
  `p(l) <= p(x) <= p(u)` (docs/bounds.md §2).

  Args:
    primitive: the primitive.
    index_operands: the operands that are indices (of `dynamic_slice`,
      `gather`, ...): they must be concrete and are used at both ends.

  Returns:
    The rule.
  """

  def rule(*invals, **params):
    if any(_is_bound(value) for value in invals[index_operands]):
      raise NotImplementedError(
          f'`{primitive.name}` is bounded only for indices that do not depend '
          'on the perturbed input.')
    lowers, uppers = zip(*(ends(value) for value in invals))
    lower = primitive.bind(*lowers, **params)
    upper = primitive.bind(*uppers, **params)
    if primitive.multiple_results:
      return [IntervalBound(lo, hi) for lo, hi in zip(lower, upper)]
    return IntervalBound(lower, upper)

  return rule


def _scatter_rule(operand, indices, updates, **params):
  """Overwriting scatter: monotone when no two updates hit one position.

  With duplicate indices the surviving update may differ between the lower
  and the upper evaluation, so only `unique_indices=True` is accepted.
  """
  if not params['unique_indices']:
    raise NotImplementedError(
        '`scatter` (x.at[idx].set) with possibly repeated indices has no '
        'interval rule; use unique indices (unique_indices=True) or '
        'concatenate/where instead.')
  return _monotone_rule(_P.scatter_p, slice(1, 2))(
      operand, indices, updates, **params)


def _domain_monotone_rule(primitive: jex_core.Primitive, domain_min: float):
  """Rule for a function increasing on `[domain_min, inf)`, undefined below.

  The ends are clipped to the domain first, so the bounds hold at every point
  of the box where the function is defined (docs/bounds.md §7);
  `log(0) = -inf` is a valid (infinite) lower bound.
  """

  def rule(operand, **params):
    lower, upper = ends(operand)
    return IntervalBound(
        primitive.bind(jnp.maximum(lower, domain_min), **params),
        primitive.bind(jnp.maximum(upper, domain_min), **params))

  return rule


def _integer_range_of(dtype) -> tuple[int, int]:
  info = jnp.iinfo(dtype)
  return int(info.min), int(info.max)


def _convert_element_type_rule(operand, **params):
  """Casts are monotone where no value leaves the target's range (docs/bounds.md §2).

  Float -> float and int -> float casts round monotonically (overflow goes to +-inf). A cast to
  an integer type truncates monotonically inside the target's range, but out-of-range values
  wrap (int -> narrower int) or saturate (float -> int, backend-defined), so where an interval
  is not inside the range its bound is the whole range of the target type. Casts to bool
  (`x != 0`) are not monotone and are rejected.
  """
  new_dtype = params['new_dtype']
  if new_dtype == jnp.bool_:
    raise NotImplementedError(
        'Casting a bounded value to bool is not monotone; compare instead (x != 0).')
  out = _monotone_rule(_P.convert_element_type_p)(operand, **params)
  if not jnp.issubdtype(new_dtype, jnp.integer):
    return out
  lower, upper = ends(operand)
  target_min, target_max = _integer_range_of(new_dtype)
  source_dtype = jnp.result_type(lower)
  if jnp.issubdtype(source_dtype, jnp.floating):
    # Truncation maps (target_min - 1, target_max + 1) into the range; both ends are powers of
    # two (or 0 - 1) for every integer type, hence exact in any float type that can hold them.
    in_range = (lower > float(target_min - 1)) & (upper < float(target_max + 1))
  elif source_dtype == jnp.bool_:
    return out
  else:
    source_min, source_max = _integer_range_of(source_dtype)
    if target_min <= source_min and source_max <= target_max:
      return out
    in_range = ((lower >= max(target_min, source_min))
                & (upper <= min(target_max, source_max)))
  return IntervalBound(jnp.where(in_range, out.lower, np.asarray(target_min, new_dtype)),
                       jnp.where(in_range, out.upper, np.asarray(target_max, new_dtype)))


# --- Elementwise arithmetic. -------------------------------------------------


def _sub_rule(lhs, rhs, **params):
  """`[a - d, b - c]` for `[a, b] - [c, d]`."""
  lhs_lower, lhs_upper = ends(lhs)
  rhs_lower, rhs_upper = ends(rhs)
  return IntervalBound(_P.sub_p.bind(lhs_lower, rhs_upper, **params),
                       _P.sub_p.bind(lhs_upper, rhs_lower, **params))


def _neg_rule(operand, **params):
  lower, upper = ends(operand)
  return IntervalBound(_P.neg_p.bind(upper, **params),
                       _P.neg_p.bind(lower, **params))


def _corner_hull(fn, lhs, rhs, *, nan_corner=None) -> IntervalBound:
  """Min and max of `fn` over the corners of `lhs` x `rhs` (elementwise).

  A corner that is NaN (`0 * inf`) is replaced by `nan_corner` if given; otherwise it makes
  the hull's ends NaN, which the interpreter turns into infinite ends.
  """
  lhs_ends = ends(lhs) if _is_bound(lhs) else (lhs,)
  rhs_ends = ends(rhs) if _is_bound(rhs) else (rhs,)
  corners = [fn(a, b) for a in lhs_ends for b in rhs_ends]
  if nan_corner is not None:
    corners = [jnp.where(jnp.isnan(corner), nan_corner, corner) for corner in corners]
  return IntervalBound(
      functools.reduce(jnp.minimum, corners),
      functools.reduce(jnp.maximum, corners))


def _mul_rule(lhs, rhs, **params):
  """Product of intervals: min/max over the four corner products.

  `x * y` is bilinear, so on a box its extremes are at corners
  (docs/bounds.md §4). `x * x` of one variable goes to the square rule
  instead (see the interpreter). A `0 * inf` corner counts as 0: near it the product takes
  values between 0 and the signed infinity of an adjacent corner (or is 0 on the edge), so the
  other corners and 0 bound it.
  """
  return _corner_hull(functools.partial(_P.mul_p.bind, **params), lhs, rhs, nan_corner=0)


def _div_rule(lhs, rhs, **params):
  """Quotient of intervals, for divisors whose interval excludes 0.

  For `y` of fixed sign, `x / y` is monotone in `x` and in `y`, so the extremes
  are at the corners (docs/bounds.md §5). A divisor interval containing 0
  is an error when the bounds are concrete and gives `[-inf, inf]` under
  `jit` (sound: the quotient is unbounded there).
  """
  divide = functools.partial(_P.div_p.bind, **params)
  if not _is_bound(rhs):
    return _corner_hull(divide, lhs, rhs)
  rhs_lower, rhs_upper = rhs.lower, rhs.upper
  _check_excludes_zero(rhs_lower, rhs_upper, 'divisor')
  hull = _corner_hull(divide, lhs, rhs)
  straddles = (rhs_lower <= 0) & (rhs_upper >= 0)
  return IntervalBound(
      jnp.where(straddles, -jnp.inf, hull.lower),
      jnp.where(straddles, jnp.inf, hull.upper))


def abs_bounds(operand):
  """Bounds of `|x|`: `[max(l, -u, 0), max(-l, u)]` (docs/bounds.md §6)."""
  lower, upper = ends(operand)
  return (jnp.maximum(jnp.maximum(lower, -upper), 0),
          jnp.maximum(-lower, upper))


def _abs_rule(operand):
  return IntervalBound(*abs_bounds(operand))


def _square_rule(operand, **params):
  """`x**2 = |x|**2`, increasing in `|x|` (docs/bounds.md §6)."""
  abs_lower, abs_upper = abs_bounds(operand)
  return IntervalBound(_P.square_p.bind(abs_lower, **params),
                       _P.square_p.bind(abs_upper, **params))


def _mul_same_operand_rule(operand, *, out_dtype=None):
  """`x * x` of one variable is `x**2`: nonnegative (docs/bounds.md §4)."""
  square = _square_rule(operand)
  if out_dtype is None:
    return square
  return IntervalBound(square.lower.astype(out_dtype),
                       square.upper.astype(out_dtype))


def _sub_same_operand_rule(operand):
  """`x - x == 0` exactly."""
  return jnp.zeros_like(operand.lower)


def _integer_pow_rule(operand, *, y: int):
  """`x**y` for an integer `y` (docs/bounds.md §6).

  Odd `y > 0`: increasing. Even `y > 0`: increasing in `|x|`. `y < 0`:
  the reciprocal of `x**(-y)`, whose interval must exclude 0.
  """
  if y == 0:
    ones = jnp.ones_like(operand.lower)
    return IntervalBound(ones, ones)
  if y < 0:
    return _div_rule(jnp.ones_like(operand.lower),
                     _integer_pow_rule(operand, y=-y))
  if y % 2:
    lower, upper = ends(operand)
  else:
    lower, upper = abs_bounds(operand)
  return IntervalBound(lax.integer_pow(lower, y), lax.integer_pow(upper, y))


def _pow_rule(base, exponent, **params):
  """`x**y` for a float exponent `y` that does not depend on the input (docs/bounds.md §6).

  On `x >= 0`, `x**y` is non-decreasing for `y >= 0` and non-increasing for `y < 0`; for
  `x < 0` it is defined only at integer `y`, where `|x**y| = |x|**y` gives a symmetric hull
  (`[-inf, inf]` for `y < 0` when the interval reaches 0). Non-integer `y` on negative `x`
  is NaN, so there the bounds cover the interval's part in `[0, inf)`. GeM pooling
  (`mean(x**p)**(1/p)` on clamped `x > 0`) is the retrieval use.
  """
  if _is_bound(exponent):
    raise NotImplementedError(
        '`pow` is bounded only for an exponent that does not depend on the perturbed input.')
  lower, upper = ends(base)
  power = functools.partial(_P.pow_p.bind, **params)
  clipped_lower, clipped_upper = jnp.maximum(lower, 0), jnp.maximum(upper, 0)
  increasing = exponent >= 0
  nonnegative = IntervalBound(
      jnp.where(increasing, power(clipped_lower, exponent), power(clipped_upper, exponent)),
      jnp.where(increasing, power(clipped_upper, exponent), power(clipped_lower, exponent)))
  largest_magnitude = power(jnp.maximum(-lower, upper), exponent)  # y > 0: max |x|**y
  smallest_magnitude = power(jnp.maximum(-upper, 0), exponent)  # y < 0 and u < 0: max |x|**y
  magnitude = jnp.where(increasing, largest_magnitude,
                        jnp.where(upper < 0, smallest_magnitude, jnp.inf))
  signed = (lower < 0) & (jnp.round(exponent) == exponent) & (exponent != 0)
  return IntervalBound(jnp.where(signed, -magnitude, nonnegative.lower),
                       jnp.where(signed, magnitude, nonnegative.upper))


def _sort_rule(*operands, **params):
  """`sort` of one operand (values, not `argsort`): order statistics are monotone.

  If `x <= y` elementwise, the k-th smallest entry of `x` is at most that of `y`, so sorting
  the two ends bounds the sorted values (docs/bounds.md §2). With payload operands (`argsort`,
  `sort` by key) the permutation itself depends on the input: rejected.
  """
  if len(operands) != 1:
    raise NotImplementedError(
        '`sort` with payload operands (argsort, sorting by a key) has no interval rule: the '
        'permutation depends on the perturbed input.')
  return _monotone_rule(_P.sort_p)(*operands, **params)


def _is_finite_rule(operand):
  """`is_finite`: surely true when both ends are finite, false for a point at +-inf."""
  lower, upper = ends(operand)
  return IntervalBound(jnp.isfinite(lower) & jnp.isfinite(upper),
                       ~((lower == upper) & jnp.isinf(lower)))


def _rsqrt_rule(operand, **params):
  """`1/sqrt(x)`, decreasing on `x > 0` (docs/bounds.md §7).

  A lower end `<= 0` gives an infinite upper bound.
  """
  lower, upper = ends(operand)
  return IntervalBound(_P.rsqrt_p.bind(jnp.maximum(upper, 0), **params),
                       _P.rsqrt_p.bind(jnp.maximum(lower, 0), **params))


# --- Comparisons and selection. ----------------------------------------------


def _comparison_rule(primitive, *, increasing_in_lhs: bool):
  """`gt`/`ge` (increasing in lhs, decreasing in rhs) or `lt`/`le` (the reverse).

  Bools are ordered False < True: for `gt`, `[l_x > u_y, u_x > l_y]` (docs/bounds.md §2).
  """

  def rule(lhs, rhs, **params):
    lhs_lower, lhs_upper = ends(lhs)
    rhs_lower, rhs_upper = ends(rhs)
    if not increasing_in_lhs:
      lhs_lower, lhs_upper, rhs_lower, rhs_upper = lhs_upper, lhs_lower, rhs_upper, rhs_lower
    return IntervalBound(primitive.bind(lhs_lower, rhs_upper, **params),
                         primitive.bind(lhs_upper, rhs_lower, **params))

  return rule


def _equal_rule(lhs, rhs):
  """`eq`: surely true only for equal points, possibly true if they overlap."""
  lhs_lower, lhs_upper = ends(lhs)
  rhs_lower, rhs_upper = ends(rhs)
  overlap = (lhs_lower <= rhs_upper) & (rhs_lower <= lhs_upper)
  equal_points = ((lhs_lower == lhs_upper) & (rhs_lower == rhs_upper)
                  & (lhs_lower == rhs_lower))
  return IntervalBound(equal_points, overlap)


def _not_equal_rule(lhs, rhs):
  """`ne`: the negation of `eq` (a decreasing map of a bool interval)."""
  equal = _equal_rule(lhs, rhs)
  return IntervalBound(~equal.upper, ~equal.lower)


def _constant_comparison_rule(value: bool):
  """`x op x` of one (non-NaN) variable: constant (`x == x`, `x < x`)."""

  def rule(operand):
    return jnp.full(operand.shape, value)

  return rule


def _select_n_rule(which, *cases, **params):
  """`select_n(which, *cases)` (what `jnp.where` lowers to).

  A concrete `which` picks a case per element: monotone in the cases. A
  bounded `which` (e.g. `x > 0` of a bounded `x`) can pick any case with index
  in `[which.lower, which.upper]`: the union (hull) of those cases' intervals
  (docs/bounds.md §8).
  """
  if not _is_bound(which):
    return _monotone_rule(_P.select_n_p)(which, *cases, **params)
  first_lower, first_upper = ends(cases[0])
  if not jnp.issubdtype(jnp.result_type(first_lower), jnp.floating):
    raise NotImplementedError(
        'select_n with a bounded predicate needs floating-point cases.')
  index_lower = which.lower.astype(jnp.int32)
  index_upper = which.upper.astype(jnp.int32)
  lower, upper = jnp.inf, -jnp.inf
  for index, case in enumerate(cases):
    case_lower, case_upper = ends(case)
    possible = (index_lower <= index) & (index <= index_upper)
    lower = jnp.where(possible, jnp.minimum(lower, case_lower), lower)
    upper = jnp.where(possible, jnp.maximum(upper, case_upper), upper)
  return IntervalBound(lower.astype(first_lower.dtype),
                       upper.astype(first_upper.dtype))


# --- Affine and bilinear primitives: centre/radius form. --------------------


def _bilinear_rule(primitive: jex_core.Primitive):
  """Rule for a primitive bilinear in its two operands (`dot_general`, conv).

  One bounded operand `x = c +- r` and a concrete `W` (either side):
  `W c +- |W| r` (Kakizaki et al. Eqs. 15-16). Two bounded operands:
  `mid = p(c1, c2)`, `rad = p(|c1|, r2) + p(r1, |c2|) + p(r1, r2)`
  (docs/bounds.md §3-4).
  """

  def rule(lhs, rhs, **params):
    bind = functools.partial(primitive.bind, **params)
    if not _is_bound(rhs):
      mid = bind(lhs.center, rhs)
      rad = bind(lhs.radius, jnp.abs(rhs))
    elif not _is_bound(lhs):
      mid = bind(lhs, rhs.center)
      rad = bind(jnp.abs(lhs), rhs.radius)
    else:
      lhs_center, lhs_radius = lhs.center, lhs.radius
      rhs_center, rhs_radius = rhs.center, rhs.radius
      mid = bind(lhs_center, rhs_center)
      rad = (bind(jnp.abs(lhs_center), rhs_radius)
             + bind(lhs_radius, jnp.abs(rhs_center))
             + bind(lhs_radius, rhs_radius))
    return IntervalBound.from_center_radius(mid, rad)

  return rule


# --- Integer arithmetic: wrap-around. -----------------------------------------


def _integer_overflow_guard(primitive: jex_core.Primitive, rule):
  """`rule` for integer operands, with its ends replaced by the type's range where it can wrap.

  Integer `add`, `sub`, `mul`, ... wrap around on overflow, so the rule's ends are valid only
  where no value of the box overflows. The same rule is evaluated on the ends cast to floating
  point (float64 under x64, else float32), which does not wrap; where that result leaves the
  integer range (with a margin for the float rounding), the bound is the whole range.
  """

  def guarded(*invals, **params):
    out = rule(*invals, **params)
    dtype = jnp.result_type(out.lower if _is_bound(out) else out)
    if not jnp.issubdtype(dtype, jnp.integer):
      return out
    float_dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    as_float = lambda value: (IntervalBound(value.lower.astype(float_dtype),
                                            value.upper.astype(float_dtype))
                              if _is_bound(value) else jnp.asarray(value).astype(float_dtype))
    reference = rule(*map(as_float, invals), **params)
    reference_lower, reference_upper = ends(reference)
    margin = 1e-3 if float_dtype == jnp.float32 else 1e-9
    type_min, type_max = _integer_range_of(dtype)
    in_range = ((reference_lower >= type_min - margin * abs(type_min))
                & (reference_upper <= type_max * (1 - margin)))
    out_lower, out_upper = ends(out)
    return IntervalBound(jnp.where(in_range, out_lower, np.asarray(type_min, dtype)),
                         jnp.where(in_range, out_upper, np.asarray(type_max, dtype)))

  guarded.__doc__ = f'{rule.__doc__}\n\nFor integers: see `_integer_overflow_guard`.'
  return guarded


def _reject_integers(primitive: jex_core.Primitive, rule):
  """`rule`, refusing integer operands (integer division, products summed in a contraction)."""

  def checked(*invals, **params):
    if any(_is_bound(value) and jnp.issubdtype(value.lower.dtype, jnp.integer)
           for value in invals):
      raise NotImplementedError(
          f'No interval rule for integer `{primitive.name}` of a value that depends on the '
          'perturbed input (integer arithmetic rounds and wraps around); cast to a floating '
          'type first.')
    return rule(*invals, **params)

  return checked


# --- Where a rule's input leaves the primitive's domain (NaN). ----------------


def _below(bound_min: float):
  """`may_create_nan` of a function defined on `[bound_min, inf)`: NaN below it."""

  def may_create_nan(operand, **params):
    del params
    return jnp.any(ends(operand)[0] < bound_min)

  return may_create_nan


def _pow_may_create_nan(base, exponent, **params):
  """`x**y` is NaN for `x < 0` and a non-integer `y`."""
  del params
  lower, _ = ends(base)
  return jnp.any((lower < 0) & (jnp.round(exponent) != exponent))


def _div_may_create_nan(lhs, rhs, **params):
  """`0 / 0`: the divisor's interval holds 0 (the dividend's may too)."""
  del params
  lower, upper = ends(rhs)
  return jnp.any((lower <= 0) & (upper >= 0))


# --- The table. ---------------------------------------------------------------

MONOTONE_PRIMITIVES = (
    # Shape and data movement.
    _P.reshape_p, _P.broadcast_in_dim_p, _P.transpose_p, _P.squeeze_p,
    _P.rev_p, _P.slice_p, lax.split_p, _P.concatenate_p, lax.stack_p, lax.unstack_p,
    _P.pad_p, _P.copy_p,
    _P.reduce_precision_p, _P.stop_gradient_p, _P.sharding_constraint_p,
    _P.device_put_p,
    # Arithmetic non-decreasing in every operand.
    _P.add_p, _P.add_jaxvals_p, _P.max_p, _P.min_p, _P.clamp_p,
    # Reductions and pooling (sum of, or max/min over, entries).
    _P.reduce_sum_p, _P.reduce_max_p, _P.reduce_min_p,
    _P.reduce_window_sum_p, _P.reduce_window_max_p, _P.reduce_window_min_p,
    _P.cumsum_p, _P.cummax_p, _P.cummin_p, _P.cumlogsumexp_p,
    # Non-decreasing elementwise functions.
    _P.exp_p, _P.exp2_p, _P.expm1_p, _P.tanh_p, _P.logistic_p, _P.erf_p,
    _P.atan_p, _P.asinh_p, _P.sinh_p, _P.cbrt_p, _P.sign_p, _P.floor_p,
    _P.ceil_p, _P.round_p,
)

# Primitive -> positions of its index operands (concrete, used at both ends);
# monotone in the other operands.
INDEXED_PRIMITIVES = {
    _P.dynamic_slice_p: slice(1, None),
    _P.dynamic_update_slice_p: slice(2, None),
    _P.gather_p: slice(1, 2),
    _P.scatter_add_p: slice(1, 2),
}

# Primitive -> lower end of its domain.
DOMAIN_MONOTONE_PRIMITIVES = {
    _P.sqrt_p: 0.,
    _P.log_p: 0.,
    _P.log1p_p: -1.,
}

BILINEAR_PRIMITIVES = (_P.dot_general_p, _P.conv_general_dilated_p)

RULES.update(
    {primitive: _monotone_rule(primitive) for primitive in MONOTONE_PRIMITIVES})
RULES.update({
    primitive: _monotone_rule(primitive, index_operands)
    for primitive, index_operands in INDEXED_PRIMITIVES.items()
})
RULES.update({
    primitive: _domain_monotone_rule(primitive, domain_min)
    for primitive, domain_min in DOMAIN_MONOTONE_PRIMITIVES.items()
})
RULES.update(
    {primitive: _bilinear_rule(primitive) for primitive in BILINEAR_PRIMITIVES})
RULES.update({
    _P.convert_element_type_p: _convert_element_type_rule,
    _P.scatter_p: _scatter_rule,
    _P.sub_p: _sub_rule,
    _P.neg_p: _neg_rule,
    _P.mul_p: _mul_rule,
    _P.div_p: _div_rule,
    _P.abs_p: _abs_rule,
    _P.square_p: _square_rule,
    _P.integer_pow_p: _integer_pow_rule,
    _P.rsqrt_p: _rsqrt_rule,
    _P.pow_p: _pow_rule,
    _P.sort_p: _sort_rule,
    _P.is_finite_p: _is_finite_rule,
    _P.gt_p: _comparison_rule(_P.gt_p, increasing_in_lhs=True),
    _P.ge_p: _comparison_rule(_P.ge_p, increasing_in_lhs=True),
    _P.lt_p: _comparison_rule(_P.lt_p, increasing_in_lhs=False),
    _P.le_p: _comparison_rule(_P.le_p, increasing_in_lhs=False),
    _P.eq_p: _equal_rule,
    _P.ne_p: _not_equal_rule,
    _P.select_n_p: _select_n_rule,
})
# Integer versions of these can wrap around: guarded (`_integer_overflow_guard`).
INTEGER_GUARDED_PRIMITIVES = (
    _P.add_p, _P.add_jaxvals_p, _P.sub_p, _P.neg_p, _P.mul_p, _P.abs_p, _P.square_p,
    _P.integer_pow_p, _P.reduce_sum_p, _P.cumsum_p, _P.reduce_window_sum_p)
# Integer versions of these have no rule (truncating division, contractions, scatter-add).
INTEGER_REJECTED_PRIMITIVES = (_P.div_p, _P.dot_general_p, _P.conv_general_dilated_p, _P.pow_p,
                               _P.scatter_add_p)
RULES.update({primitive: _integer_overflow_guard(primitive, RULES[primitive])
              for primitive in INTEGER_GUARDED_PRIMITIVES})
RULES.update({primitive: _reject_integers(primitive, RULES[primitive])
              for primitive in INTEGER_REJECTED_PRIMITIVES})

NAN_SOURCES.update({
    primitive: _below(domain_min)
    for primitive, domain_min in DOMAIN_MONOTONE_PRIMITIVES.items()
})
NAN_SOURCES.update({
    _P.rsqrt_p: _below(0.),
    _P.pow_p: _pow_may_create_nan,
    _P.div_p: _div_may_create_nan,
})

SAME_OPERAND_RULES.update({
    _P.mul_p: _integer_overflow_guard(_P.mul_p, _mul_same_operand_rule),
    _P.sub_p: _sub_same_operand_rule,
    _P.eq_p: _constant_comparison_rule(True),
    _P.ge_p: _constant_comparison_rule(True),
    _P.le_p: _constant_comparison_rule(True),
    _P.ne_p: _constant_comparison_rule(False),
    _P.gt_p: _constant_comparison_rule(False),
    _P.lt_p: _constant_comparison_rule(False),
})
