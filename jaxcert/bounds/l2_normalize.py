"""A tight interval rule for L2 normalisation x / sqrt(||x||^2 + epsilon) (docs/bounds.md §9).

`l2_normalize` is the function encoders call; the interpreter (`jaxcert.bounds.interval`)
recognises its jitted call by name and bounds it with `l2_normalize_bounds`, tight per
coordinate, instead of composing the bounds of square, sum, rsqrt and mul.
"""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jaxcert.bounds.interval import IntervalBound
from jaxcert.bounds.interval import NAMED_CALL_RULES
from jaxcert.bounds.interval import NAN_SOURCES
from jaxcert.bounds.rules import abs_bounds
from jaxcert.bounds.rules import ends


def _combine_scaled_squares(first, second):
  """Adds two sums of squares held as `(scale, ssq)` with value `scale**2 * ssq`.

  The larger scale is kept and the other sum rescaled by a ratio <= 1, as LAPACK's `nrm2` does,
  so nothing overflows or underflows before it is negligible (`scale > 0` implies `ssq >= 1`).
  """
  first_scale, first_ssq = first
  second_scale, second_ssq = second
  scale = jnp.maximum(first_scale, second_scale)
  safe_scale = jnp.where(scale > 0, scale, 1)
  return scale, (first_ssq * jnp.square(first_scale / safe_scale)
                 + second_ssq * jnp.square(second_scale / safe_scale))


def _sum_of_other_squares(magnitudes, axis: int, epsilon: float):
  """`sum_{j != i} magnitudes_j**2 + epsilon` for every i along `axis`, as `(scale, ssq)`.

  Combines the prefix and the suffix of scaled sums of squares (associative scans), rather than
  `total - magnitudes_i**2`, which loses all precision when entry i dominates, and rather than
  plain squares, which overflow above 1.8e19 and underflow below 1e-23 in float32.
  """
  magnitudes = jnp.moveaxis(magnitudes, axis, -1)
  ones = jnp.ones_like(magnitudes)
  last = magnitudes.ndim - 1
  prefix = lax.associative_scan(_combine_scaled_squares, (magnitudes, ones), axis=last)
  suffix = lax.associative_scan(_combine_scaled_squares, (magnitudes, ones), axis=last,
                                reverse=True)
  zeros = jnp.zeros_like(magnitudes[..., :1])
  before = tuple(jnp.concatenate([zeros, part[..., :-1]], -1) for part in prefix)
  after = tuple(jnp.concatenate([part[..., 1:], zeros], -1) for part in suffix)
  root_epsilon = jnp.full_like(magnitudes, np.sqrt(epsilon))
  scale, ssq = _combine_scaled_squares(_combine_scaled_squares(before, after),
                                       (root_epsilon, ones))
  return jnp.moveaxis(scale, -1, axis), jnp.moveaxis(ssq, -1, axis)


def _ratio_to_norm(value, scale, ssq):
  """`value / sqrt(value**2 + scale**2 * ssq)` without overflow or underflow.

  With `r = value / scale`: `r / sqrt(r**2 + ssq)` for `|r| <= 1` (`ssq >= 1` dominates an
  underflowing `r**2`) and `sign(r) / sqrt(1 + ssq / r**2)` otherwise. Where `scale = 0` (the
  other coordinates and epsilon are 0) the value is `sign(value)`, 0 at `value = 0`.
  """
  positive_scale = scale > 0
  ratio = value / jnp.where(positive_scale, scale, 1)
  small = jnp.abs(ratio) <= 1
  small_ratio = jnp.where(small, ratio, 0)
  large_ratio = jnp.where(small, 1, ratio)
  inside = small_ratio * lax.rsqrt(jnp.square(small_ratio) + ssq)
  outside = jnp.sign(large_ratio) * lax.rsqrt(1 + ssq / jnp.square(large_ratio))
  return jnp.where(positive_scale, jnp.where(small, inside, outside), jnp.sign(value))


def l2_normalize_bounds(lower, upper, *, axis: int = -1,
                        epsilon: float = 0.):
  """Tight elementwise bounds of `x / sqrt(||x||_2**2 + epsilon)` over a box.

  For coordinate i write `S = sum_{j != i} x_j**2 + epsilon`. Then
  `g_i = x_i / sqrt(x_i**2 + S)` is non-decreasing in `x_i` for fixed `S`,
  and for fixed `x_i` decreasing in `S` if `x_i > 0`, increasing if
  `x_i < 0`. Over the box `S` ranges over `[S_min, S_max]` (each `|x_j|` at
  its min or max) independently of `x_i`, so (docs/bounds.md §9)

      upper_i = u_i / sqrt(u_i**2 + (S_min if u_i > 0 else S_max)),
      lower_i = l_i / sqrt(l_i**2 + (S_min if l_i < 0 else S_max)),

  each attained at a point of the box. The sums of squares are kept scaled (no overflow or
  underflow at any finite magnitude). With `epsilon = 0` the function is undefined at `x = 0`;
  the bounds hold everywhere else. Rows with an infinite end get `[-1, 1]`.

  Args:
    lower: lower ends of the box.
    upper: upper ends, same shape.
    axis: the normalised axis.
    epsilon: added to the squared norm, as in `l2_normalize`; >= 0.

  Returns:
    `(out_lower, out_upper)`, the shape of `lower`.
  """
  if not epsilon >= 0:
    raise ValueError(f'epsilon must be >= 0, got {epsilon}.')
  lower, upper = jnp.asarray(lower), jnp.asarray(upper)
  return _l2_normalize_bounds(lower, upper, axis=int(axis) % max(lower.ndim, 1),
                              epsilon=float(epsilon))


@functools.partial(jax.jit, static_argnames=('axis', 'epsilon'))
def _l2_normalize_bounds(lower, upper, *, axis: int, epsilon: float):
  """`l2_normalize_bounds` for a nonnegative axis and a Python-float epsilon (jitted: the scans
  are many small operations)."""
  min_abs, max_abs = abs_bounds(IntervalBound(lower, upper))
  others_min = _sum_of_other_squares(min_abs, axis, epsilon)
  others_max = _sum_of_other_squares(max_abs, axis, epsilon)

  def bound(end, use_min):
    scale, ssq = (jnp.where(use_min, at_min, at_max)
                  for at_min, at_max in zip(others_min, others_max))
    return _ratio_to_norm(end, scale, ssq)

  finite = jnp.all(jnp.isfinite(lower) & jnp.isfinite(upper), axis=axis, keepdims=True)
  out_upper = jnp.where(finite, bound(upper, upper > 0), 1)
  out_lower = jnp.where(finite, bound(lower, lower < 0), -1)
  return out_lower.astype(lower.dtype), out_upper.astype(upper.dtype)


def _l2_normalize_may_create_nan(operand, *, axis: int, epsilon: float):
  """With `epsilon = 0`, `x / ||x||` is `0 / 0` where the box holds the zero vector."""
  if epsilon > 0:
    return False
  lower, upper = ends(operand)
  return jnp.any(jnp.all((lower <= 0) & (upper >= 0), axis=axis))


@functools.cache
def _l2_normalize_function(axis: int, epsilon: float, ndim: int):
  """A jitted `x / sqrt(||x||**2 + epsilon)` for `ndim`-dimensional `x` the interpreter recognises.

  Under `jax.vmap` the call's body gains batch axes, so its input has more than `ndim`
  dimensions and `axis` no longer names the normalised axis: the rule then declines and the
  interpreter bounds the body's primitives instead (sound, looser).
  """

  def normalize(x):
    squared_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * lax.rsqrt(squared_norm + epsilon)

  name = f'jaxcert_l2_normalize(axis={axis}, epsilon={epsilon!r}, ndim={ndim})'
  normalize.__name__ = normalize.__qualname__ = name

  def rule(operand):
    if operand.lower.ndim != ndim:
      return None
    return IntervalBound(*l2_normalize_bounds(
        operand.lower, operand.upper, axis=axis, epsilon=epsilon))

  NAMED_CALL_RULES[name] = rule
  NAN_SOURCES[name] = lambda operand, **params: (
      _l2_normalize_may_create_nan(operand, axis=axis, epsilon=epsilon)
      if operand.lower.ndim == ndim else True)
  return jax.jit(normalize)


def l2_normalize(x, *, axis: int = -1, epsilon: float = 1e-12):
  """`x / sqrt(||x||_2**2 + epsilon)` along `axis`, with a tight interval rule.

  Same values as `x * rsqrt(sum(x**2) + epsilon)` written out, but `interval`
  bounds it with `l2_normalize_bounds` (tight per coordinate) instead of
  composing the bounds of square, sum, rsqrt and mul (sound but loose: the
  numerator and the norm are treated as independent).

  Args:
    x: array.
    axis: the normalised axis.
    epsilon: added to the squared norm (keeps `x = 0` finite); a Python
      float >= 0.

  Returns:
    The normalised array.
  """
  epsilon = float(epsilon)
  if not epsilon >= 0:
    raise ValueError(f'epsilon must be >= 0, got {epsilon}.')
  ndim = jnp.ndim(x)
  if not -ndim <= axis < max(ndim, 1):
    raise ValueError(f'axis {axis} is out of range for an array of {ndim} dimension(s).')
  return _l2_normalize_function(int(axis) % max(ndim, 1), epsilon, ndim)(x)
