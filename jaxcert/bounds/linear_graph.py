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
  upper_offset` of an elementwise step, one slope per bounded operand (output-shaped arrays).

  `optimizable` (a boolean mask, or None): where `y = max(x, pivot)` of one operand straddles the
  pivot, so every line `alpha (x - pivot) + pivot` with `0 <= alpha <= 1` is a valid lower line
  (alpha-CROWN's slopes, Xu et al. 2021; docs/linear_bounds.md §5.2); `pivot` is the threshold.
  """
  lower_slopes: tuple
  lower_offset: jax.Array
  upper_slopes: tuple
  upper_offset: jax.Array
  optimizable: jax.Array | None = None
  pivot: jax.Array | None = None


@dataclasses.dataclass(eq=False)
class Step:
  """One equation applied to bounded values.

  Attributes:
    primitive, params: the equation's.
    invals: its operands: `Node`s and constants. For a relaxed step, the values its relaxation
      is linear in are the bounded ones (for a `select_n` of a comparison, the compared value
      alone, `piecewise_select`).
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


def finite_or_constant(slopes_and_offsets, in_bounds, out_bound: IntervalBound, valid=True):
  """Where an input bound is infinite, or not `valid`, the relaxation is replaced by the output's
  interval."""
  lower_slopes, lower_offset, upper_slopes, upper_offset = slopes_and_offsets
  finite = functools.reduce(operator.and_,
                            [jnp.isfinite(b.lower) & jnp.isfinite(b.upper) for b in in_bounds],
                            jnp.asarray(valid))
  shape = out_bound.lower.shape
  dtype = out_bound.lower.dtype

  def pick(value, fallback):
    return jnp.broadcast_to(jnp.where(finite, value, fallback), shape).astype(dtype)

  return Relaxation(
      tuple(pick(s, 0) for s in lower_slopes), pick(lower_offset, out_bound.lower),
      tuple(pick(s, 0) for s in upper_slopes), pick(upper_offset, out_bound.upper))


def constant_of(value):
  """An operand that a relaxation does not use, recorded as a constant (its lower bound)."""
  return value.bound.lower if isinstance(value, Node) else value


def recorded(invals, positions) -> list:
  """The operands of a relaxed step: those at `positions` bounded, the others as constants."""
  return [v if i in positions else constant_of(v) for i, v in enumerate(invals)]


def max_of_two_relaxation(x: IntervalBound, y: IntervalBound, out_bound: IntervalBound,
                          minimum: bool) -> Relaxation:
  """`max(x, y)` (`linear_rules.max_of_two`), or `min(x, y) = -max(-x, -y)`. An operand with a
  zero slope in both lines may have infinite bounds (a dominated one); elsewhere, infinite bounds
  give the output's interval."""
  if minimum:
    x, y = IntervalBound(-x.upper, -x.lower), IntervalBound(-y.upper, -y.lower)
  lower_slopes, lower_offset, upper_slopes, upper_offset = linear_rules.max_of_two(
      x.lower, x.upper, y.lower, y.upper)
  if minimum:
    lower_slopes, lower_offset, upper_slopes, upper_offset = (
        upper_slopes, -upper_offset, lower_slopes, -lower_offset)
  valid = jnp.isfinite(lower_offset) & jnp.isfinite(upper_offset)
  for bound, lower_slope, upper_slope in zip((x, y), lower_slopes, upper_slopes):
    unused = (lower_slope == 0) & (upper_slope == 0)
    valid = valid & (unused | (jnp.isfinite(bound.lower) & jnp.isfinite(bound.upper)))
  return finite_or_constant((lower_slopes, lower_offset, upper_slopes, upper_offset), [],
                            out_bound, valid)


# Comparisons `x cmp t`, and whether `True` means "x is above t" when x is the first operand.
_COMPARISONS = {_P.ge_p: True, _P.gt_p: True, _P.le_p: False, _P.lt_p: False}


def compared_operand(steps, predicate) -> tuple[Node, Any, bool] | None:
  """`(x, t, true_above)` if `predicate` is `x cmp t` (>=, >, <=, <) of a float node `x` and a
  constant `t`, where `true_above` says whether the predicate holds above `t` (it holds on one
  side of `t`, and at `t` or not); None otherwise."""
  if not isinstance(predicate, Node) or predicate.producer < 0:
    return None
  compare = steps[predicate.producer]
  if compare.primitive not in _COMPARISONS or len(compare.invals) != 2:
    return None
  positions = bounded_positions(compare.invals)
  if len(positions) != 1:
    return None
  x, threshold = compare.invals[positions[0]], compare.invals[1 - positions[0]]
  if not is_float(x.bound.lower) or x.shape != predicate.shape or not is_float(threshold):
    return None
  return x, threshold, _COMPARISONS[compare.primitive] == (positions[0] == 0)


def affine_in(steps, value, x: Node) -> tuple[Any, Any] | None:
  """`(slope, offset)` if `value = slope * x + offset` elementwise: a constant, `x` itself, or one
  mul, add, sub or neg step of `x` with constants; None otherwise."""
  if value is x:
    return 1., 0.
  if not isinstance(value, Node):
    return (0., value) if is_float(value) else None
  if value.producer < 0 or value.shape != x.shape:
    return None
  step = steps[value.producer]
  positions = bounded_positions(step.invals)
  if (step.kind != 'affine' or len(step.outputs) != 1 or len(positions) != 1
      or step.invals[positions[0]] is not x):
    return None
  if step.primitive is _P.neg_p:
    return -1., 0.
  if len(step.invals) != 2 or not is_float(step.invals[1 - positions[0]]):
    return None
  constant = step.invals[1 - positions[0]]
  if step.primitive is _P.mul_p:
    return constant, 0.
  if step.primitive is _P.add_p:
    return 1., constant
  if step.primitive is _P.sub_p:
    return (1., -constant) if positions[0] == 0 else (-1., constant)
  return None


def piecewise_select(steps, invals) -> tuple[Node, Any, tuple, tuple] | None:
  """`(x, t, below, above)` if `select_n(x cmp t, on_false, on_true)` has branches affine in `x`
  (`affine_in`): `jax.nn.leaky_relu` (`where(x >= 0, x, a x)`), `where(x > t, x, c)`, steps, ...;
  `below` and `above` are the `(slope, offset)` of the branch taken below and above `t`."""
  if len(invals) != 3:
    return None
  predicate, on_false, on_true = invals
  compared = compared_operand(steps, predicate)
  if compared is None:
    return None
  x, threshold, true_above = compared
  branches = [affine_in(steps, on_false, x), affine_in(steps, on_true, x)]
  if any(branch is None for branch in branches):
    return None
  below, above = branches if true_above else branches[::-1]
  return x, threshold, below, above


def window_max_decomposition(primitive, params, invals):
  """Max pooling (`reduce_window_max`) and `reduce_max` of one bounded operand as gathers and
  maxes of two bounded values (`linear_rules.window_max_gathers`), as a `ClosedJaxpr` to
  interpret in their place; None for anything else (or a window with no element of the input)."""
  if len(invals) != 1 or not isinstance(invals[0], Node) or not is_float(invals[0].bound.lower):
    return None
  shape = invals[0].shape
  if primitive is _P.reduce_window_max_p:
    window = (params['window_dimensions'], params['window_strides'], params['padding'],
              params['base_dilation'], params['window_dilation'])
  elif primitive is _P.reduce_max_p:
    axes = set(params['axes'])
    window = (tuple(n if d in axes else 1 for d, n in enumerate(shape)), (1,) * len(shape),
              ((0, 0),) * len(shape), (1,) * len(shape), (1,) * len(shape))
  else:
    return None
  reshape = jax.eval_shape(lambda x: primitive.bind(x, **params),
                           jax.ShapeDtypeStruct(shape, invals[0].dtype)).shape
  indices = linear_rules.window_max_gathers(shape, *window)
  if indices is None:
    return None

  def decomposed(x):
    pooled = linear_rules.max_of_gathers(x, indices)
    return pooled.reshape(reshape)

  return jax.make_jaxpr(decomposed)(jax.ShapeDtypeStruct(shape, invals[0].dtype))


def relaxation(primitive, invals, params, out_bound: IntervalBound, steps,
               outward: bool = False) -> tuple | None:
  """`(relaxation, operands)` for a relaxable step, else None: `operands` are the step's operands
  to record, the nodes the relaxation is linear in bounded and the others as constants.

  With `outward` (rigorous float32, docs/linear_bounds.md §8) only `max`/`min` with a constant
  (ReLU) is relaxed, by lines valid for the real function; the other steps fall back to their
  (outward) interval bound.
  """
  positions = bounded_positions(invals)
  if outward and not (primitive in (_P.max_p, _P.min_p) and len(positions) == 1
                      and len(invals) == 2):
    return None
  if primitive is _P.select_n_p:
    match = piecewise_select(steps, invals)
    if match is None or not is_float(out_bound.lower) or match[0].shape != out_bound.lower.shape:
      return None
    x, threshold, below, above = match
    lines = linear_rules.piecewise_linear(x.bound.lower, x.bound.upper, threshold, below, above)
    # A constant branch may hide a NaN of x (NaN >= t is False): there, the output's interval.
    return finite_or_constant(((lines[0],), lines[1], (lines[2],), lines[3]), [x.bound], out_bound,
                              valid=jnp.logical_not(x.may_be_nan)), [x]
  shape = out_bound.lower.shape
  if not all(is_float(invals[i].bound.lower) for i in positions) or not is_float(out_bound.lower):
    return None
  if any(invals[i].shape != shape for i in positions):
    return None
  if primitive in (_P.max_p, _P.min_p) and len(positions) == 1:
    x = invals[positions[0]].bound
    threshold = invals[1 - positions[0]]
    if primitive is _P.max_p:
      slopes = linear_rules.relu_like(x.lower, x.upper, threshold, outward)
    else:  # min(x, t) = -max(-x, -t).
      ls, lo, us, uo = linear_rules.relu_like(-x.upper, -x.lower, -threshold, outward)
      slopes = (us, -uo, ls, -lo)
    slopes = ((slopes[0],), slopes[1], (slopes[2],), slopes[3])
    relaxed = finite_or_constant(slopes, [x], out_bound)
    if primitive is _P.max_p and is_float(threshold):
      pivot = jnp.broadcast_to(threshold, shape).astype(out_bound.lower.dtype)
      straddles = ((x.lower < pivot) & (x.upper > pivot) & jnp.isfinite(x.lower)
                   & jnp.isfinite(x.upper))
      relaxed = dataclasses.replace(relaxed, optimizable=straddles, pivot=pivot)
    return relaxed, recorded(invals, positions)
  if primitive in (_P.max_p, _P.min_p) and len(positions) == 2:
    x, y = invals
    if x is y:  # max(x, x) = x.
      identity = ((jnp.ones(shape, out_bound.dtype),), jnp.zeros(shape, out_bound.dtype),
                  (jnp.ones(shape, out_bound.dtype),), jnp.zeros(shape, out_bound.dtype))
      return finite_or_constant(identity, [], out_bound), recorded(invals, [0])
    return max_of_two_relaxation(x.bound, y.bound, out_bound, primitive is _P.min_p), invals
  relax = linear_rules.ELEMENTWISE_RELAXATIONS.get(primitive)
  if relax is not None and len(positions) == 1 and len(invals) == 1:
    x = invals[0].bound
    ls, lo, us, uo = relax(x.lower, x.upper)
    return finite_or_constant(((ls,), lo, (us,), uo), [x], out_bound), recorded(invals, positions)
  if primitive is _P.integer_pow_p and params['y'] == 2 or (
      primitive is _P.pow_p and positions == [0] and is_concrete(invals[1])
      and np.all(np.asarray(invals[1]) == 2)):
    x = invals[0].bound
    ls, lo, us, uo = linear_rules.square_relaxation(x.lower, x.upper)
    return finite_or_constant(((ls,), lo, (us,), uo), [x], out_bound), recorded(invals, positions)
  if primitive is _P.mul_p and len(positions) == 2:
    first, second = invals
    if first is second:
      x = first.bound
      ls, lo, us, uo = linear_rules.square_relaxation(x.lower, x.upper)
      return finite_or_constant(((ls,), lo, (us,), uo), [x], out_bound), recorded(invals, [0])
    # McCormick: xy >= l_y x + l_x y - l_x l_y and xy <= u_y x + l_x y - l_x u_y.
    x, y = first.bound, second.bound
    slopes = ((y.lower, x.lower), -x.lower * y.lower, (y.upper, x.lower), -x.lower * y.upper)
    return finite_or_constant(slopes, [x, y], out_bound), recorded(invals, positions)
  return None
