"""CROWN bounds of a convolution's output neurons in patches (docs/linear_bounds.md §5.1).

Method 'crown' of `jaxcert.bounds.linear` tightens the input of every ReLU by a backward pass
from it. For the output `y` of a convolution `y = conv(x, K)`, the row of neuron `(p, o)`
(position `p`, output channel `o`) is `K[..., o]` on the window of `p` in `x`, zero elsewhere;
through elementwise steps (ReLU relaxations, bias, BatchNorm scale and shift) it stays on that
window, and through an earlier convolution the window grows by that convolution's kernel. So
the rows of the neurons to bound are carried as *patches*, one window-shaped array per neuron
(shape (2, neurons, window_h, window_w, in_channels): the lower and upper bound rows), instead of
dense arrays over the whole feature map; this is auto_LiRPA's patches mode (Xu et al. 2020,
"Automatic perturbation analysis for scalable certified robustness and beyond", Sec. 3.3 and
their `Patches` class), restricted to the neurons whose bounds matter (the unstable ones, chosen
by the caller), as auto_LiRPA's sparse intermediate bounds do for dense layers. Elementwise
quantities (slopes, offsets, interval bounds) are gathered on each neuron's window;
coefficients on the zero padding of a convolution are dropped (the padding is a constant 0
there). The bounds equal the dense backward pass's (`linear._backward`) up to rounding (tested).

The pass applies when the node's producer chain is, back to the input or to an interval
(fallback) step, a sequence of: 2-D convolutions in NHWC with a constant kernel (any stride and
non-negative padding, no dilation, no groups), elementwise affine steps with one bounded operand
(add, sub, mul, div by constants, neg, float casts), and elementwise relaxed steps with one
bounded operand (ReLU, ...). Otherwise `patch_chain` returns None and the caller uses the dense
pass.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp

from jaxcert.bounds import linear_graph
from jaxcert.bounds import linear_rounding
from jaxcert.bounds import linear_rules
from jaxcert.bounds import rounding
from jaxcert.bounds.interval import IntervalBound

_P = jex_core.primitives

_NHWC = (0, 3, 1, 2)  # lax.ConvDimensionNumbers spec of an NHWC array: (batch, feature, h, w).
_ELEMENTWISE_AFFINE = frozenset([_P.add_p, _P.sub_p, _P.mul_p, _P.div_p, _P.neg_p,
                                 _P.convert_element_type_p, _P.copy_p])

# Entries of the patches carried at once per example (the output channels are split in chunks
# under it), chosen per call by `patch_budget`: about PATCH_ENTRIES_PER_CALL over the batch, at
# least MIN_PATCH_BUDGET (2**15 float64 entries: 256 KB an example, 13 MB for a batch of 50, where
# a larger budget was not faster on CPU) and at most MAX_PATCH_BUDGET (one Large-CNN image's CROWN
# 1.5x faster at 2**17 than at 2**15, slower again at 2**20; docs/linear_bounds.md §7).
MIN_PATCH_BUDGET = 2 ** 15
MAX_PATCH_BUDGET = 2 ** 17
PATCH_ENTRIES_PER_CALL = 2 ** 20


@dataclasses.dataclass(frozen=True)
class _Window:
  """Where each neuron's patch lies on a feature map: for the neuron at position `p` of the
  node, rows `start + stride * p + i` for `0 <= i < size` (and the same for columns), on a map of
  `extent` rows and columns; `positions` is the node's number of positions (rows, columns)."""
  start: tuple[int, int]
  stride: tuple[int, int]
  size: tuple[int, int]
  extent: tuple[int, int]
  positions: tuple[int, int]

  def indices(self, neuron_rows, neuron_cols):
    """Row and column indices of each neuron's window: ((n, size_h), (n, size_w))."""
    return tuple(start + stride * neuron[:, None] + jnp.arange(size)[None]
                 for start, stride, size, neuron in zip(self.start, self.stride, self.size,
                                                        (neuron_rows, neuron_cols)))

  def padding(self):
    """(before, after) zero padding of the map that holds every neuron's window."""
    return [(max(0, -start), max(0, start + stride * (count - 1) + size - extent))
            for start, stride, size, count, extent in zip(self.start, self.stride, self.size,
                                                          self.positions, self.extent)]


def _is_nhwc_conv(step: linear_graph.Step) -> bool:
  if step.primitive is not _P.conv_general_dilated_p or step.kind != 'affine':
    return False
  params = step.params
  numbers = params['dimension_numbers']
  return (linear_graph.bounded_positions(step.invals) == [0]
          and len(params['window_strides']) == 2
          and tuple(numbers.lhs_spec) == _NHWC and tuple(numbers.out_spec) == _NHWC
          and params['feature_group_count'] == 1 and params['batch_group_count'] == 1
          and all(d == 1 for d in params['lhs_dilation'])
          and all(d == 1 for d in params['rhs_dilation'])
          and all(lo >= 0 and hi >= 0 for lo, hi in params['padding']))


def _is_elementwise(step: linear_graph.Step, kinds) -> bool:
  positions = linear_graph.bounded_positions(step.invals)
  return (step.kind in kinds and len(positions) == 1 and len(step.outputs) == 1
          and isinstance(step.outputs[0], linear_graph.Node)
          and step.outputs[0].shape == step.invals[positions[0]].shape)


def patch_chain(steps, node: linear_graph.Node) -> list[linear_graph.Step] | None:
  """The steps from `node` back to the input (or to an interval step), if patches apply.

  Returns them output first; None if `node` is not (1, H, W, C)-shaped, its chain holds no
  convolution, or a step of the chain is not one the patches pass handles.
  """
  if node.producer < 0 or len(node.shape) != 4 or node.shape[0] != 1:
    return None
  chain = []
  current = node
  while current.producer >= 0:
    step = steps[current.producer]
    if step.kind == 'interval':
      if len(step.outputs) != 1:
        return None
      chain.append(step)
      break
    if not (_is_nhwc_conv(step) or _is_elementwise(step, ('relaxed',)) or (
        _is_elementwise(step, ('affine',)) and step.primitive in _ELEMENTWISE_AFFINE
        and (step.primitive is not _P.div_p
             or linear_graph.bounded_positions(step.invals) == [0]))):
      return None
    chain.append(step)
    current = step.invals[linear_graph.bounded_positions(step.invals)[0]]
    if len(current.shape) != 4:
      return None
  if not any(step.primitive is _P.conv_general_dilated_p for step in chain):
    return None
  return chain


@dataclasses.dataclass(frozen=True)
class _Neurons:
  """The neurons of a pass: position (row, column) and channel of each, shape (n,) each."""
  rows: jax.Array
  cols: jax.Array
  channels: jax.Array
  flat: jax.Array  # Index into the node's (H, W, C) values.

  @classmethod
  def of(cls, flat, node: linear_graph.Node):
    _, _, width, channels = node.shape
    return cls(rows=flat // (width * channels), cols=(flat // channels) % width,
               channels=flat % channels, flat=flat)


def _gather(values, window: _Window, neurons: _Neurons, dtype):
  """`values` (broadcastable to (1, H, W, C), H and W the map's) on each neuron's window:
  (n, h, w, C), zero outside the map (exact, also where values are infinite)."""
  values = jnp.asarray(values, dtype)
  values = jnp.broadcast_to(values, (1, *window.extent, values.shape[-1] if values.ndim else 1))
  pad = window.padding()
  padded = jnp.pad(values[0], (*pad, (0, 0)))
  starts = [start + stride * neuron + before for start, stride, neuron, (before, _) in
            zip(window.start, window.stride, (neurons.rows, neurons.cols), pad)]
  sizes = (*window.size, padded.shape[-1])
  return jax.vmap(lambda row, col: jax.lax.dynamic_slice(padded, (row, col, 0), sizes))(*starts)


def _inside_mask(window: _Window, neurons: _Neurons):
  """1 where a window entry lies on the map, 0 on the padding: (n, h, w, 1)."""
  rows, cols = window.indices(neurons.rows, neurons.cols)
  inside = ((rows >= 0) & (rows < window.extent[0]))[:, :, None] & (
      (cols >= 0) & (cols < window.extent[1]))[:, None, :]
  return inside[..., None]


def _weighted_sum(coeffs, values):
  """Sum of `coeffs * values` over the window axes, with 0 * inf = 0: (2, n)."""
  products = jnp.where(coeffs != 0, coeffs * values, 0)
  return products.sum(axis=(-3, -2, -1))


def _conv_transpose_patches(patches, step: linear_graph.Step, outward: bool = False):
  """Rows on a convolution's output windows -> rows on its input windows (VALID, stride s); in
  two stages (`conv_lhs_transpose`, `linear_rounding.conv_matmul_gamma`) with `outward`."""
  leading = patches.shape[:-3]
  h, w, channels = patches.shape[-3:]
  flat = patches.reshape((-1, 1, h, w, channels))
  kernel_h, kernel_w, in_channels, _ = _hwio_kernel(step).shape
  strides = step.params['window_strides']
  in_shape = (1, (h - 1) * strides[0] + kernel_h, (w - 1) * strides[1] + kernel_w, in_channels)
  valid = dict(step.params, padding=((0, 0), (0, 0)))
  transpose = linear_rules.conv_transpose_function(patches.dtype, outward)
  out = transpose(flat, jnp.asarray(step.invals[1], patches.dtype), valid, in_shape)
  return out.reshape(leading + in_shape[1:])


def _hwio_kernel(step: linear_graph.Step):
  numbers = step.params['dimension_numbers']
  out_feature, in_feature, *spatial = numbers.rhs_spec
  return jnp.transpose(jnp.asarray(step.invals[1]), (*spatial, in_feature, out_feature))


def _own_values(values, neurons: _Neurons, node: linear_graph.Node):
  """`values` (broadcastable to `node`'s shape) at each neuron's own coordinate: (n,)."""
  values = jnp.broadcast_to(jnp.asarray(values, node.dtype), node.shape)
  return values.reshape(-1)[neurons.flat]


def _diagonal_to_first_conv(chain, node: linear_graph.Node, neurons: _Neurons,
                            outward: bool = False):
  """The rows `+-e_(p,o)` carried through the elementwise steps above the first convolution,
  where each row is still a multiple `scale` of its own coordinate, and then through that
  convolution, where it becomes `scale` times the kernel of channel `o` on `p`'s window.

  Returns (coefficients (2, n, kh, kw, C_in), bias (2, n), window, index of the next step of
  the chain, slack (2, n): with `outward`, a bound of the rounding error of all of it, else 0).
  """
  dtype = node.dtype
  count = neurons.flat.shape[0]
  scale = jnp.concatenate([jnp.ones((1, count), dtype), -jnp.ones((1, count), dtype)])
  bias = jnp.zeros_like(scale)
  slack = jnp.zeros_like(scale)
  current = node
  for index, step in enumerate(chain):
    own = lambda values: _own_values(values, neurons, current)
    if step.primitive is _P.conv_general_dilated_p:
      kernel = _hwio_kernel(step).astype(dtype)
      rows = jnp.moveaxis(kernel[..., neurons.channels], -1, 0)  # (n, kh, kw, C_in).
      coeffs = scale[..., None, None, None] * rows[None]
      strides, padding = step.params['window_strides'], step.params['padding']
      node_in = step.invals[0]
      window = _Window(start=(-padding[0][0], -padding[1][0]), stride=tuple(strides),
                       size=rows.shape[1:3], extent=node_in.shape[1:3],
                       positions=node.shape[1:3])
      coeffs = coeffs * _inside_mask(window, neurons)[None].astype(dtype)
      if outward:  # One product an entry.
        magnitudes = _gather(linear_rounding.magnitude(node_in), window, neurons, dtype)[None]
        slack = _add_up(slack, _window_slack(coeffs, magnitudes, products=1))
      return coeffs, bias, window, index + 1, slack
    node_in = step.invals[linear_graph.bounded_positions(step.invals)[0]]
    if step.kind == 'relaxed':
      relaxation = step.relaxation
      positive, negative = jnp.maximum(scale, 0), jnp.minimum(scale, 0)
      lower_offset, upper_offset = own(relaxation.lower_offset), own(relaxation.upper_offset)
      bias = bias + (jnp.where(positive != 0, positive * lower_offset, 0)
                     + jnp.where(negative != 0, negative * upper_offset, 0))
      lower_slope, upper_slope = own(relaxation.lower_slopes[0]), own(relaxation.upper_slopes[0])
      if outward:  # Two products and an addition, into the bias and into the scale.
        offsets = jnp.maximum(jnp.abs(lower_offset), jnp.abs(upper_offset))
        slopes = jnp.maximum(jnp.abs(lower_slope), jnp.abs(upper_slope))
        magnitude = _own_values(linear_rounding.magnitude(node_in), neurons, node_in)
        slack = _add_up(slack, _scalar_slack(scale, offsets, products=3),
                        _scalar_slack(scale, slopes * magnitude, products=2),
                        linear_rounding.addition_slack(bias))
      scale = positive * lower_slope + negative * upper_slope
    else:  # Elementwise affine: y = slope * x + offset.
      offset, slope = _elementwise_affine(step, node_in)
      bias = bias + jnp.where(scale != 0, scale * own(offset), 0)
      if outward:
        magnitude = _own_values(linear_rounding.magnitude(node_in), neurons, node_in)
        slack = _add_up(slack, _scalar_slack(scale, jnp.abs(own(offset)), products=2),
                        _scalar_slack(scale, jnp.abs(own(slope)) * magnitude, products=1),
                        linear_rounding.addition_slack(bias))
      scale = scale * own(slope)
    current = node_in
  raise AssertionError('A patch chain without a convolution (patch_chain admits none).')


def _add_up(total, *terms):
  """`total + sum(terms)` rounded upwards (slacks: non-negative error bounds)."""
  for term in terms:
    total = rounding.round_up(total + term)
  return total


def _scalar_slack(scale, magnitudes, products: int):
  """A bound of the rounding error of `products` chained roundings of `scale * value` with
  `|value| <= magnitudes` (both (2, n)): `gamma_products |scale| magnitudes` plus
  `2 products tiny`, rounded up."""
  gamma = linear_rounding.gamma_above(products, scale.dtype)
  tiny = float(jnp.finfo(scale.dtype).tiny)
  product = jnp.where(scale != 0, jnp.abs(scale) * magnitudes, 0)
  return rounding.round_up(rounding.round_up(product * (2 * gamma)) + 2 * products * tiny)


def _per_row(coeffs, values):
  """Window-shaped `coeffs` (2, n, h, w, C) and `values` (broadcastable to it) as rows of one
  (2 n, h, w, C) array each, the layout of `linear_rounding`'s per-row bounds."""
  flat_shape = (coeffs.shape[0] * coeffs.shape[1],) + coeffs.shape[2:]
  return coeffs.reshape(flat_shape), jnp.broadcast_to(values, coeffs.shape).reshape(flat_shape)


def _scaled_slack(coeffs, weighted, gamma: float):
  """Per (side, neuron), `gamma` times `sum |coeffs| weighted` over the window, rounded up."""
  total = linear_rounding.sum_above(*_per_row(coeffs, weighted))
  return rounding.round_up(total * gamma).reshape(coeffs.shape[:2])


def _window_slack(coeffs, weighted, products: int, summed: bool = False, magnitudes=None):
  """Per (side, neuron), a bound of the rounding error of window coefficients `coeffs`
  (2, n, h, w, C) each computed by `products` roundings, paired with values bounded by
  `magnitudes` through factors bounded by `weighted` (factor times magnitude), and with `summed`
  of their sum over the window (`linear_rounding.window_error`)."""
  flat, flat_weighted = _per_row(coeffs, weighted)
  flat_magnitudes = None if magnitudes is None else _per_row(coeffs, magnitudes)[1]
  return linear_rounding.window_error(flat, flat_weighted, products, summed,
                                      flat_magnitudes).reshape(coeffs.shape[:2])


def patch_lower_bounds(chain, node: linear_graph.Node, flat_indices,
                       outward: bool = False) -> jax.Array:
  """Lower bounds of `e_i . node` and of `-e_i . node` for the coordinates `i` of `flat_indices`.

  Args:
    chain: `patch_chain(steps, node)`.
    node: shape (1, H, W, C).
    flat_indices: (n,) integer indices into the node's H * W * C coordinates (row-major).
    outward: bound each step's rounding error, as the dense pass does (`linear_rounding`,
      docs/linear_bounds.md §8), and subtract their sum: bounds of the real-valued function.

  Returns:
    (2, n): the lower bounds, then the negated upper bounds (not intersected with the node's
    interval bound).
  """
  dtype = node.dtype
  neurons = _Neurons.of(flat_indices, node)
  coeffs, bias, window, first, slack = _diagonal_to_first_conv(chain, node, neurons, outward)

  def finish(total, bound):  # The concretisation over `bound`, less the slack.
    if not outward:
      return total
    lower = _gather(bound.lower, window, neurons, dtype)[None]
    upper = _gather(bound.upper, window, neurons, dtype)[None]
    magnitudes = jnp.maximum(jnp.abs(lower), jnp.abs(upper))
    total_slack = _add_up(slack, _window_slack(coeffs, magnitudes, products=2, summed=True),
                          linear_rounding.addition_slack(total))
    return rounding.round_down(total - total_slack)

  for step in chain[first:]:
    if step.kind == 'interval':  # A fallback value: min over its interval bound.
      bound = step.outputs[0].bound
      return finish(bias + _concretize(coeffs, bound, window, neurons, dtype), bound)
    node_in = step.invals[linear_graph.bounded_positions(step.invals)[0]]
    gather = lambda values: _gather(values, window, neurons, dtype)[None]
    if step.kind == 'relaxed':
      relaxation = step.relaxation
      positive, negative = jnp.maximum(coeffs, 0), jnp.minimum(coeffs, 0)
      bias = bias + _weighted_sum(positive, gather(relaxation.lower_offset)) + _weighted_sum(
          negative, gather(relaxation.upper_offset))
      lower_slope, upper_slope = (gather(relaxation.lower_slopes[0]),
                                  gather(relaxation.upper_slopes[0]))
      if outward:
        offsets = jnp.maximum(jnp.abs(gather(relaxation.lower_offset)),
                              jnp.abs(gather(relaxation.upper_offset)))
        magnitudes = gather(linear_rounding.magnitude(node_in))
        slopes = jnp.maximum(jnp.abs(lower_slope), jnp.abs(upper_slope))
        slack = _add_up(slack, _window_slack(coeffs, offsets, products=2, summed=True),
                        _window_slack(coeffs, slopes * magnitudes, products=2,
                                      magnitudes=magnitudes),
                        linear_rounding.addition_slack(bias))
      coeffs = positive * lower_slope + negative * upper_slope
    elif step.primitive is _P.conv_general_dilated_p:
      params = step.params
      strides, padding = params['window_strides'], params['padding']
      if outward:  # gamma |coeffs| . (|K| m) on the output window (docs/linear_bounds.md §8).
        terms = linear_rounding.transposed_terms(step)
        transposition = _scaled_slack(
            coeffs, gather(linear_rounding.magnitude_image(step)),
            linear_rounding.conv_matmul_gamma(step, dtype))
      coeffs = _conv_transpose_patches(coeffs, step, outward)
      window = _Window(
          start=tuple(s * stride - lo for s, stride, (lo, _) in zip(window.start, strides,
                                                                    padding)),
          stride=tuple(a * b for a, b in zip(window.stride, strides)),
          size=coeffs.shape[-3:-1], extent=node_in.shape[1:3], positions=window.positions)
      coeffs = coeffs * _inside_mask(window, neurons)[None].astype(dtype)
      if outward:  # ... plus 2 n tiny per entry of the input window, times its magnitude.
        underflow = _scaled_slack(
            jnp.ones_like(coeffs), gather(linear_rounding.magnitude(node_in)),
            2 * terms * float(jnp.finfo(dtype).tiny))
        slack = _add_up(slack, transposition, underflow)
    else:  # Elementwise affine: y = slope * x + offset, slope and offset from a JVP at zero.
      offset, slope = _elementwise_affine(step, node_in)
      bias = bias + _weighted_sum(coeffs, gather(offset))
      if outward:
        magnitudes = gather(linear_rounding.magnitude(node_in))
        slack = _add_up(slack, _window_slack(coeffs, jnp.abs(gather(offset)), products=1,
                                             summed=True),
                        _window_slack(coeffs, jnp.abs(gather(slope)) * magnitudes, products=1,
                                      magnitudes=magnitudes),
                        linear_rounding.addition_slack(bias))
      coeffs = coeffs * gather(slope)
  bound = _chain_input_bound(chain)
  return finish(bias + _concretize(coeffs, bound, window, neurons, dtype), bound)


def _chain_input_bound(chain) -> IntervalBound:
  """The bound of the value at the bottom of a chain (the input box)."""
  last = chain[-1]
  return last.invals[linear_graph.bounded_positions(last.invals)[0]].bound


def _elementwise_affine(step: linear_graph.Step, node_in: linear_graph.Node):
  """`(f(0), f'(0))` of an elementwise affine step `f` of its bounded operand, output-shaped."""
  position = linear_graph.bounded_positions(step.invals)[0]

  def affine(x):
    values = list(step.invals)
    values[position] = x
    return step.primitive.bind(*values, **step.primitive.get_bind_params(step.params))

  zeros = jnp.zeros(node_in.shape, node_in.dtype)
  return jax.jvp(affine, (zeros,), (jnp.ones_like(zeros),))


def _concretize(coeffs, bound: IntervalBound, window: _Window, neurons: _Neurons, dtype):
  """`min over the box of coeffs . v` per row, the box gathered on each window."""
  lower = _gather(bound.lower, window, neurons, dtype)[None]
  upper = _gather(bound.upper, window, neurons, dtype)[None]
  return (_weighted_sum(jnp.maximum(coeffs, 0), lower)
          + _weighted_sum(jnp.minimum(coeffs, 0), upper))


def patch_budget(batch: int) -> int:
  """Window entries a patches pass carries per example when `batch` examples are bounded at once:
  a call's budget shared by its examples (fewer, better-filled passes for small batches)."""
  return min(MAX_PATCH_BUDGET, max(MIN_PATCH_BUDGET, PATCH_ENTRIES_PER_CALL // batch))


def neurons_per_pass(chain, node: linear_graph.Node, budget: int) -> int:
  """How many neurons one patches pass carries: at most `budget` window entries per example
  (`patch_budget`), lower and upper rows together."""
  largest = _largest_window(chain, node.shape[3])
  return max(1, min(math.prod(node.shape), budget // (2 * largest)))


def _largest_window(chain, channels: int) -> int:
  """Entries of the largest window-shaped row along the chain (h * w * channels)."""
  h = w = 1
  largest = channels
  for step in chain:
    if step.primitive is _P.conv_general_dilated_p:
      kernel_h, kernel_w, in_channels, _ = _hwio_kernel(step).shape
      strides = step.params['window_strides']
      h, w = (h - 1) * strides[0] + kernel_h, (w - 1) * strides[1] + kernel_w
      largest = max(largest, h * w * in_channels)
  return largest


__all__ = ['MAX_PATCH_BUDGET', 'MIN_PATCH_BUDGET', 'PATCH_ENTRIES_PER_CALL', 'neurons_per_pass',
           'patch_budget', 'patch_chain', 'patch_lower_bounds']
