"""Outward rounding of the linear (CROWN-family) bounds: the rounding error of each backward step.

`linear_bounds(fn, method, rounding='outward')` (`jaxcert.bounds.linear`) computes its bounds in
floating point with round-to-nearest, like the other mode, and subtracts from each row's bound a
*slack* that exceeds the rounding error of everything the backward pass computed, so the result
is a lower bound of the real-valued function (docs/linear_bounds.md §8; the error model and its
assumptions are those of `jaxcert.bounds.rounding`, docs/rigorous_float32.md).

Why a slack suffices. The backward pass needs no exact coefficients: at a step `y = M x + o`
with coefficients `L` on `y` it computes `K = fl(M^T L)`, and for the real values
`L . y = K . x + (M^T L - K) . x + L . o`. The middle term is at most
`sum_j |M^T L - K|_j m_j` in magnitude, where `m = max(|lower|, |upper|)` of `x`'s interval bound
(every real `x` lies in it), and by Higham's bound on a sum of `n` products in any order
(Accuracy and Stability of Numerical Algorithms, 2nd ed., Sec. 3.1, with `2 n tiny` for
underflow, as `jaxcert.bounds.rounding`) `|M^T L - K|_j <= gamma_n (|M|^T |L|)_j + 2 n tiny`,
so it is at most `gamma_n |L| . (|M| m) + 2 n tiny sum(m)`: one forward application of the step
with its constant operands made absolute (`|M| m`, once per example) and one product per row. A
relaxed step `l_x(x) <= y <= u_x(x)` is the same with `M` the chosen slopes (one product per
coordinate), its lines valid for the real function (`jaxcert.bounds.linear_rules.relu_like` with
`outward`). Every sum the pass adds to a row's bound (offsets, concretisation over a box) errs by
at most `gamma_N sum |terms|`. Each term below is an upper bound of the real error computed with
upward-rounded arithmetic (`_sum_above`, `rounding.round_up`), and the slack is their
upward-rounded sum.
"""

from __future__ import annotations

import math

import jax.extend.core as jex_core
import jax.numpy as jnp
from jax import lax
import numpy as np

from jaxcert.bounds import linear_graph
from jaxcert.bounds import rounding

_P = jex_core.primitives

# Affine steps whose transposition only moves, copies or negates coefficients (no rounding).
EXACT_TRANSPOSITIONS = frozenset([
    _P.add_p, _P.sub_p, _P.neg_p, _P.add_jaxvals_p, _P.reshape_p, _P.transpose_p, _P.squeeze_p,
    _P.rev_p, _P.slice_p, lax.split_p, _P.concatenate_p, _P.pad_p, _P.copy_p, _P.reduce_sum_p,
    _P.dynamic_slice_p, _P.dynamic_update_slice_p, _P.select_n_p, _P.convert_element_type_p,
])
# Affine steps whose transposition multiplies by the constant operand (`|M|` is `|constant|`).
_PRODUCTS = frozenset([_P.mul_p, _P.div_p, _P.dot_general_p, _P.conv_general_dilated_p])


def _format(dtype) -> tuple[float, float]:
  info = jnp.finfo(dtype)
  return float(info.eps) / 2, float(info.tiny)


def gamma_above(n: int, dtype) -> float:
  """Higham's `gamma_n`, rounded up to a number of `dtype` (0 for n = 0)."""
  return _gamma_of(rounding.gamma(n, dtype), dtype) if n else 0.0


def _gamma_of(value: float, dtype) -> float:
  """`value` (a small positive factor, computed in float64 with relative error ~1e-16) rounded
  up to a number of `dtype`, with a 1e-12 relative margin over the float64 rounding."""
  value = value * (1 + 1e-12)
  rounded = np.asarray(value, np.float64).astype(dtype)
  if float(rounded) < value:
    rounded = np.nextafter(rounded, np.asarray(np.inf, dtype))
  return float(rounded)


def sum_above(coeffs, values):
  """Per row, a number `>= sum |coeffs| * values` (`values >= 0`, shaped like a row or like
  `coeffs`), with 0 * inf = 0: the round-to-nearest sum times `1 + 4 gamma_N`, plus `2 N tiny`
  for products flushed to zero, rounded up (a sum of N non-negative products is at least
  `(1 - gamma_N)` times its real value less `N tiny`)."""
  magnitudes = jnp.abs(coeffs)
  products = jnp.where(magnitudes != 0, magnitudes * jnp.broadcast_to(values, coeffs.shape), 0)
  count = math.prod(coeffs.shape[1:])
  _, tiny = _format(coeffs.dtype)
  total = products.reshape(coeffs.shape[0], -1).sum(axis=1)
  factor = 1 + 4 * gamma_above(count, coeffs.dtype)
  return rounding.round_up(rounding.round_up(total * factor) + 2 * count * tiny)


def window_error(coeffs, weighted_magnitudes, products: int, summed: bool = False,
                 magnitudes=None):
  """Per row, a bound of the rounding error of coefficients `coeffs` (rows, ...) each computed by
  `products` roundings, paired with values bounded by `magnitudes` through factors bounded by
  `weighted_magnitudes` (factor times magnitude; `magnitudes` defaults to it), and with `summed`
  of the sum of those pairs over the row: `gamma_(products (+ N))` times
  `sum |coeffs| weighted_magnitudes`, plus `2 products tiny sum(magnitudes)` (not `summed`) or
  `2 (products + N) tiny` (`summed`)."""
  count = products + (math.prod(coeffs.shape[1:]) if summed else 0)
  _, tiny = _format(coeffs.dtype)
  error = _scaled_above(sum_above(coeffs, weighted_magnitudes), gamma_above(count, coeffs.dtype))
  if summed:
    return rounding.round_up(error + 2 * count * tiny)
  magnitudes = weighted_magnitudes if magnitudes is None else magnitudes
  ones = jnp.ones_like(coeffs)
  return rounding.round_up(error + _scaled_above(sum_above(ones, magnitudes),
                                                 2 * products * tiny))


def _scaled_above(value, factor: float):
  """`round_up(value * factor)`, `value >= 0` an array, `factor >= 0` a float."""
  return rounding.round_up(value * factor)


def magnitude(node: linear_graph.Node):
  """`max(|lower|, |upper|)` of a node's interval bound: `|x| <=` it for every real value."""
  return jnp.maximum(jnp.abs(node.bound.lower), jnp.abs(node.bound.upper))


def transposed_terms(step: linear_graph.Step) -> int:
  """How many products or addends each transposed coefficient of an affine step sums (Higham's
  `n`); 0 for the exact transpositions. NotImplementedError for an affine step whose
  transposition's error is not bounded here."""
  primitive, params = step.primitive, step.params
  if primitive is _P.pad_p and isinstance(step.invals[1], linear_graph.Node):
    raise NotImplementedError('rounding=\'outward\' linear bounds: a bounded padding value.')
  if primitive in EXACT_TRANSPOSITIONS:
    return 0
  position = linear_graph.bounded_positions(step.invals)
  if primitive in (_P.mul_p, _P.div_p):
    return 1
  if primitive is _P.dot_general_p:
    constant = jnp.shape(step.invals[1 - position[0]])
    (contracting, batch) = params['dimension_numbers']
    own = set(contracting[1 - position[0]]) | set(batch[1 - position[0]])
    return max(1, math.prod(size for d, size in enumerate(constant) if d not in own))
  if (primitive is _P.conv_general_dilated_p and position == [0]
      and params['batch_group_count'] == 1):
    kernel = jnp.shape(step.invals[1])  # Each input coefficient: kernel window x outputs.
    spec = params['dimension_numbers'].rhs_spec
    return max(1, kernel[spec[0]] * math.prod(kernel[d] for d in spec[2:]))
  if primitive is _P.broadcast_in_dim_p:
    return max(1, math.prod(params['shape']) // max(1, math.prod(step.invals[0].shape)))
  if primitive is _P.reduce_window_sum_p:
    return max(1, math.prod(params['window_dimensions']))
  if primitive is _P.cumsum_p:
    return max(1, step.invals[0].shape[params['axis']])
  if primitive is _P.gather_p:
    return max(1, math.prod(step.outputs[0].shape))
  raise NotImplementedError(
      f'rounding=\'outward\' linear bounds have no rounding error bound for transposing '
      f'`{primitive.name}`; use rounding=\'nearest\' (in float64) or method IBP.')


def _bounded(step: linear_graph.Step):
  return [step.invals[i] for i in linear_graph.bounded_positions(step.invals)]


def magnitude_image(step: linear_graph.Step):
  """An upper bound of `|M| m` (output-shaped): the step applied to its operand's magnitude with
  its constant factor made absolute, the forward sum's rounding added outwards."""
  (position,) = linear_graph.bounded_positions(step.invals)
  values = list(step.invals)
  values[position] = magnitude(step.invals[position])
  if step.primitive in _PRODUCTS:
    values[1 - position] = jnp.abs(jnp.asarray(values[1 - position]))
  for index, value in enumerate(values):
    if isinstance(value, linear_graph.Node):
      values[index] = magnitude(value)
  image = step.primitive.bind(*values, **step.primitive.get_bind_params(step.params))
  if step.primitive in (_P.mul_p, _P.div_p):
    forward_terms = 1
  elif step.primitive in (_P.dot_general_p, _P.conv_general_dilated_p):
    forward_terms = rounding._contraction_length(  # pylint: disable=protected-access
        step.primitive, jnp.shape(values[0]), jnp.shape(values[1]), step.params)
  elif step.primitive is _P.gather_p:
    forward_terms = 0
  else:
    forward_terms = transposed_terms(step)
  _, tiny = _format(image.dtype)
  return rounding.round_up(image * (1 + 4 * gamma_above(forward_terms, image.dtype))
                           + 2 * forward_terms * tiny)


def two_stage_gamma(inner: int, outer: int, dtype) -> float:
  """The error factor of sums computed as `outer` partial sums of `inner` products each, added
  up (`rounding._blocked_gamma`: `gamma_inner + gamma_outer (1 + gamma_inner)`), rounded up to
  a number of `dtype`: about `(inner + outer) u` instead of `inner outer u`."""
  first = gamma_above(inner, dtype)
  return _gamma_of(first + gamma_above(outer, dtype) * (1 + first), dtype)


def conv_matmul_gamma(step: linear_graph.Step, dtype) -> float:
  """The error factor of a convolution transposed by `linear_rules.conv_lhs_transpose` with
  `band_max_waste=0` (spread, no band): one product over the output features per kernel
  offset, then the offsets' patches added one after the other (a two-stage sum,
  `two_stage_gamma`). The banded form sums (kernel width x output features) products in one
  stage, which this factor does not bound: the rigorous mode does not use it."""
  kernel = jnp.shape(step.invals[1])
  spec = step.params['dimension_numbers'].rhs_spec
  return two_stage_gamma(kernel[spec[0]], math.prod(kernel[d] for d in spec[2:]), dtype)


def affine_slack(step: linear_graph.Step, out_coeffs: list, offsets: list,
                 gamma: float | None = None):
  """Per row, an upper bound of the rounding error of transposing an affine step (coefficients
  `out_coeffs`, one per output, None where none) and of summing its offset term
  `sum out_coeffs . offsets` (`offsets`: the step's value at 0, or None where it has none).
  `gamma`: the transposition's error factor where it was computed in two stages
  (`two_stage_gamma`), else `gamma_n` of its `transposed_terms`."""
  rows = next(c for c in out_coeffs if c is not None)
  slack = jnp.zeros(rows.shape[:1], rows.dtype)
  terms = transposed_terms(step)
  if terms:
    (coeffs,) = out_coeffs
    (node,) = _bounded(step)
    _, tiny = _format(coeffs.dtype)
    gamma = gamma_above(terms, coeffs.dtype) if gamma is None else gamma
    slack = (_scaled_above(sum_above(coeffs, magnitude_image(step)), gamma)
             + _scaled_above(sum_above(jnp.ones((1,) + node.shape, coeffs.dtype),
                                        magnitude(node)), 2 * terms * tiny))
  for coeffs, offset in zip(out_coeffs, offsets):
    if coeffs is not None and offset is not None:
      slack = rounding.round_up(slack + sum_slack(coeffs, jnp.abs(offset)))
  return rounding.round_up(slack)


def sum_slack(coeffs, magnitudes, extra_terms: int = 1):
  """Per row, an upper bound of the rounding error of a computed sum of `coeffs * values` with
  `|values| <= magnitudes` (plus `extra_terms` additions of such sums): `gamma_(N + extra)`
  times `sum |coeffs| magnitudes`, plus `2 (N + extra) tiny`."""
  count = math.prod(coeffs.shape[1:]) + extra_terms
  _, tiny = _format(coeffs.dtype)
  return rounding.round_up(_scaled_above(sum_above(coeffs, magnitudes),
                                         gamma_above(count, coeffs.dtype)) + 2 * count * tiny)


def relaxed_slack(step: linear_graph.Step, coeffs, lower_slopes, upper_slopes, lower_offset,
                  upper_offset):
  """Per row, an upper bound of the rounding error of `coeffs`' transposition through a relaxed
  step of one operand (`in = fl(coeffs+ lower_slope + coeffs- upper_slope)`: two products and an
  addition a coordinate) and of its offset sum."""
  (node,) = _bounded(step)
  _, tiny = _format(coeffs.dtype)
  slopes = jnp.maximum(jnp.abs(lower_slopes), jnp.abs(upper_slopes))
  size = jnp.ones((1,) + node.shape, coeffs.dtype)
  transposition = (_scaled_above(sum_above(coeffs, slopes * magnitude(node)),
                                 2 * gamma_above(2, coeffs.dtype))
                   + _scaled_above(sum_above(size, magnitude(node)), 4 * tiny))
  offsets = sum_slack(coeffs, jnp.maximum(jnp.abs(lower_offset), jnp.abs(upper_offset)),
                      extra_terms=2)
  return rounding.round_up(rounding.round_up(transposition) + offsets)


def accumulation_slack(total, node: linear_graph.Node):
  """Per row, an upper bound of the rounding error of coefficients `total` summed from two
  consumers of `node` (one addition a coordinate: `u |total| + tiny`, times `|x| <= m`)."""
  unit, tiny = _format(total.dtype)
  size = jnp.ones((1,) + node.shape, total.dtype)
  return rounding.round_up(_scaled_above(sum_above(total, magnitude(node)), 2 * unit)
                           + _scaled_above(sum_above(size, magnitude(node)), tiny))


def addition_slack(total):
  """An upper bound of the rounding error of the addition that gave `total` (per row)."""
  unit, tiny = _format(total.dtype)
  return rounding.round_up(jnp.abs(total) * (2 * unit) + tiny)


__all__ = ['EXACT_TRANSPOSITIONS', 'accumulation_slack', 'addition_slack', 'affine_slack',
           'conv_matmul_gamma', 'gamma_above', 'magnitude', 'magnitude_image', 'relaxed_slack',
           'sum_above', 'sum_slack', 'transposed_terms', 'two_stage_gamma',
           'window_error']
