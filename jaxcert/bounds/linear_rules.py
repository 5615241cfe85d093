"""Linear relaxations of elementwise functions, and two explicit transposed convolutions.

Used by `jaxcert.bounds.linear` (CROWN family; Zhang et al. 2018, Xu et al. 2020). Each
relaxation maps the interval `[lower, upper]` of an input (arrays) to
`(lower_slope, lower_offset, upper_slope, upper_offset)` with
`lower_slope * x + lower_offset <= f(x) <= upper_slope * x + upper_offset` for every `x` in the
interval. Derivations: docs/linear_bounds.md §3.
"""

import functools
from collections.abc import Callable

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
from jax import lax
import numpy as np

from jaxcert.bounds import rounding


def relu_like(lower, upper, threshold, outward: bool = False):
  """Relaxation of `max(x, threshold)` on `[lower, upper]` (CROWN, Zhang et al. 2018, Sec. 3.2).

  Upper: the secant through `(l, max(l, t))` and `(u, max(u, t))`; lower: the adaptive slope
  (1 where `u - t >= t - l`, else 0), exact on stable neurons. With `outward`, the upper line
  holds for the real function although its slope is rounded: its offset is the larger of
  `t - s l` and `u - s u` (a convex function lies below a line that lies above it at both ends),
  each rounded upwards (docs/linear_bounds.md §8); the lower lines (slope 0 or 1, offset `t` or
  0) are exact.
  """
  active = lower >= threshold
  inactive = upper <= threshold
  width = jnp.where(active | inactive, 1, upper - lower)
  secant = (upper - threshold) / width
  upper_slope = jnp.where(active, 1, jnp.where(inactive, 0, secant))
  straddle_offset = threshold - secant * lower
  if outward:
    above = lambda end, value: rounding.round_up(value - rounding.round_down(secant * end))
    straddle_offset = jnp.maximum(above(lower, threshold), above(upper, upper))
  upper_offset = jnp.where(active, 0, jnp.where(inactive, threshold, straddle_offset))
  lower_slope = jnp.where(active, 1, jnp.where(inactive, 0,
                                                (upper - threshold >= threshold - lower) * 1.))
  lower_offset = (1 - lower_slope) * threshold
  return lower_slope, lower_offset, upper_slope, upper_offset


def abs_relaxation(lower, upper):
  """`|x|`: secant above; below, the line through 0 parallel to the secant (slope in [-1, 1])."""
  width = jnp.where(upper > lower, upper - lower, 1)
  straddles = (lower < 0) & (upper > 0)
  secant = (upper + lower) / width
  sign = jnp.where(lower >= 0, 1., -1.)
  upper_slope = jnp.where(straddles, secant, sign)
  upper_offset = jnp.where(straddles, -lower - secant * lower, 0)
  lower_slope = jnp.where(straddles, jnp.clip(secant, -1, 1), sign)
  return lower_slope, jnp.zeros_like(lower_slope), upper_slope, upper_offset


def square_relaxation(lower, upper):
  """`x**2`, convex: secant above, tangent at the midpoint below."""
  midpoint = (lower + upper) / 2
  return 2 * midpoint, -jnp.square(midpoint), lower + upper, -lower * upper


def sigmoid_shaped(function, derivative):
  """Relaxation of an increasing function convex on x < 0, concave on x > 0 (tanh, sigmoid).

  Convex part (`u <= 0`): secant above, tangent at the midpoint below; concave (`l >= 0`): the
  reverse. Straddling 0: the slope `k = min(f'(l), f'(u))` (the least slope on `[l, u]`, as f' is
  unimodal with its peak at 0) makes `f(x) - k x` non-decreasing, so
  `f(l) + k (x - l) <= f(x) <= f(u) + k (x - u)` (docs/linear_bounds.md §3.4).
  """

  def relax(lower, upper):
    f_lower, f_upper = function(lower), function(upper)
    width = upper - lower
    degenerate = width <= 0
    secant = jnp.where(degenerate, derivative(lower),
                       (f_upper - f_lower) / jnp.where(degenerate, 1, width))
    midpoint = (lower + upper) / 2
    tangent_slope = derivative(midpoint)
    tangent_offset = function(midpoint) - tangent_slope * midpoint
    secant_offset = f_lower - secant * lower
    least_slope = jnp.minimum(derivative(lower), derivative(upper))
    convex, concave = upper <= 0, lower >= 0
    lower_slope = jnp.where(convex, tangent_slope, jnp.where(concave, secant, least_slope))
    lower_offset = jnp.where(convex, tangent_offset, jnp.where(
        concave, secant_offset, f_lower - least_slope * lower))
    upper_slope = jnp.where(convex, secant, jnp.where(concave, tangent_slope, least_slope))
    upper_offset = jnp.where(convex, secant_offset, jnp.where(
        concave, tangent_offset, f_upper - least_slope * upper))
    return lower_slope, lower_offset, upper_slope, upper_offset

  return relax


def piecewise_linear(lower, upper, threshold, below, above):
  """Relaxation of a function with two affine pieces on `[lower, upper]`: `below = (slope,
  offset)` for `x < threshold`, `above` for `x > threshold`, either at the threshold itself
  (`where(x >= t, ...)`, leaky ReLU, `where(x > 0, x, 0)`, steps; continuous or not).

  For a slope `k`, `f(x) - k x` is affine on each piece, so its maximum over `[l, u]` is at an end
  of a piece's part of the interval: the offsets are the max (upper line) or min (lower line) of
  `f(p) - k p` over those ends, with both pieces' values at the threshold. Of the slopes of the two
  pieces and the secant, each bound keeps the line lowest (upper) or highest (lower) at the
  midpoint: the least area between line and function (CROWN's adaptive choice). For leaky ReLU
  (`0 <= a <= 1`, convex) this is the secant above and `x` or `a x` below (docs/linear_bounds.md
  §3.2). An interval on one side of the threshold gets that piece exactly.
  """
  threshold = jnp.broadcast_to(threshold, lower.shape).astype(lower.dtype)
  (below_slope, below_offset), (above_slope, above_offset) = below, above

  def below_at(x):
    return below_slope * x + below_offset

  def above_at(x):
    return above_slope * x + above_offset

  has_below, has_above = lower <= threshold, upper >= threshold
  points = [lower, jnp.minimum(upper, threshold), jnp.maximum(lower, threshold), upper]
  values = [below_at(points[0]), below_at(points[1]), above_at(points[2]), above_at(points[3])]
  valid = [has_below, has_below, has_above, has_above]
  width = upper - lower
  at_lower = jnp.where(lower < threshold, values[0], above_at(lower))
  at_upper = jnp.where(upper > threshold, values[3], below_at(upper))
  secant = jnp.where(width > 0, (at_upper - at_lower) / jnp.where(width > 0, width, 1), 0)
  slopes = jnp.stack([jnp.broadcast_to(k, lower.shape).astype(lower.dtype)
                      for k in (above_slope, below_slope, secant)])
  gaps = jnp.stack([value - slopes * point for point, value in zip(points, values)])
  valid = jnp.stack(valid)[:, None]
  upper_offsets = jnp.max(jnp.where(valid, gaps, -jnp.inf), axis=0)
  lower_offsets = jnp.min(jnp.where(valid, gaps, jnp.inf), axis=0)
  midpoint = (lower + upper) / 2

  def pick(index, offsets):
    return (jnp.take_along_axis(slopes, index[None], 0)[0],
            jnp.take_along_axis(offsets, index[None], 0)[0])

  lower_slope, lower_offset = pick(jnp.argmax(slopes * midpoint + lower_offsets, axis=0),
                                   lower_offsets)
  upper_slope, upper_offset = pick(jnp.argmin(slopes * midpoint + upper_offsets, axis=0),
                                   upper_offsets)
  return lower_slope, lower_offset, upper_slope, upper_offset


def max_of_two(lower_x, upper_x, lower_y, upper_y):
  """Relaxation of `max(x, y)` of two bounded values (docs/linear_bounds.md §3.2).

  Returns `((lower slope on x, on y), lower offset, (upper slope on x, on y), upper offset)`.
  Below, `max(x, y) >= x` and `>= y`: the operand with the larger lower bound (the interval's
  lower bound when concretised alone). Above: where one operand's lower bound is at least the
  other's upper bound, that operand exactly; elsewhere, with `x` the operand with the larger upper
  bound, `max(x, y) <= max(x, u_y)`, at most its secant over `[l_x, u_x]`, the line through
  `(l_x, u_y)` and `(u_x, u_x)` (no higher than `max(u_x, u_y)` on the box; auto_LiRPA's
  `BoundMinMax` with its default slopes).
  """
  pick_x = lower_x >= lower_y
  x_dominates, y_dominates = lower_x >= upper_y, lower_y >= upper_x
  x_bigger = upper_x >= upper_y
  big_lower = jnp.where(x_bigger, lower_x, lower_y)
  big_upper = jnp.where(x_bigger, upper_x, upper_y)
  small_upper = jnp.where(x_bigger, upper_y, upper_x)
  width = big_upper - big_lower
  slope = jnp.where(width > 0, (big_upper - small_upper) / jnp.where(width > 0, width, 1), 0)
  offset = small_upper - slope * big_lower
  upper_x_slope = jnp.where(x_dominates, 1., jnp.where(y_dominates, 0.,
                                                        jnp.where(x_bigger, slope, 0.)))
  upper_y_slope = jnp.where(x_dominates, 0., jnp.where(y_dominates, 1.,
                                                        jnp.where(x_bigger, 0., slope)))
  upper_offset = jnp.where(x_dominates | y_dominates, 0., offset)
  return ((pick_x * 1., (~pick_x) * 1.), jnp.zeros_like(lower_x),
          (upper_x_slope, upper_y_slope), upper_offset)


def window_max_gathers(shape, window_dimensions, window_strides, padding, base_dilation,
                       window_dilation) -> list[np.ndarray] | None:
  """`lax.reduce_window(x, -inf, lax.max, ...)` (max pooling) of an `x` of `shape` as the
  elementwise max of gathers of `x`: the flat indices into `x` of each gather (arrays of the
  output's shape), one per window offset; None if a window holds no element of `x`
  (docs/linear_bounds.md §3.5).

  Offset `k` gathers, for every output position, the element of `x` at `k` in its window; where
  that is padding (or a hole of the base dilation), an element of `x` in the same window (in each
  dimension, the window's first offset inside `x`). Duplicates leave the maximum unchanged, so
  `max_of_gathers` equals the pooling.
  """
  per_dimension = []  # For each dimension: (outputs, window) indices into x.
  for size, window, stride, (low, high), base, dilation in zip(
      shape, window_dimensions, window_strides, padding, base_dilation, window_dilation):
    padded = (size - 1) * base + 1 + low + high
    outputs = max((padded - (window - 1) * dilation - 1) // stride + 1, 0)
    position = (stride * np.arange(outputs)[:, None] + dilation * np.arange(window)[None]
                - low)
    inside = (position % base == 0) & (position >= 0) & (position <= (size - 1) * base)
    if not inside.any(axis=1).all():
      return None
    first_inside = np.take_along_axis(position, np.argmax(inside, axis=1)[:, None], 1)
    per_dimension.append(np.where(inside, position, first_inside) // base)
  element_strides = np.cumprod((1,) + tuple(shape)[:0:-1])[::-1]
  ndim = len(shape)
  return [sum(np.expand_dims(table[:, k] * stride, [d for d in range(ndim) if d != axis])
              for axis, (table, k, stride) in enumerate(zip(per_dimension, offset,
                                                          element_strides)))
          for offset in np.ndindex(*window_dimensions)]


def max_of_gathers(x, indices):
  """The elementwise max of `x.reshape(-1)` gathered at each of `indices` (`window_max_gathers`):
  gathers with constant indices (affine) and maxes of two bounded values (`max_of_two`)."""
  flat = x.reshape(-1)
  pieces = [jnp.take(flat, jnp.asarray(index, jnp.int32), mode='clip') for index in indices]
  result = pieces[0]
  for piece in pieces[1:]:
    result = lax.max(result, piece)
  return result

ELEMENTWISE_RELAXATIONS = {
    jex_core.primitives.abs_p: abs_relaxation,
    jex_core.primitives.square_p: square_relaxation,
    jex_core.primitives.tanh_p: sigmoid_shaped(jnp.tanh, lambda x: 1 - jnp.square(jnp.tanh(x))),
    jex_core.primitives.logistic_p: sigmoid_shaped(jax.nn.sigmoid,
                                   lambda x: jax.nn.sigmoid(x) * (1 - jax.nn.sigmoid(x))),
}


def transpose_conv_by_matmul(dtype) -> bool:
  """Whether `conv_lhs_transpose` (else `conv_lhs_transpose_by_conv`) is the faster transposition
  of a convolution for coefficients of `dtype`: in float64 on CPU, where XLA's float64
  convolution runs at about 1 GFLOP/s, several times slower than its float64 matmul. (In float32
  the convolution was faster on CPU also where the transposed convolution has a single output
  feature and a micro-benchmark of it alone favoured the matmul: docs/linear_bounds.md §3.1.)"""
  return dtype == jnp.float64 and jax.default_backend() == 'cpu'


# `conv_lhs_transpose` folds the last spatial axis into a banded matmul where the band is at most
# this many times denser in multiply-adds than the kernel (input width over kernel width): its
# matmul contracts over (width x output features) instead of the output features alone, which
# XLA's CPU float64 matmul runs several times faster (docs/linear_bounds.md §3.1).
BANDED_MAX_WASTE = 4.


def conv_transpose_function(dtype, outward: bool) -> Callable:
  """The explicit transposition of a convolution for coefficients of `dtype`: in the rigorous
  mode (`outward`) `conv_lhs_transpose` spread without a band (the two-stage sums
  `linear_rounding.conv_matmul_gamma` bounds), else `conv_lhs_transpose` where
  `transpose_conv_by_matmul`, else `conv_lhs_transpose_by_conv`."""
  if outward:
    return functools.partial(conv_lhs_transpose, band_max_waste=0.)
  return conv_lhs_transpose if transpose_conv_by_matmul(dtype) else conv_lhs_transpose_by_conv


def conv_lhs_transpose(coeffs, kernel, params, lhs_shape, band_max_waste: float = BANDED_MAX_WASTE):
  """`L^T A` for `L x = conv(x, kernel)`: matmuls with the kernel, then one padded sum.

  The transposed convolution written as im2col transposed (docs/linear_bounds.md §3.1): each
  output position's coefficients times the kernel give a patch of input coefficients; the
  patches of one kernel offset are spread to their input positions by one `lax.pad` (interior
  padding `stride - 1`, the forward padding cropped by negative edge padding), and the spread
  arrays of all kernel offsets are summed (one fused loop for XLA). Where the input is at most
  `band_max_waste` times as wide as the kernel, the last spatial axis is not spread but
  contracted: per offset along the other axes, one matmul of each row of output positions
  (width x output features) with a banded matrix holding the kernel at every position of that
  row (its zeros multiplied too, hence the limit).
  """
  numbers = params['dimension_numbers']
  strides, dilation, padding = (params['window_strides'], params['rhs_dilation'],
                                params['padding'])
  spatial = len(strides)
  out_batch, out_feature, *out_spatial = numbers.out_spec
  coeffs = jnp.transpose(coeffs, (0, 1 + out_batch, *(1 + d for d in out_spatial),
                                  1 + out_feature))  # (rows, n, *out spatial, o)
  out_feature_dim, in_feature_dim, *kernel_spatial = numbers.rhs_spec
  kernel = jnp.transpose(kernel, (*kernel_spatial, in_feature_dim, out_feature_dim))
  kernel = kernel.astype(coeffs.dtype)  # (*kernel spatial, i, o)
  lhs_batch, lhs_feature, *lhs_spatial = numbers.lhs_spec
  in_sizes = [lhs_shape[d] for d in lhs_spatial]
  out_sizes = coeffs.shape[2:2 + spatial]
  banded = in_sizes[-1] <= band_max_waste * kernel.shape[spatial - 1]
  zero = jnp.zeros((), coeffs.dtype)
  if banded:  # (rows, n, *out spatial[:-1], out width x o) @ (out width x o, in width x i)
    band = _band_matrix(kernel, strides[-1], dilation[-1], padding[-1][0], out_sizes[-1],
                        in_sizes[-1])
    flat = coeffs.reshape(coeffs.shape[:1 + spatial] + (-1,))
    spread_axes = spatial - 1
  else:
    patches = jnp.tensordot(coeffs, kernel, axes=([-1], [-1]))
    spread_axes = spatial
  total = 0
  for offset in np.ndindex(*kernel.shape[:spread_axes]):
    if banded:
      patch = jnp.matmul(flat, band[offset]).reshape(
          coeffs.shape[:1 + spatial] + (in_sizes[-1], kernel.shape[-2]))
    else:
      patch = patches[(slice(None),) * (2 + spatial) + offset]
    edges = [(k * dil - lo, in_size - (k * dil - lo + stride * (size - 1) + 1), stride - 1)
             for k, dil, (lo, _), stride, size, in_size in zip(offset, dilation, padding,
                                                               strides, out_sizes, in_sizes)]
    edges += [(0, 0, 0)] * (spatial - spread_axes)
    total = total + jax.lax.pad(patch, zero, [(0, 0, 0), (0, 0, 0), *edges, (0, 0, 0)])
  canonical_axis = {lhs_batch: 1, lhs_feature: 2 + spatial,
                    **{d: 2 + i for i, d in enumerate(lhs_spatial)}}
  return jnp.transpose(total, (0, *(canonical_axis[d] for d in range(len(lhs_shape)))))


def _band_matrix(kernel, stride: int, dilation: int, low: int, out_size: int, in_size: int):
  """(*kernel spatial[:-1], out_size * o, in_size * i): along the kernel's last spatial axis, output
  position x and input position x' = x * stride + j * dilation - low (inside the input) meet
  through the kernel's tap j; the other entries are 0."""
  taps = np.zeros((kernel.shape[-3], out_size, in_size))
  for tap in range(kernel.shape[-3]):
    for position in range(out_size):
      source = position * stride + tap * dilation - low
      if 0 <= source < in_size:
        taps[tap, position, source] = 1
  band = jnp.einsum('jxy,...jio->...xoyi', jnp.asarray(taps, kernel.dtype), kernel)
  return band.reshape(kernel.shape[:-3] + (out_size * kernel.shape[-1], in_size * kernel.shape[-2]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def channels_last_conv(lhs, kernel, padding, lhs_dilation, rhs_dilation):
  """Unit-stride convolution of a channels-last `lhs` (N, *spatial, I) with an (*spatial, I, O)
  kernel, whose kernel cotangent is computed by one matmul per kernel offset.

  The value and the input's cotangent are XLA's. The kernel's cotangent, the sum over examples
  and output positions of input window times output cotangent, is what reverse-mode
  differentiation of `conv_lhs_transpose_by_conv` needs when a training loss goes through the
  CROWN-IBP backward pass (the rows make its batch); XLA's CPU convolution for it ran at about
  1 GMAC/s on those shapes (the Small CNN's second convolution, 400 rows: 285 ms), the matmuls at
  several times that (65 ms). Being a `custom_vjp`, it has no forward-mode derivative: the
  linear bounds differentiate in reverse mode (`jax.grad`) only, which is what training uses.
  """
  return _conv_channels_last(lhs, kernel, padding, lhs_dilation, rhs_dilation)


def _conv_channels_last(lhs, kernel, padding, lhs_dilation, rhs_dilation):
  letters = 'HWDXYZ'[:lhs.ndim - 2]
  return jax.lax.conv_general_dilated(
      lhs, kernel, (1,) * (lhs.ndim - 2), padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=(f'N{letters}C', f'{letters}IO', f'N{letters}C'))


def _channels_last_conv_forward(lhs, kernel, padding, lhs_dilation, rhs_dilation):
  return _conv_channels_last(lhs, kernel, padding, lhs_dilation, rhs_dilation), (lhs, kernel)


def _channels_last_conv_backward(padding, lhs_dilation, rhs_dilation, residuals, cotangent):
  lhs, kernel = residuals
  _, lhs_transpose = jax.vjp(
      lambda x: _conv_channels_last(x, kernel, padding, lhs_dilation, rhs_dilation), lhs)
  # The dilated, padded input (negative padding crops), then, per kernel offset, its window of
  # the output's spatial size times the output cotangent, summed over examples and positions.
  spatial = lhs.ndim - 2
  padded = jax.lax.pad(lhs, jnp.zeros((), lhs.dtype),
                       [(0, 0, 0), *((lo, hi, d - 1) for (lo, hi), d in zip(padding, lhs_dilation)),
                        (0, 0, 0)])
  out_sizes = cotangent.shape[1:1 + spatial]
  flat_cotangent = cotangent.reshape(-1, cotangent.shape[-1])
  kernel_cotangent = jnp.stack([
      jnp.tensordot(jax.lax.slice(padded, (0, *(k * d for k, d in zip(offset, rhs_dilation)), 0),
                                  (padded.shape[0],
                                   *(k * d + n for k, d, n in zip(offset, rhs_dilation, out_sizes)),
                                   padded.shape[-1])).reshape(-1, lhs.shape[-1]),
                    flat_cotangent, axes=([0], [0]))
      for offset in np.ndindex(*kernel.shape[:spatial])]).reshape(kernel.shape)
  return lhs_transpose(cotangent)[0], kernel_cotangent.astype(kernel.dtype)


channels_last_conv.defvjp(_channels_last_conv_forward, _channels_last_conv_backward)


def conv_lhs_transpose_padding(params, kernel_sizes, lhs_shape, out_shape):
  """Per spatial axis, the `(before, after)` padding of the convolution computing `L^T A` of
  `conv_lhs_transpose_by_conv`: `(k_e - 1 - lo, in + lo - (out - 1) s - 1)` with `k_e` the dilated
  kernel size, `lo` the forward padding before, `s` the stride (docs/linear_bounds.md §3.1).
  `kernel_sizes`: the kernel's spatial sizes, in the order of the spatial dimensions."""
  numbers = params['dimension_numbers']
  padding = []
  for axis, (lhs_dim, out_dim) in enumerate(zip(numbers.lhs_spec[2:], numbers.out_spec[2:])):
    dilated = (kernel_sizes[axis] - 1) * params['rhs_dilation'][axis] + 1
    low = params['padding'][axis][0]
    padding.append((dilated - 1 - low, lhs_shape[lhs_dim] + low
                    - (out_shape[out_dim] - 1) * params['window_strides'][axis] - 1))
  return padding


def conv_lhs_transpose_by_conv(coeffs, kernel, params, lhs_shape):
  """`L^T A` for `L x = conv(x, kernel)` as one convolution of the rows with the flipped kernel.

  The rows (shape (rows, *output shape)) are folded into the convolution's batch axis, moved to
  NHWC, dilated by the forward strides (`lhs_dilation`) and convolved with the kernel flipped in
  space and with its input and output features swapped, physically laid out as HWIO: the
  layout XLA's CPU convolution runs fast on (the VJP's convolution, whose kernel is a reversed
  view with swapped feature dimensions, runs about 20x slower on CPU inside a loop). Needs
  `feature_group_count == batch_group_count == 1`, no input dilation and non-negative transposed
  padding (`conv_lhs_transpose_padding`); equal to the VJP (tested).
  """
  numbers = params['dimension_numbers']
  spatial = len(params['window_strides'])
  out_batch, out_feature, *out_spatial = numbers.out_spec
  rows = coeffs.shape[0]
  # (rows, *out) -> (rows * n, *out spatial, o): channels last, rows folded into the batch.
  nhwc = jnp.transpose(coeffs, (0, 1 + out_batch, *(1 + d for d in out_spatial),
                                1 + out_feature))
  folded = nhwc.reshape((-1,) + nhwc.shape[2:])
  out_feature_dim, in_feature_dim, *kernel_spatial = numbers.rhs_spec
  flipped = jnp.flip(jnp.transpose(kernel, (*kernel_spatial, out_feature_dim, in_feature_dim)),
                     tuple(range(spatial))).astype(coeffs.dtype)
  out_shape = coeffs.shape[1:]
  padding = conv_lhs_transpose_padding(params, [kernel.shape[d] for d in kernel_spatial],
                                       lhs_shape, out_shape)
  result = channels_last_conv(folded, flipped, tuple(map(tuple, padding)),
                              tuple(params['window_strides']), tuple(params['rhs_dilation']))
  lhs_batch, lhs_feature, *lhs_spatial = numbers.lhs_spec
  result = result.reshape((rows, nhwc.shape[1]) + result.shape[1:])
  canonical_axis = {lhs_batch: 1, lhs_feature: 2 + spatial,
                    **{d: 2 + i for i, d in enumerate(lhs_spatial)}}
  return jnp.transpose(result, (0, *(canonical_axis[d] for d in range(len(lhs_shape)))))
