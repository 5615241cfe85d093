"""Linear relaxations of elementwise functions, and two explicit transposed convolutions.

Used by `jaxcert.bounds.linear` (CROWN family; Zhang et al. 2018, Xu et al. 2020). Each
relaxation maps the interval `[lower, upper]` of an input (arrays) to
`(lower_slope, lower_offset, upper_slope, upper_offset)` with
`lower_slope * x + lower_offset <= f(x) <= upper_slope * x + upper_offset` for every `x` in the
interval. Derivations: docs/linear_bounds.md §3.
"""

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np


def relu_like(lower, upper, threshold):
  """Relaxation of `max(x, threshold)` on `[lower, upper]` (CROWN, Zhang et al. 2018, Sec. 3.2).

  Upper: the secant through `(l, max(l, t))` and `(u, max(u, t))`; lower: the adaptive slope
  (1 where `u - t >= t - l`, else 0), exact on stable neurons.
  """
  active = lower >= threshold
  inactive = upper <= threshold
  width = jnp.where(active | inactive, 1, upper - lower)
  secant = (upper - threshold) / width
  upper_slope = jnp.where(active, 1, jnp.where(inactive, 0, secant))
  upper_offset = jnp.where(active, 0, jnp.where(inactive, threshold, threshold - secant * lower))
  lower_slope = jnp.where(active, 1, jnp.where(inactive, 0,
                                                (upper - threshold >= threshold - lower) * 1.))
  lower_offset = (1 - lower_slope) * threshold
  return lower_slope, lower_offset, upper_slope, upper_offset


def leaky_relu(lower, upper, slope):
  """`max(x, a x)` for `0 <= a <= 1`: convex, two pieces (docs/linear_bounds.md §3.2)."""
  active, inactive = lower >= 0, upper <= 0
  width = jnp.where(active | inactive, 1, upper - lower)
  secant = (upper - slope * lower) / width
  upper_slope = jnp.where(active, 1, jnp.where(inactive, slope, secant))
  upper_offset = jnp.where(active | inactive, 0, slope * lower - secant * lower)
  lower_slope = jnp.where(active, 1, jnp.where(inactive, slope,
                                                jnp.where(upper >= -lower, 1., slope)))
  return lower_slope, jnp.zeros_like(lower_slope), upper_slope, upper_offset


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


ELEMENTWISE_RELAXATIONS = {
    jex_core.primitives.abs_p: abs_relaxation,
    jex_core.primitives.square_p: square_relaxation,
    jex_core.primitives.tanh_p: sigmoid_shaped(jnp.tanh, lambda x: 1 - jnp.square(jnp.tanh(x))),
    jex_core.primitives.logistic_p: sigmoid_shaped(jax.nn.sigmoid,
                                   lambda x: jax.nn.sigmoid(x) * (1 - jax.nn.sigmoid(x))),
}


def conv_lhs_transpose(coeffs, kernel, params, lhs_shape):
  """`L^T A` for `L x = conv(x, kernel)`: one matmul with the kernel, then one padded sum.

  The transposed convolution written as im2col transposed (docs/linear_bounds.md §3.1): each
  output position's coefficients times the kernel give a patch of input coefficients; the
  patches of one kernel offset are spread to their input positions by one `lax.pad` (interior
  padding `stride - 1`, the forward padding cropped by negative edge padding), and the spread
  arrays of all kernel offsets are summed (one fused loop for XLA).
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
  patches = jnp.tensordot(coeffs, kernel.astype(coeffs.dtype), axes=([-1], [-1]))
  lhs_batch, lhs_feature, *lhs_spatial = numbers.lhs_spec
  in_sizes = [lhs_shape[d] for d in lhs_spatial]
  out_sizes = coeffs.shape[2:2 + spatial]
  zero = jnp.zeros((), coeffs.dtype)
  total = 0
  for offset in np.ndindex(*kernel.shape[:spatial]):
    patch = patches[(slice(None),) * (2 + spatial) + offset]
    edges = [(k * dil - lo, in_size - (k * dil - lo + stride * (size - 1) + 1), stride - 1)
             for k, dil, (lo, _), stride, size, in_size in zip(offset, dilation, padding,
                                                               strides, out_sizes, in_sizes)]
    total = total + jax.lax.pad(patch, zero, [(0, 0, 0), (0, 0, 0), *edges, (0, 0, 0)])
  canonical_axis = {lhs_batch: 1, lhs_feature: 2 + spatial,
                    **{d: 2 + i for i, d in enumerate(lhs_spatial)}}
  return jnp.transpose(total, (0, *(canonical_axis[d] for d in range(len(lhs_shape)))))


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
  letters = 'HWDXYZ'[:spatial]
  result = jax.lax.conv_general_dilated(
      folded, flipped, (1,) * spatial, padding, lhs_dilation=params['window_strides'],
      rhs_dilation=params['rhs_dilation'],
      dimension_numbers=(f'N{letters}C', f'{letters}IO', f'N{letters}C'))
  lhs_batch, lhs_feature, *lhs_spatial = numbers.lhs_spec
  result = result.reshape((rows, nhwc.shape[1]) + result.shape[1:])
  canonical_axis = {lhs_batch: 1, lhs_feature: 2 + spatial,
                    **{d: 2 + i for i, d in enumerate(lhs_spatial)}}
  return jnp.transpose(result, (0, *(canonical_axis[d] for d in range(len(lhs_shape)))))
