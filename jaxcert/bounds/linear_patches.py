"""CROWN bounds of every neuron of a convolution's output at once, in patches (docs/linear_bounds.md §5.1).

Method 'crown' of `jaxcert.bounds.linear` tightens the input of every ReLU by a backward pass
from it. For the output `y` of a convolution `y = conv(x, K)`, the row of neuron `(p, o)`
(position `p`, output channel `o`) is `K[..., o]` on the window of `p` in `x`, zero elsewhere;
through elementwise steps (ReLU relaxations, bias, BatchNorm scale and shift) it stays on that
window, and through an earlier convolution the window grows by that convolution's kernel. So
the rows of all neurons are carried as *patches*, one window-shaped array per position and
output channel (shape (2, positions, channels, window_h, window_w, in_channels): the lower and
upper bound rows), instead of dense arrays over the whole feature map; this is auto_LiRPA's
patches mode (Xu et al. 2020, "Automatic perturbation analysis for scalable certified
robustness and beyond", Sec. 3.3 and their `Patches` class). Elementwise quantities (slopes,
offsets, interval bounds) are gathered on each position's window; coefficients on the zero
padding of a convolution are dropped (the padding is a constant 0 there). The bounds equal the
dense backward pass's (`linear._backward`) up to rounding (tested).

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
from jax import lax
import numpy as np

from jaxcert.bounds import linear_graph
from jaxcert.bounds import linear_rules
from jaxcert.bounds.interval import IntervalBound

_P = jex_core.primitives

_NHWC = (0, 3, 1, 2)  # lax.ConvDimensionNumbers spec of an NHWC array: (batch, feature, h, w).
_ELEMENTWISE_AFFINE = frozenset([_P.add_p, _P.sub_p, _P.mul_p, _P.div_p, _P.neg_p,
                                 _P.convert_element_type_p, _P.copy_p])

# Entries of the patches carried at once per example (the output channels are split in chunks
# under it): 2**15 float64 entries are 256 KB per example, 13 MB for a batch of 50 (a larger
# budget was not faster on CPU; docs/linear_bounds.md §7).
DEFAULT_PATCH_BUDGET = 2 ** 15


@dataclasses.dataclass(frozen=True)
class _Window:
  """Where each position's patch lies on a feature map: rows `start + stride * p + i` for
  `0 <= i < size` (and the same for columns), on a map of `extent` rows and columns."""
  start: tuple[int, int]
  stride: tuple[int, int]
  size: tuple[int, int]
  extent: tuple[int, int]

  def indices(self, positions: tuple[int, int]):
    """Row and column indices of every position's window: ((P_h, size_h), (P_w, size_w))."""
    return tuple(start + stride * np.arange(count)[:, None] + np.arange(size)[None]
                 for start, stride, size, count in zip(self.start, self.stride, self.size,
                                                       positions))


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


def _gather(values, window: _Window, positions, dtype):
  """`values` (broadcastable to (1, H, W, C)) on every position's window: (P_h, P_w, h, w, C);
  zero outside the map. Strided slices, one per window row and one per window column (exact,
  also where values are infinite)."""
  values = jnp.asarray(values, dtype)
  rows, cols = window.indices(positions)
  pad = [(max(0, -int(index.min())), max(0, int(index.max()) + 1 - extent))
         for index, extent in zip((rows, cols), window.extent)]
  padded = jnp.pad(values[0], (*pad, (0, 0)))
  for axis in (0, 2):  # (H, W, C) -> (P_h, h, W, C) -> (P_h, h, P_w, w, C).
    dim = axis // 2
    first = window.start[dim] + pad[dim][0]
    stride, count = window.stride[dim], positions[dim]
    padded = jnp.stack([lax.slice_in_dim(padded, first + i, first + i + stride * (count - 1) + 1,
                                         stride, axis)
                        for i in range(window.size[dim])], axis=axis + 1)
  return jnp.transpose(padded, (0, 2, 1, 3, 4))


def _inside_mask(window: _Window, positions):
  """1 where a window entry lies on the map, 0 on the padding: (P_h, P_w, h, w, 1)."""
  rows, cols = window.indices(positions)
  inside = ((rows >= 0) & (rows < window.extent[0]))[:, None, :, None] & (
      (cols >= 0) & (cols < window.extent[1]))[None, :, None, :]
  return inside[..., None]


def _expand(array):
  """(P_h, P_w, h, w, C) -> (1, P_h, P_w, 1, h, w, C): broadcast over signs and channels."""
  return array[None, :, :, None]


def _weighted_sum(coeffs, values):
  """Sum of `coeffs * values` over the window axes, with 0 * inf = 0: (2, P_h, P_w, O)."""
  products = jnp.where(coeffs != 0, coeffs * values, 0)
  return products.sum(axis=(-3, -2, -1))


def _conv_transpose_patches(patches, step: linear_graph.Step):
  """Rows on a convolution's output windows -> rows on its input windows (VALID, stride s)."""
  leading = patches.shape[:-3]
  h, w, channels = patches.shape[-3:]
  flat = patches.reshape((-1, 1, h, w, channels))
  kernel_h, kernel_w, in_channels, _ = _hwio_kernel(step).shape
  strides = step.params['window_strides']
  in_shape = (1, (h - 1) * strides[0] + kernel_h, (w - 1) * strides[1] + kernel_w, in_channels)
  valid = dict(step.params, padding=((0, 0), (0, 0)))
  out = linear_rules.conv_lhs_transpose(flat, jnp.asarray(step.invals[1], patches.dtype), valid,
                                        in_shape)
  return out.reshape(leading + in_shape[1:])


def _hwio_kernel(step: linear_graph.Step):
  numbers = step.params['dimension_numbers']
  out_feature, in_feature, *spatial = numbers.rhs_spec
  return jnp.transpose(jnp.asarray(step.invals[1]), (*spatial, in_feature, out_feature))


def _own_values(values, start, chunk: int, node: linear_graph.Node):
  """`values` (broadcastable to `node`'s shape) at each row's own coordinate, channels
  `start, ..., start + chunk - 1` (zero past the last): (1, P_h, P_w, chunk)."""
  channels = node.shape[3]
  values = jnp.broadcast_to(jnp.asarray(values, node.dtype), node.shape)[0]
  padded = jnp.pad(values, ((0, 0), (0, 0), (0, -(-channels // chunk) * chunk - channels)))
  return lax.dynamic_slice_in_dim(padded, start, chunk, 2)[None]


def _diagonal_to_first_conv(chain, node: linear_graph.Node, start, chunk: int):
  """The rows `+-e_(p,o)` carried through the elementwise steps above the first convolution,
  where each row is still a multiple `scale` of its own coordinate, and then through that
  convolution, where it becomes `scale` times the kernel of channel `o` on `p`'s window.

  Returns (coefficients (2, P_h, P_w, chunk, kh, kw, C_in), bias (2, P_h, P_w, chunk), window,
  index of the next step of the chain).
  """
  dtype = node.dtype
  positions = node.shape[1:3]
  scale = jnp.concatenate([jnp.ones((1, *positions, chunk), dtype),
                           -jnp.ones((1, *positions, chunk), dtype)])
  bias = jnp.zeros_like(scale)
  current = node
  for index, step in enumerate(chain):
    own = lambda values: _own_values(values, start, chunk, current)
    if step.primitive is _P.conv_general_dilated_p:
      kernel = _hwio_kernel(step).astype(dtype)
      kernel = jnp.pad(kernel, ((0, 0),) * 3 + ((0, -(-kernel.shape[3] // chunk) * chunk
                                                 - kernel.shape[3]),))
      rows = jnp.moveaxis(lax.dynamic_slice_in_dim(kernel, start, chunk, 3), -1, 0)
      coeffs = scale[..., None, None, None] * rows[None, None, None]
      strides, padding = step.params['window_strides'], step.params['padding']
      node_in = step.invals[0]
      window = _Window(start=(-padding[0][0], -padding[1][0]), stride=tuple(strides),
                       size=rows.shape[1:3], extent=node_in.shape[1:3])
      coeffs = coeffs * _expand(_inside_mask(window, positions)).astype(dtype)
      return coeffs, bias, window, index + 1
    if step.kind == 'relaxed':
      relaxation = step.relaxation
      positive, negative = jnp.maximum(scale, 0), jnp.minimum(scale, 0)
      bias = bias + (jnp.where(positive != 0, positive * own(relaxation.lower_offset), 0)
                     + jnp.where(negative != 0, negative * own(relaxation.upper_offset), 0))
      scale = positive * own(relaxation.lower_slopes[0]) + negative * own(
          relaxation.upper_slopes[0])
    else:  # Elementwise affine: y = slope * x + offset.
      offset, slope = _elementwise_affine(step, step.invals[
          linear_graph.bounded_positions(step.invals)[0]])
      bias = bias + jnp.where(scale != 0, scale * own(offset), 0)
      scale = scale * own(slope)
    current = step.invals[linear_graph.bounded_positions(step.invals)[0]]
  raise AssertionError('A patch chain without a convolution (patch_chain admits none).')


def _chunk_lower_bounds(chain, node: linear_graph.Node, start, chunk: int):
  """Lower bounds of `+-e_(p,o) . node` for every position p and the channels
  `start, ..., start + chunk - 1`: (2, P_h, P_w, chunk) (channels past the node's are zero rows)."""
  dtype = node.dtype
  positions = node.shape[1:3]
  coeffs, bias, window, first = _diagonal_to_first_conv(chain, node, start, chunk)
  for step in chain[first:]:
    if step.kind == 'interval':  # A fallback value: min over its interval bound.
      return bias + _concretize(coeffs, step.outputs[0].bound, window, positions, dtype)
    node_in = step.invals[linear_graph.bounded_positions(step.invals)[0]]
    if step.kind == 'relaxed':
      relaxation = step.relaxation
      positive, negative = jnp.maximum(coeffs, 0), jnp.minimum(coeffs, 0)
      gather = lambda values: _expand(_gather(values, window, positions, dtype))
      bias = bias + _weighted_sum(positive, gather(relaxation.lower_offset)) + _weighted_sum(
          negative, gather(relaxation.upper_offset))
      coeffs = (positive * gather(relaxation.lower_slopes[0])
                + negative * gather(relaxation.upper_slopes[0]))
    elif step.primitive is _P.conv_general_dilated_p:
      params = step.params
      strides, padding = params['window_strides'], params['padding']
      coeffs = _conv_transpose_patches(coeffs, step)
      window = _Window(
          start=tuple(s * stride - lo for s, stride, (lo, _) in zip(window.start, strides,
                                                                    padding)),
          stride=tuple(a * b for a, b in zip(window.stride, strides)),
          size=coeffs.shape[-3:-1], extent=node_in.shape[1:3])
      coeffs = coeffs * _expand(_inside_mask(window, positions)).astype(dtype)
    else:  # Elementwise affine: y = slope * x + offset, slope and offset from a JVP at zero.
      offset, slope = _elementwise_affine(step, node_in)
      bias = bias + _weighted_sum(coeffs, _expand(_gather(offset, window, positions, dtype)))
      coeffs = coeffs * _expand(_gather(slope, window, positions, dtype))
  return bias + _concretize(coeffs, _chain_input_bound(chain), window, positions, dtype)


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


def _concretize(coeffs, bound: IntervalBound, window: _Window, positions, dtype):
  """`min over the box of coeffs . v` per row, the box gathered on each window."""
  lower = _expand(_gather(bound.lower, window, positions, dtype))
  upper = _expand(_gather(bound.upper, window, positions, dtype))
  return (_weighted_sum(jnp.maximum(coeffs, 0), lower)
          + _weighted_sum(jnp.minimum(coeffs, 0), upper))


def patch_bounds(chain, node: linear_graph.Node, budget: int | None = None) -> IntervalBound:
  """CROWN bounds of every coordinate of `node` by the patches pass.

  Args:
    chain: `patch_chain(steps, node)`.
    node: shape (1, H, W, C).
    budget: patch entries carried at once per example, `DEFAULT_PATCH_BUDGET` if None; the
      channels are split in chunks under it.

  Returns:
    The bounds (not intersected with the node's interval bound), shaped like `node`.
  """
  budget = DEFAULT_PATCH_BUDGET if budget is None else budget
  positions, channels = node.shape[1:3], node.shape[3]
  per_channel = 2 * math.prod(positions) * _largest_window(chain, channels)
  chunk = max(1, min(channels, budget // per_channel))
  num_chunks = -(-channels // chunk)
  one_chunk = lambda start: _chunk_lower_bounds(chain, node, start, chunk)
  starts = jnp.arange(num_chunks) * chunk
  if num_chunks == 1:
    both = one_chunk(starts[0])
  else:  # (num_chunks, 2, P_h, P_w, chunk) -> (2, P_h, P_w, num_chunks * chunk).
    both = jnp.moveaxis(lax.map(one_chunk, starts), 0, -2).reshape(
        (2, *positions, num_chunks * chunk))
  both = both[..., :channels]
  return IntervalBound(both[0][None], -both[1][None])


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


__all__ = ['DEFAULT_PATCH_BUDGET', 'patch_bounds', 'patch_chain']
