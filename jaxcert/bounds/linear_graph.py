"""The graph of a linear-bound computation (`jaxcert.bounds.linear`): its nodes and steps, and
the linear relaxations of the steps CROWN relaxes (docs/linear_bounds.md §3; the formulas are in
`jaxcert.bounds.linear_rules`).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np

from jaxcert.bounds import linear_rules
from jaxcert.bounds.interval import IntervalBound
from jaxcert.bounds.interval import is_concrete

_P = jex_core.primitives


@dataclasses.dataclass(eq=False)
class Node:
  """A bounded value of the interpreted jaxpr.

  Attributes:
    index: position in the graph (the input is 0).
    bound: its interval bound: IBP, tightened by CROWN in method 'crown'.
    producer: index of the step computing it; -1 for the input.
    exact: IBP is exact on it (docs/linear_bounds.md §5), so CROWN cannot tighten it.
    coordinatewise: each coordinate is an affine function of one input coordinate, distinct
      coordinates of distinct ones.
    may_be_nan: whether the value may be NaN somewhere in the box (a bool, or a traced boolean
      scalar), as `jaxcert.bounds.interval` tracks it: the value is NaN or lies in `bound`.
  """
  index: int
  bound: IntervalBound
  producer: int
  exact: bool = False
  coordinatewise: bool = False
  may_be_nan: Any = False

  @property
  def shape(self):
    return self.bound.lower.shape

  @property
  def dtype(self):
    return self.bound.lower.dtype


@dataclasses.dataclass(frozen=True)
class Relaxation:
  """Linear sandwich `sum_k lower_slopes[k] x_k + lower_offset <= y <= sum_k upper_slopes[k] x_k +
  upper_offset` of an elementwise step, one slope per bounded operand (output-shaped arrays)."""
  lower_slopes: tuple
  lower_offset: jax.Array
  upper_slopes: tuple
  upper_offset: jax.Array


@dataclasses.dataclass(eq=False)
class Step:
  """One equation applied to bounded values.

  Attributes:
    primitive, params: the equation's.
    invals: its operands: `Node`s and constants.
    outputs: its results: `Node`s (bounded) or constants.
    kind: 'affine' (exact transpose), 'relaxed' (`relaxation`) or 'interval' (fallback).
    relaxation: the linear sandwich of a relaxed step.
  """
  primitive: jex_core.Primitive
  params: dict
  invals: list
  outputs: list
  kind: str
  relaxation: Relaxation | None = None


def is_float(value) -> bool:
  return jnp.issubdtype(jnp.result_type(value), jnp.floating)


def bounded_positions(invals) -> list[int]:
  return [i for i, value in enumerate(invals) if isinstance(value, Node)]


# --- Relaxations (docs/linear_bounds.md §3; the formulas are in linear_rules). ---------------


def finite_or_constant(slopes_and_offsets, in_bounds, out_bound: IntervalBound):
  """Where an input bound is infinite, the relaxation is replaced by the output's interval."""
  lower_slopes, lower_offset, upper_slopes, upper_offset = slopes_and_offsets
  finite = functools.reduce(operator.and_,
                            [jnp.isfinite(b.lower) & jnp.isfinite(b.upper) for b in in_bounds])
  shape = out_bound.lower.shape
  dtype = out_bound.lower.dtype

  def pick(value, fallback):
    return jnp.broadcast_to(jnp.where(finite, value, fallback), shape).astype(dtype)

  return Relaxation(
      tuple(pick(s, 0) for s in lower_slopes), pick(lower_offset, out_bound.lower),
      tuple(pick(s, 0) for s in upper_slopes), pick(upper_offset, out_bound.upper))


def leaky_relu_slope(steps, invals) -> tuple[Node, Any] | None:
  """`(x, a)` if `select_n(x >= 0, a * x, x)` (jax.nn.leaky_relu) with constant `0 <= a <= 1`."""
  predicate, on_false, on_true = invals
  if not all(isinstance(v, Node) for v in invals) or on_true.producer < 0:
    return None
  compare, scale = steps[predicate.producer], steps[on_false.producer]
  if compare.primitive not in (_P.ge_p, _P.gt_p) or compare.invals[0] is not on_true:
    return None
  if isinstance(compare.invals[1], Node) or np.any(np.asarray(compare.invals[1]) != 0):
    return None
  if scale.primitive is not _P.mul_p or len(bounded_positions(scale.invals)) != 1:
    return None
  operands = scale.invals
  x_position = bounded_positions(operands)[0]
  slope = operands[1 - x_position]
  if operands[x_position] is not on_true or not is_concrete(slope):
    return None
  slope_np = np.asarray(slope)
  if slope_np.ndim or not 0 <= slope_np <= 1:
    return None
  return on_true, slope


def relaxation(primitive, invals, params, out_bound: IntervalBound, steps) -> tuple | None:
  """`(relaxation, relaxed operand positions)` for a relaxable step, else None."""
  positions = bounded_positions(invals)
  shape = out_bound.lower.shape
  if not all(is_float(invals[i].bound.lower) for i in positions) or not is_float(out_bound.lower):
    return None
  if any(invals[i].shape != shape for i in positions):
    return None
  if primitive in (_P.max_p, _P.min_p) and len(positions) == 1:
    x = invals[positions[0]].bound
    threshold = invals[1 - positions[0]]
    if primitive is _P.max_p:
      slopes = linear_rules.relu_like(x.lower, x.upper, threshold)
    else:  # min(x, t) = -max(-x, -t).
      ls, lo, us, uo = linear_rules.relu_like(-x.upper, -x.lower, -threshold)
      slopes = (us, -uo, ls, -lo)
    slopes = ((slopes[0],), slopes[1], (slopes[2],), slopes[3])
    return finite_or_constant(slopes, [x], out_bound), positions
  relax = linear_rules.ELEMENTWISE_RELAXATIONS.get(primitive)
  if relax is not None and len(positions) == 1 and len(invals) == 1:
    x = invals[0].bound
    ls, lo, us, uo = relax(x.lower, x.upper)
    return finite_or_constant(((ls,), lo, (us,), uo), [x], out_bound), positions
  if primitive is _P.integer_pow_p and params['y'] == 2:
    x = invals[0].bound
    ls, lo, us, uo = linear_rules.square_relaxation(x.lower, x.upper)
    return finite_or_constant(((ls,), lo, (us,), uo), [x], out_bound), positions
  if primitive is _P.mul_p and len(positions) == 2:
    first, second = invals
    if first is second:
      x = first.bound
      ls, lo, us, uo = linear_rules.square_relaxation(x.lower, x.upper)
      return finite_or_constant(((ls,), lo, (us,), uo), [x], out_bound), [0]
    # McCormick: xy >= l_y x + l_x y - l_x l_y and xy <= u_y x + l_x y - l_x u_y.
    x, y = first.bound, second.bound
    slopes = ((y.lower, x.lower), -x.lower * y.lower, (y.upper, x.lower), -x.lower * y.upper)
    return finite_or_constant(slopes, [x, y], out_bound), positions
  if primitive is _P.select_n_p and len(invals) == 3:
    match = leaky_relu_slope(steps, invals)
    if match is not None:
      x, slope = match
      ls, lo, us, uo = linear_rules.leaky_relu(x.bound.lower, x.bound.upper, slope)
      return finite_or_constant(((ls,), lo, (us,), uo), [x.bound], out_bound), [2]
  return None
