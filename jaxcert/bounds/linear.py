"""Backward linear bound propagation (CROWN family) by interpreting a function's jaxpr.

`linear_bounds(fn, method)` turns a JAX function of one batched input into a function
`(lower, upper) -> (out_lower, out_upper)` with the calling convention of
`jaxcert.bounds.interval.interval(fn)`; `linear_spec_bounds(fn, method)` bounds `c^T fn(x)` for a
batch of specification rows `c` directly. Both implement the linear relaxation bounds of CROWN
(Zhang et al. 2018, "Efficient neural network robustness certification with general activation
functions") in the generalised form of auto_LiRPA (Xu et al. 2020, "Automatic perturbation
analysis for scalable certified robustness and beyond"):

* the jaxpr of `fn` is interpreted forward once (calls are inlined), recording every equation that
  touches a bounded value as a *step* and its interval (IBP) bound, computed with the rules of
  `jaxcert.bounds.rules` (`RULES`, `SAME_OPERAND_RULES`, `NAMED_CALL_RULES`);
* a step is *affine* in its bounded operands (dot_general or conv with constant weights, add, sub,
  mul/div by constants, reshape, transpose, broadcast, pad, slicing, reductions by sums, average
  pooling, concatenation, float casts, ...): it is transposed exactly with `jax.vjp` of the
  equation with its constant operands closed over, vmapped over the specification rows;
* a step is *relaxed* (max/min with a constant, i.e. ReLU; max/min of two bounded values;
  a `select_n` of a comparison with branches affine in the compared value, i.e. leaky ReLU; abs;
  tanh; sigmoid; square; the product of two bounded factors): its output is sandwiched between
  two linear functions of its inputs, valid on the input's interval (docs/linear_bounds.md §3);
  max pooling and `reduce_max` are interpreted as gathers and maxes of two values;
* any other step (`l2_normalize`, rsqrt, division by a bounded value, ...) falls back to its
  interval bound: its output is treated as a fresh input box where the backward pass stops
  (never unsound, only looser; docs/linear_bounds.md §3.6 lists what is relaxed);
* a backward pass from a node with coefficients `A` (one row per bound wanted) carries `A` to the
  input and concretises `A x` over the input box (docs/linear_bounds.md §2, §4).

Methods (`METHODS`): 'crown_ibp' relaxes with the IBP bounds of every intermediate value
(Zhang et al. 2020, "Towards stable and efficient training of verifiably robust neural
networks"); 'crown' first tightens the input of every non-affine step by a backward pass from it
(intersected with IBP); 'alpha_crown' is 'crown' with the lower slopes of the straddling ReLUs
optimised by gradient ascent on the output bounds, per output row, the intermediate bounds fixed
(Xu et al. 2021, "Fast and complete: enabling complete neural network verification with rapid
and massively parallel incomplete verifiers", their alpha-CROWN; docs/linear_bounds.md §5.2).
The results are intersected with the IBP bounds, so they are never looser.

The batch axis must be one of independent examples (`fn(x)[b]` depends on `x[b]` only, true of
every encoder in inference mode): `fn` is traced on a batch of one and the bounds are vmapped
over the examples. Derivations: docs/linear_bounds.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex_core
import jax.extend.source_info_util as source_info_util
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax

from jaxcert.bounds import linear_graph
from jaxcert.bounds import linear_patches
from jaxcert.bounds import linear_rounding
from jaxcert.bounds import linear_rules
from jaxcert.bounds import rounding as outward_rounding  # also fills the outward rule tables
from jaxcert.bounds import rules  # pylint: disable=unused-import  (fills RULES)
from jaxcert.bounds.interval import IntervalBound
from jaxcert.bounds.interval import is_concrete
from jaxcert.bounds.interval import NAMED_CALL_RULES
from jaxcert.bounds.interval import nan_aware_outputs
from jaxcert.bounds.interval import OUTWARD_NAMED_CALL_RULES
from jaxcert.bounds.interval import OUTWARD_RULES
from jaxcert.bounds.interval import OUTWARD_SAME_OPERAND_RULES
from jaxcert.bounds.interval import ROUNDING_MODES
from jaxcert.bounds.interval import RULES
from jaxcert.bounds.interval import SAME_OPERAND_RULES
from jaxcert.bounds.interval import source_location

METHODS = ('crown_ibp', 'crown', 'alpha_crown')
# Methods whose intermediate bounds come from backward passes (the others' from IBP).
_TIGHTENING_METHODS = ('crown', 'alpha_crown')
# alpha-CROWN's optimisation, auto_LiRPA's defaults (`optimize_bound_args`): Adam steps on the
# slopes, its learning rate and per-step decay; the best bound of all steps is kept.
ALPHA_STEPS = 20
ALPHA_LEARNING_RATE = 0.5
ALPHA_LEARNING_RATE_DECAY = 0.98

# Specification rows per backward pass, chosen per call by `row_chunk_for` unless given; bounds
# memory at rows x (largest intermediate) per example (times the batch under `vmap`). 8 keeps the
# Small CNN's CROWN at batch 50 under 500 MB of XLA temporaries in float64 and is no slower than
# 256 on CPU (docs/linear_bounds.md §7); smaller batches take up to MAX_ROW_CHUNK rows a pass, about
# ROWS_PER_CALL in all.
DEFAULT_ROW_CHUNK = 8
MAX_ROW_CHUNK = 16
ROWS_PER_CALL = 128

_P = jex_core.primitives

_CALL_PRIMITIVES = (_P.jit_p, _P.closed_call_p, _P.custom_jvp_call_p, _P.custom_vjp_call_p,
                    _P.remat_p)

# Affine in all their operands jointly (every operand may be bounded).
_AFFINE_PRIMITIVES = frozenset([
    _P.add_p, _P.sub_p, _P.neg_p, _P.add_jaxvals_p, _P.reshape_p, _P.broadcast_in_dim_p,
    _P.transpose_p, _P.squeeze_p, _P.rev_p, _P.slice_p, lax.split_p, _P.concatenate_p,
    _P.pad_p, _P.copy_p, _P.reduce_sum_p, _P.reduce_window_sum_p, _P.cumsum_p,
    _P.convert_element_type_p,
])
# Affine in their data operands when the index operands (positions given) are constants.
_INDEXED_AFFINE_PRIMITIVES = {
    _P.dynamic_slice_p: slice(1, None),
    _P.dynamic_update_slice_p: slice(2, None),
    _P.gather_p: slice(1, 2),
    _P.select_n_p: slice(0, 1),
}
# Bilinear: affine when exactly one operand is bounded (`div`: only the numerator).
_BILINEAR_PRIMITIVES = frozenset([_P.mul_p, _P.dot_general_p, _P.conv_general_dilated_p])

# Affine steps that keep "each coordinate an affine function of its own input coordinate"
# (docs/linear_bounds.md §5: IBP is exact on such values and on one linear map of them).
_COORDINATEWISE_PRIMITIVES = frozenset([
    _P.add_p, _P.sub_p, _P.neg_p, _P.mul_p, _P.div_p, _P.reshape_p, _P.transpose_p,
    _P.squeeze_p, _P.rev_p, _P.slice_p, _P.copy_p, _P.convert_element_type_p,
])
_MIXING_PRIMITIVES = frozenset([_P.dot_general_p, _P.conv_general_dilated_p, _P.reduce_sum_p,
                                _P.reduce_window_sum_p])


def row_chunk_for(batch: int) -> int:
  """Rows per backward pass when `batch` examples are bounded at once (`linear_bounds`' default)."""
  return min(MAX_ROW_CHUNK, max(DEFAULT_ROW_CHUNK, ROWS_PER_CALL // batch))


def _check_method(method: str, rounding_mode: str = 'nearest') -> None:
  if method not in METHODS:
    raise ValueError(f'Unknown linear bound method {method!r}; valid methods: {list(METHODS)}.')
  if rounding_mode not in ROUNDING_MODES:
    raise ValueError(f'Unknown rounding {rounding_mode!r}; valid: {list(ROUNDING_MODES)}.')


def _changes_dtype(invals, out_dtype) -> bool:
  """Whether a step computes in another dtype than a bounded float operand (a cast, a matmul
  with another `preferred_element_type`). Such a step is not affine: a narrowing cast rounds
  (bfloat16 keeps 8 significant bits, float16 flushes values under 6e-8 to 0), and the
  transposition of a widening one would round the rows' coefficients to the narrow dtype. Its
  interval rule bounds it (exactly, for a cast); the outward mode has no rounding bound for it."""
  return any(linear_graph.is_float(v.bound.lower) and v.dtype != out_dtype
             for v in invals if isinstance(v, linear_graph.Node))


def _is_affine(primitive, invals) -> bool:
  """Whether the step's output is an affine function of its bounded operands (the caller has
  checked that it computes in their dtype)."""
  positions = linear_graph.bounded_positions(invals)
  if not all(linear_graph.is_float(invals[i].bound.lower) for i in positions):
    return False
  if primitive in _AFFINE_PRIMITIVES:
    return True
  if primitive in _INDEXED_AFFINE_PRIMITIVES:
    return not any(isinstance(v, linear_graph.Node) for v in invals[_INDEXED_AFFINE_PRIMITIVES[primitive]])
  if primitive in _BILINEAR_PRIMITIVES:
    return len(positions) == 1
  if primitive is _P.div_p:
    return positions == [0]
  return False


# --- Forward interpretation. ------------------------------------------------------------------


def _interval_of(eqn, invals, in_nan, enclosing_calls, outward: bool = False):
  """The interval rule of `eqn` on `IntervalBound`s and constants, as `interval` applies it,
  NaN-aware like it (`jaxcert.bounds.interval.nan_aware_outputs`): where an operand may be NaN
  somewhere in the box, comparisons, `isnan` and casts are undecided. `outward`: the outward
  (rigorous) rules, as `interval(fn, rounding='outward')`.

  Returns:
    (outputs, whether each may be NaN), or None for a call to inline.
  """
  primitive = eqn.primitive
  rule_table, same_operand_rules, named_call_rules = (
      (OUTWARD_RULES, OUTWARD_SAME_OPERAND_RULES, OUTWARD_NAMED_CALL_RULES) if outward
      else (RULES, SAME_OPERAND_RULES, NAMED_CALL_RULES))
  if primitive is _P.jit_p and eqn.params.get('name') in named_call_rules:
    name = eqn.params['name']
    outvals = named_call_rules[name](*invals)
    if outvals is None:  # The named rule declines: the caller interprets the call's body.
      return None
    outvals = [outvals] if len(eqn.outvars) == 1 else list(outvals)
    return nan_aware_outputs(eqn, name, invals, in_nan, outvals)
  if primitive in _CALL_PRIMITIVES:
    return None
  rule = rule_table.get(primitive)
  if (primitive in same_operand_rules and len(eqn.invars) == 2
      and isinstance(eqn.invars[0], jex_core.Var) and eqn.invars[0] is eqn.invars[1]):
    rule = same_operand_rules[primitive]
    invals, in_nan = invals[:1], in_nan[:1]
  if rule is None and outward and primitive in RULES:
    raise NotImplementedError(
        f'No outward-rounding error bound for primitive `{primitive.name}` '
        f"{source_location(eqn, enclosing_calls)}: rounding='outward' would not be sound for "
        "it; use rounding='nearest' (in float64). Supported in outward mode: "
        f'{", ".join(sorted(p.name for p in OUTWARD_RULES))}.')
  if rule is None:
    raise NotImplementedError(
        f'No interval rule for primitive `{primitive.name}` (applied to a value that depends on '
        f'the perturbed input) {source_location(eqn, enclosing_calls)}; linear bounds fall back '
        'to the interval rule of steps they cannot relax. Add a rule to jaxcert.bounds.rules '
        f'(supported: {", ".join(sorted(p.name for p in RULES))}).')
  outvals = rule(*invals, **eqn.params)
  outvals = list(outvals) if primitive.multiple_results else [outvals]
  return nan_aware_outputs(eqn, primitive, invals, in_nan, outvals)


def _may_be_nan(value):
  """Whether an operand may be NaN somewhere in the box: a node's flag, or a NaN constant."""
  if isinstance(value, linear_graph.Node):
    return value.may_be_nan
  if not linear_graph.is_float(value):
    return False
  if is_concrete(value):
    return bool(np.isnan(np.asarray(value)).any())
  return jnp.any(jnp.isnan(value))


class _Graph:
  """The steps and nodes of one interpreted jaxpr, built in order by `_interpret`."""

  def __init__(self, method: str, input_bound: IntervalBound, row_chunk: int, patches: bool,
               outward: bool = False, patch_budget: int = linear_patches.MIN_PATCH_BUDGET,
               given_intermediates: jax.Array | None = None):
    self.method = method
    self.row_chunk = row_chunk
    self.patch_budget = patch_budget
    self.patches = patches
    self.outward = outward
    self.input = linear_graph.Node(0, input_bound, -1, exact=True, coordinatewise=True)
    self.nodes = [self.input]
    self.steps: list[linear_graph.Step] = []
    # The tightened nodes' bounds, in the order `tighten` met them (`intermediates`), and, where
    # given, the flat bounds of an earlier graph of the same function and box to take them from.
    self.tightened: list[IntervalBound] = []
    self.given_intermediates = given_intermediates
    self.given_offset = 0

  def _new_node(self, bound, exact=False, coordinatewise=False,
                may_be_nan=False) -> linear_graph.Node:
    node = linear_graph.Node(len(self.nodes), bound, len(self.steps), exact, coordinatewise,
                             may_be_nan)
    self.nodes.append(node)
    return node

  def tighten(self, node: linear_graph.Node, relevant=True) -> None:
    """Methods 'crown', 'alpha_crown': the node's bound intersected with backward passes from it
    (`_tightened`).

    `relevant` (a mask or True) names the coordinates whose bounds the consuming step's
    relaxation depends on; the others keep their interval bound (sound either way).
    """
    if node.exact or not linear_graph.is_float(node.bound.lower):
      return
    node.bound = (_tightened(self, node, relevant) if self.given_intermediates is None
                  else self._given_bound(node))
    node.exact = True
    self.tightened.append(node.bound)

  def _given_bound(self, node: linear_graph.Node) -> IntervalBound:
    """The node's next bound from `given_intermediates`, intersected with its interval bound."""
    size = math.prod(node.shape)
    start = self.given_offset
    if start + 2 * size > self.given_intermediates.shape[0]:
      raise ValueError(_INTERMEDIATES_MISMATCH)
    self.given_offset += 2 * size
    given = self.given_intermediates[start:start + 2 * size]
    lower = jnp.maximum(node.bound.lower, given[:size].reshape(node.shape))
    upper = jnp.minimum(node.bound.upper, given[size:].reshape(node.shape))
    return IntervalBound(lower, jnp.maximum(upper, lower))

  def intermediates(self) -> jax.Array:
    """Every tightened node's bound, flattened into one vector (lower, then upper, per node):
    what `given_intermediates` takes."""
    return jnp.concatenate([jnp.zeros((0,), self.input.dtype)] + [
        jnp.concatenate([b.lower.reshape(-1), b.upper.reshape(-1)]) for b in self.tightened])

  def add_step(self, eqn, invals, enclosing_calls) -> list | None:
    """Records `eqn` applied to `invals` (some `linear_graph.Node`s); returns its outputs, or None for a call
    to inline (jit, custom_jvp, ...; a named call whose rule declines)."""
    primitive, params = eqn.primitive, eqn.params
    if primitive in _CALL_PRIMITIVES and not (
        primitive is _P.jit_p and params.get('name') in NAMED_CALL_RULES):
      return None  # Inlined by the caller.
    out_dtype = eqn.outvars[0].aval.dtype
    changes_dtype = _changes_dtype(invals, out_dtype)
    if self.outward and changes_dtype and jnp.issubdtype(out_dtype, jnp.floating):
      raise NotImplementedError(
          "rounding='outward' linear bounds need one floating-point dtype throughout; "
          f'`{primitive.name}` {source_location(eqn, enclosing_calls)} computes in '
          f'{jnp.dtype(out_dtype).name}.')
    affine = (primitive not in _CALL_PRIMITIVES and not changes_dtype
              and _is_affine(primitive, invals))
    if self.method in _TIGHTENING_METHODS and not affine:
      for value in invals:
        if isinstance(value, linear_graph.Node):
          relevant = _relevant_coordinates(primitive, invals, value, self.steps)
          if relevant is not False:
            self.tighten(value, relevant)
    as_bounds = [v.bound if isinstance(v, linear_graph.Node) else v for v in invals]
    try:
      interval_outputs = _interval_of(eqn, as_bounds, [_may_be_nan(v) for v in invals],
                                      enclosing_calls, self.outward)
    except (ValueError, NotImplementedError) as error:
      raise type(error)(f'{error} (primitive `{primitive.name}` '
                        f'{source_location(eqn, enclosing_calls)})') from error
    if interval_outputs is None:  # A call without a rule of its own: interpret its body.
      return None
    out_bounds, out_nan = interval_outputs
    kind, relaxation = 'interval', None
    if affine:
      kind = 'affine'
    elif primitive not in _CALL_PRIMITIVES and len(out_bounds) == 1 and isinstance(
        out_bounds[0], IntervalBound):
      relaxed = linear_graph.relaxation(primitive, invals, params, out_bounds[0], self.steps,
                                        self.outward)
      if relaxed is not None:
        kind = 'relaxed'
        relaxation, invals = relaxed
    positions = linear_graph.bounded_positions(invals)
    coordinatewise = (kind == 'affine' and primitive in _COORDINATEWISE_PRIMITIVES
                      and len(positions) == 1 and invals[positions[0]].coordinatewise)
    exact = coordinatewise or (
        kind == 'affine' and len(positions) == 1 and (
            (primitive in _MIXING_PRIMITIVES and invals[positions[0]].coordinatewise)
            or (primitive in _COORDINATEWISE_PRIMITIVES | {_P.broadcast_in_dim_p}
                and invals[positions[0]].exact)))
    outputs = [self._new_node(b, exact, coordinatewise, nan) if isinstance(b, IntervalBound)
               else b for b, nan in zip(out_bounds, out_nan)]
    self.steps.append(linear_graph.Step(primitive, params, list(invals), outputs, kind, relaxation))
    return outputs


def _relevant_coordinates(primitive, invals, node: linear_graph.Node, steps):
  """Where a step's relaxation depends on `node`'s bounds: `max`/`min` with a constant only where
  the interval straddles the constant (elsewhere the relaxation is exact), and likewise a
  comparison with a constant (elsewhere decided); `max`/`min` of two bounded values where neither
  dominates; none for a `select_n` relaxed in its predicate's operand (tightened at the
  comparison); all coordinates else."""
  positions = linear_graph.bounded_positions(invals)
  if primitive in (_P.max_p, _P.min_p) and positions == [invals.index(node)] and len(invals) == 2:
    threshold = invals[1 - positions[0]]
    return (node.bound.lower < threshold) & (node.bound.upper > threshold)
  if (primitive in (_P.ge_p, _P.gt_p, _P.le_p, _P.lt_p) and len(invals) == 2
      and positions == [invals.index(node)] and linear_graph.is_float(invals[1 - positions[0]])
      and np.ndim(invals[1 - positions[0]]) <= node.bound.lower.ndim):
    threshold = invals[1 - positions[0]]
    return (node.bound.lower <= threshold) & (node.bound.upper >= threshold)
  if primitive in (_P.max_p, _P.min_p) and len(positions) == 2 and invals[0] is not invals[1]:
    x, y = invals[0].bound, invals[1].bound
    if primitive is _P.min_p:
      x, y = IntervalBound(-x.upper, -x.lower), IntervalBound(-y.upper, -y.lower)
    return (x.lower < y.upper) & (y.lower < x.upper)
  if primitive is _P.select_n_p and linear_graph.piecewise_select(steps, invals) is not None:
    return False
  return True


def _interpret(graph: _Graph, jaxpr, consts, args, enclosing_calls=()) -> list:
  """Evaluates `jaxpr`, recording the steps that touch bounded values in `graph`."""
  env: dict = {}
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))

  def read(atom):
    return atom.val if isinstance(atom, jex_core.Literal) else env[atom]

  for eqn in jaxpr.eqns:
    invals = [read(atom) for atom in eqn.invars]
    with (source_info_util.user_context(eqn.source_info.traceback,
                                        name_stack=eqn.source_info.name_stack),
          eqn.ctx.manager):
      if not any(isinstance(v, linear_graph.Node) for v in invals):
        outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        outvals = outvals if eqn.primitive.multiple_results else [outvals]
      else:
        # Max pooling: interpreted as gathers and maxes of two values, which are relaxed.
        decomposed = linear_graph.window_max_decomposition(eqn.primitive, eqn.params, invals)
        outvals = (graph.add_step(eqn, invals, enclosing_calls) if decomposed is None else
                   _interpret(graph, decomposed.jaxpr, decomposed.consts, invals,
                              (*enclosing_calls, eqn)))
        if outvals is None:  # A call (jit, custom_jvp, ...): inlined.
          inner = eqn.params['jaxpr'] if 'jaxpr' in eqn.params else eqn.params['call_jaxpr']
          inner_jaxpr, inner_consts = (
              (inner.jaxpr, inner.consts) if isinstance(inner, jex_core.ClosedJaxpr)
              else (inner, ()))
          outvals = _interpret(graph, inner_jaxpr, inner_consts, invals,
                               (*enclosing_calls, eqn))
    for outvar, outval in zip(eqn.outvars, outvals):
      if not isinstance(outvar, jex_core.DropVar):
        env[outvar] = outval
  return [read(atom) for atom in jaxpr.outvars]


# --- Backward propagation (docs/linear_bounds.md §2, §4). -------------------------------------


def _weighted_sum(coeffs, values):
  """`sum coeffs * values` over all but the row axis, with 0 * inf = 0; `values` shaped like a
  row (shared by the rows) or like `coeffs` (one per row)."""
  values = jnp.broadcast_to(values, coeffs.shape)
  products = jnp.where(coeffs != 0, coeffs * values, 0)
  return products.reshape(products.shape[0], -1).sum(axis=1)


def _concretize(coeffs, bound: IntervalBound):
  """`min over lower <= x <= upper of coeffs . x` per row: `A+ l + A- u`."""
  return (_weighted_sum(jnp.maximum(coeffs, 0), bound.lower)
          + _weighted_sum(jnp.minimum(coeffs, 0), bound.upper))


def _conv_transposition(step: linear_graph.Step, coeffs):
  """How an affine convolution step is transposed (docs/linear_bounds.md §3.1): 'matmul'
  (`linear_rules.conv_lhs_transpose`, where `linear_rules.transpose_conv_by_matmul`: float64 on
  CPU), 'conv' (`linear_rules.conv_lhs_transpose_by_conv`: one convolution with the flipped HWIO
  kernel), or None (the generic VJP: grouped or input-dilated convolutions, a bounded kernel, or
  padding larger than the kernel)."""
  params = step.params
  if not (step.primitive is _P.conv_general_dilated_p
          and linear_graph.bounded_positions(step.invals) == [0] and coeffs is not None
          and params['feature_group_count'] == 1 and params['batch_group_count'] == 1
          and all(d == 1 for d in params['lhs_dilation'])
          and all(lo >= 0 and hi >= 0 for lo, hi in params['padding'])):
    return None
  if linear_rules.transpose_conv_by_matmul(coeffs.dtype):
    return 'matmul'
  kernel_spatial = params['dimension_numbers'].rhs_spec[2:]
  padding = linear_rules.conv_lhs_transpose_padding(
      params, [jnp.shape(step.invals[1])[d] for d in kernel_spatial], step.invals[0].shape,
      step.outputs[0].shape)
  return 'conv' if all(lo >= 0 and hi >= 0 for lo, hi in padding) else None


# Rigorous mode: a matmul's transposition is cut into at most this many blocks along the
# constant operand's output features (docs/linear_bounds.md §8).
MAX_TRANSPOSITION_BLOCKS = 16


def _transposition_blocks(step: linear_graph.Step):
  """`(axis of the constant operand, axis of the output, blocks)` along which the rigorous mode
  cuts the transposition of a `dot_general` with a constant right operand (each block's sums
  have `n / blocks` terms, so the error factor is about `(n / blocks + blocks) u` instead of
  `n u`), or None. (Convolutions are transposed in two stages by `conv_lhs_transpose`.)"""
  n = linear_rounding.transposed_terms(step)
  if (step.primitive is not _P.dot_general_p or n <= 64
      or linear_graph.bounded_positions(step.invals) != [0]):
    return None
  (contracting, batch) = step.params['dimension_numbers']
  rhs_shape, lhs_rank = jnp.shape(step.invals[1]), len(step.invals[0].shape)
  free = [d for d in range(len(rhs_shape)) if d not in (*contracting[1], *batch[1])]
  if not free:
    return None
  constant_axis = max(free, key=lambda d: rhs_shape[d])
  out_axis = lhs_rank - len(contracting[0]) + free.index(constant_axis)
  size = rhs_shape[constant_axis]
  divisors = [d for d in range(2, min(size, MAX_TRANSPOSITION_BLOCKS) + 1) if size % d == 0]
  if not divisors:
    return None
  return constant_axis, out_axis, min(divisors, key=lambda d: abs(d - math.sqrt(n)))


def _blocked_transpose_affine(step: linear_graph.Step, coeffs, blocks: tuple):
  """`_transpose_affine` of a matmul in the rigorous mode, as the sum of the transpositions of
  its blocks of output features (`_transposition_blocks`), with its slack."""
  constant_axis, out_axis, count = blocks
  node = step.invals[0]
  width = jnp.shape(step.invals[1])[constant_axis] // count
  total = None
  for block in range(count):
    constant = lax.slice_in_dim(jnp.asarray(step.invals[1]), block * width,
                                (block + 1) * width, axis=constant_axis)
    rows = lax.slice_in_dim(coeffs, block * width, (block + 1) * width, axis=1 + out_axis)
    output = linear_graph.Node(-1, IntervalBound(jnp.zeros(rows.shape[1:], rows.dtype),
                                                 jnp.zeros(rows.shape[1:], rows.dtype)), -1)
    part = linear_graph.Step(step.primitive, step.params, [node, constant], [output], 'affine',
                             None)
    ((_, in_coeffs),), _, _ = _transpose_affine(part, [rows])
    total = in_coeffs if total is None else total + in_coeffs
  terms = linear_rounding.transposed_terms(step)
  gamma = linear_rounding.two_stage_gamma(terms // count, count, coeffs.dtype)
  slack = linear_rounding.affine_slack(step, [coeffs], [None], gamma=gamma)
  return [(node, total)], jnp.zeros(coeffs.shape[:1], coeffs.dtype), slack


def _transpose_affine(step: linear_graph.Step, out_coeffs: list, outward: bool = False):
  """`(coefficients of each bounded operand, offset term per row, slack per row)` of an affine
  step; the slack bounds the rounding error of both (`outward`, else None)."""
  positions = linear_graph.bounded_positions(step.invals)
  blocks = _transposition_blocks(step) if outward else None
  if blocks is not None:
    return _blocked_transpose_affine(step, out_coeffs[0], blocks)
  nodes = [step.invals[i] for i in positions]
  transposition = _conv_transposition(step, out_coeffs[0])
  if transposition is not None:
    # ('matmul' where transpose_conv_by_matmul; the rigorous mode in two stages, without a band.)
    transpose = linear_rules.conv_transpose_function(out_coeffs[0].dtype, outward)
    in_coeffs = transpose(out_coeffs[0], jnp.asarray(step.invals[1]), step.params,
                          nodes[0].shape)
    slack = (linear_rounding.affine_slack(
        step, out_coeffs, [None], gamma=linear_rounding.conv_matmul_gamma(
            step, out_coeffs[0].dtype)) if outward else None)
    return ([(nodes[0], in_coeffs)], jnp.zeros(out_coeffs[0].shape[:1], out_coeffs[0].dtype),
            slack)

  def affine(*bounded):
    values = list(step.invals)
    for position, value in zip(positions, bounded):
      values[position] = value
    out = step.primitive.bind(*values, **step.primitive.get_bind_params(step.params))
    return list(out) if step.primitive.multiple_results else [out]

  zeros = [jnp.zeros(node.shape, node.dtype) for node in nodes]
  offsets, transpose = jax.vjp(affine, *zeros)
  rows = next(c for c in out_coeffs if c is not None).shape[0]
  cotangents = [c if c is not None else jnp.zeros((rows,) + jnp.shape(o), jnp.result_type(o))
                for c, o in zip(out_coeffs, offsets)]
  in_coeffs = jax.vmap(transpose)(cotangents)
  bias = sum(_weighted_sum(c, o) for c, o in zip(cotangents, offsets))
  slack = linear_rounding.affine_slack(step, cotangents, offsets) if outward else None
  return list(zip(nodes, in_coeffs)), bias, slack


def _transpose_relaxed(step: linear_graph.Step, coeffs, alpha=None, outward: bool = False):
  """Lower bound of `A . y` through `y`'s relaxation: `A+` takes the lower line, `A-` the upper.

  `alpha` (rows, *shape) in [0, 1], for a step with `optimizable` slopes: row r's lower line is
  `alpha[r] (x - pivot) + pivot` where optimizable (alpha-CROWN), the relaxation's elsewhere.
  Returns `(coefficients of each bounded operand, offset term per row, slack per row)`, the
  slack bounding their rounding error (`outward`, one operand; else None).
  """
  relaxation = step.relaxation
  positive, negative = jnp.maximum(coeffs, 0), jnp.minimum(coeffs, 0)
  nodes = [step.invals[i] for i in linear_graph.bounded_positions(step.invals)]
  lower_slopes, lower_offset = relaxation.lower_slopes, relaxation.lower_offset
  if alpha is not None:
    lower_slopes = (jnp.where(relaxation.optimizable, alpha, lower_slopes[0]),)
    offset = (1 - alpha) * relaxation.pivot
    if outward:  # Below the real line alpha (x - pivot) + pivot: rounded down (0 is exact).
      offset = jnp.where(relaxation.pivot == 0, 0, outward_rounding.round_down(offset))
    lower_offset = jnp.where(relaxation.optimizable, offset, lower_offset)
  in_coeffs = [(node, positive * lower + negative * upper) for node, lower, upper in
               zip(nodes, lower_slopes, relaxation.upper_slopes)]
  bias = (_weighted_sum(positive, lower_offset)
          + _weighted_sum(negative, relaxation.upper_offset))
  slack = (linear_rounding.relaxed_slack(step, coeffs, lower_slopes[0],
                                         relaxation.upper_slopes[0], lower_offset,
                                         relaxation.upper_offset) if outward else None)
  return in_coeffs, bias, slack


def _backward(graph: _Graph, node: linear_graph.Node, coeffs, *, symmetric: bool = False,
              alphas: dict | None = None) -> jax.Array:
  """Lower bounds of `coeffs[r] . node` over the input box, one per row r.

  With `symmetric`, the rows are `[coeffs; -coeffs]` (a lower and an upper bound of each row):
  up to the first non-affine step the negated half is the negation of the first, so only the
  first is carried there (docs/linear_bounds.md §4). `alphas` maps the position of a step in
  `graph.steps` to its rows' lower slopes (`_transpose_relaxed`; all rows, after unfolding).
  In a `graph.outward` graph each step's rounding error is bounded (`linear_rounding`) and the
  sum of those bounds is subtracted, rounded outwards: a bound of the real-valued function
  (docs/linear_bounds.md §8).
  """
  alphas = alphas or {}
  outward = graph.outward
  pending = {node.index: coeffs}
  bias = jnp.zeros(coeffs.shape[:1], coeffs.dtype)
  slack = jnp.zeros(coeffs.shape[:1], coeffs.dtype)

  def unfold():
    nonlocal bias, slack
    for index, c in pending.items():
      pending[index] = jnp.concatenate([c, -c])
    bias = jnp.concatenate([bias, -bias])
    slack = jnp.concatenate([slack, slack])

  def add_to_bias(term, term_slack=None):
    nonlocal bias, slack
    bias = bias + term.astype(bias.dtype)
    if outward:
      if term_slack is not None:
        slack = outward_rounding.round_up(slack + term_slack)
      slack = outward_rounding.round_up(slack + linear_rounding.addition_slack(bias))

  def concretization_slack(c, bound):
    magnitude = jnp.maximum(jnp.abs(bound.lower), jnp.abs(bound.upper))
    return linear_rounding.sum_slack(c, magnitude, extra_terms=2) if outward else None

  for position in reversed(range(node.producer + 1)):
    step = graph.steps[position]
    out_coeffs = [pending.pop(out.index, None) if isinstance(out, linear_graph.Node) else None
                  for out in step.outputs]
    if all(c is None for c in out_coeffs):
      continue
    if symmetric and step.kind != 'affine':
      for out, c in zip(step.outputs, out_coeffs):
        if c is not None:
          pending[out.index] = c
      unfold()
      symmetric = False
      out_coeffs = [pending.pop(out.index, None) if isinstance(out, linear_graph.Node) else None
                    for out in step.outputs]
    if step.kind == 'interval':
      for out, c in zip(step.outputs, out_coeffs):
        if c is not None:
          add_to_bias(_concretize(c, out.bound), concretization_slack(c, out.bound))
      continue
    if step.kind == 'affine':
      in_coeffs, step_bias, step_slack = _transpose_affine(step, out_coeffs, outward)
    else:
      in_coeffs, step_bias, step_slack = _transpose_relaxed(step, out_coeffs[0],
                                                            alphas.get(position), outward)
    add_to_bias(step_bias, step_slack)
    for in_node, c in in_coeffs:
      if outward and c.dtype != in_node.dtype:
        raise NotImplementedError("rounding='outward' linear bounds need one floating-point "
                                  f'dtype throughout; got {c.dtype} and {in_node.dtype}.')
      c = c.astype(in_node.dtype)
      if in_node.index in pending:
        c = pending[in_node.index] + c
        if outward:  # Two consumers' coefficients summed.
          slack = outward_rounding.round_up(slack + linear_rounding.accumulation_slack(c, in_node))
      pending[in_node.index] = c
  if symmetric:
    unfold()
  input_coeffs = pending.pop(graph.input.index, None)
  if pending:
    raise AssertionError(f'Coefficients left at nodes {sorted(pending)} (an interpreter bug).')
  if input_coeffs is not None:
    add_to_bias(_concretize(input_coeffs, graph.input.bound),
                concretization_slack(input_coeffs, graph.input.bound))
  if outward:
    return outward_rounding.round_down(bias - slack)
  return bias


def _chunked_lower_bounds(graph: _Graph, node: linear_graph.Node, rows: Callable, count: int,
                          upper: bool = True, nonzero_rows: jax.Array | None = None) -> jax.Array:
  """Lower (and upper) bounds of `count` rows, `graph.row_chunk` rows per backward pass.

  Args:
    graph: the interpreted function.
    node: where the rows apply.
    rows: `rows(start, chunk)` -> the coefficients of rows `start, ..., start + chunk - 1`,
      shape (chunk, *node.shape) (rows past `count` are ignored).
    count: number of rows.
    upper: also the upper bounds (False: half the rows below the first non-affine step).
    nonzero_rows: where given (a traced count), the rows from it on are zero: their bounds are
      0 without a pass (the passes run in a `while_loop` that stops there).

  Returns:
    (2, count): the lower bounds of `rows . node`, then the upper bounds; (1, count) without
    `upper`.
  """
  chunk = min(graph.row_chunk, count)
  num_chunks = -(-count // chunk)
  sides = 2 if upper else 1

  def one_chunk(start):
    if graph.method == 'alpha_crown':
      bounds = _optimized_backward(graph, node, rows(start, chunk), symmetric=upper)
    else:
      bounds = _backward(graph, node, rows(start, chunk), symmetric=upper)
    return bounds.reshape(sides, chunk) * jnp.asarray([[1], [-1]][:sides], bounds.dtype)

  starts = jnp.arange(num_chunks) * chunk
  if nonzero_rows is not None:
    def body(state):
      index, both = state
      return index + 1, lax.dynamic_update_index_in_dim(both, one_chunk(index * chunk), index, 0)

    _, both = lax.while_loop(lambda state: state[0] * chunk < nonzero_rows, body,
                             (0, jnp.zeros((num_chunks, sides, chunk), node.dtype)))
  elif num_chunks > 1:
    both = lax.map(one_chunk, starts)
  else:
    both = one_chunk(starts[0])[None]
  return jnp.moveaxis(both, 1, 0).reshape(sides, num_chunks * chunk)[:, :count]


def _optimized_backward(graph: _Graph, node: linear_graph.Node, coeffs,
                        symmetric: bool = True) -> jax.Array:
  """`_backward(graph, node, coeffs, symmetric=symmetric)` with alpha-CROWN's slopes (Xu et al. 2021,
  Sec. 3.1): the lower slope of every straddling ReLU, one per row, in [0, 1], optimised by Adam
  on the sum of the rows' bounds (each row's bound depends on its own slopes only), started at
  CROWN's slopes; the best bound of each row over the steps is returned, so never below CROWN's.
  Every step's slopes are valid (clipped to [0, 1] before use), so every bound kept is sound.
  """
  rows = (2 if symmetric else 1) * coeffs.shape[0]
  initial = {position: jnp.broadcast_to(step.relaxation.lower_slopes[0],
                                        (rows,) + step.relaxation.optimizable.shape)
             for position, step in enumerate(graph.steps[:node.producer + 1])
             if step.kind == 'relaxed' and step.relaxation.optimizable is not None}
  if not initial:
    return _backward(graph, node, coeffs, symmetric=symmetric)

  def bounds_of(alphas):  # (the loss to minimise, the rows' bounds)
    alphas = jax.tree.map(lambda a: jnp.clip(a, 0, 1), alphas)
    bounds = _backward(graph, node, coeffs, symmetric=symmetric, alphas=alphas)
    return -jnp.sum(jnp.where(jnp.isfinite(bounds), bounds, 0)), bounds

  optimizer = optax.adam(optax.exponential_decay(ALPHA_LEARNING_RATE, 1,
                                                 ALPHA_LEARNING_RATE_DECAY))
  grad_fn = jax.grad(bounds_of, has_aux=True)

  def adam_step(_, state):
    alphas, opt_state, best = state
    gradients, bounds = grad_fn(alphas)
    gradients = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0), gradients)
    updates, opt_state = optimizer.update(gradients, opt_state, alphas)
    alphas = jax.tree.map(lambda a: jnp.clip(a, 0, 1), optax.apply_updates(alphas, updates))
    return alphas, opt_state, jnp.fmax(best, bounds)

  best = jnp.full((rows,), -jnp.inf, coeffs.dtype)
  alphas, _, best = lax.fori_loop(0, ALPHA_STEPS, adam_step,
                                  (initial, optimizer.init(initial), best))
  return jnp.fmax(best, bounds_of(alphas)[1])


def _tightened(graph: _Graph, node: linear_graph.Node, relevant) -> IntervalBound:
  """The node's bound intersected with backward-pass bounds at its `relevant` coordinates.

  Only the relevant coordinates (e.g. the unstable inputs of a ReLU, where its relaxation depends
  on the bounds) are bounded, `graph.row_chunk` at a time (or `neurons_per_pass` at a time in
  patches) in a `while_loop` that stops after the last one, so the cost follows their number,
  not the node's size.
  """
  chain = linear_patches.patch_chain(graph.steps, node) if graph.patches else None
  size = math.prod(node.shape)
  if chain is None:
    chunk = min(graph.row_chunk, size)

    def lower_bounds(indices, valid):  # (2, chunk) by a dense backward pass.
      rows = jax.nn.one_hot(indices, size, dtype=node.dtype) * valid[:, None]
      return _backward(graph, node, rows.reshape((chunk,) + node.shape),
                       symmetric=True).reshape(2, chunk)
  else:  # On each neuron's receptive field (docs/linear_bounds.md §5.1).
    chunk = linear_patches.neurons_per_pass(chain, node, graph.patch_budget)
    lower_bounds = lambda indices, valid: linear_patches.patch_lower_bounds(chain, node, indices,
                                                                            graph.outward)
  relevant = jnp.broadcast_to(relevant, node.shape).reshape(size)
  count = relevant.sum()
  order = jnp.concatenate([jnp.argsort(~relevant, stable=True),
                           jnp.zeros(chunk, jnp.int32)])
  lower, upper = node.bound.lower.reshape(size), node.bound.upper.reshape(size)

  def body(state):
    start, lower, upper = state
    indices = lax.dynamic_slice_in_dim(order, start, chunk)
    valid = start + jnp.arange(chunk) < count
    bounds = lower_bounds(indices, valid)
    # A NaN bound (inf - inf in the pass) leaves the interval bound alone.
    keep = valid & ~jnp.isnan(bounds)
    lower = lower.at[indices].max(jnp.where(keep[0], bounds[0], -jnp.inf))
    upper = upper.at[indices].min(jnp.where(keep[1], -bounds[1], jnp.inf))
    return start + chunk, lower, upper

  _, lower, upper = lax.while_loop(lambda state: state[0] < count, body,
                                   (jnp.zeros((), count.dtype), lower, upper))
  return IntervalBound(lower.reshape(node.shape),
                       jnp.maximum(upper, lower).reshape(node.shape))


# --- Public functions. --------------------------------------------------------------------------


def _validate_box(lower, upper) -> tuple[jax.Array, jax.Array]:
  lower, upper = jnp.asarray(lower), jnp.asarray(upper)
  if lower.shape != upper.shape:
    raise ValueError(f'lower and upper must have the same shape, got {lower.shape} and '
                     f'{upper.shape}. Build the box with jaxcert.bounds.input_box(x, eps).')
  if lower.ndim < 1 or lower.shape[0] < 1:
    raise ValueError(f'Expected a batch of inputs (leading batch axis), got shape {lower.shape}.')
  dtype = jnp.result_type(lower, upper)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f'Bounds must be floating point, got dtype {dtype}.')
  lower, upper = lower.astype(dtype), upper.astype(dtype)
  if is_concrete(lower) and is_concrete(upper):
    if np.isnan(np.asarray(lower)).any() or np.isnan(np.asarray(upper)).any():
      raise ValueError('The input box contains NaN.')
    if (np.asarray(lower) > np.asarray(upper)).any():
      raise ValueError('lower > upper somewhere in the input box; pass (lower, upper) in that '
                       'order with lower <= upper.')
  return lower, upper


def _example_graph(fn, method, row_chunk, patches, lower, upper, outward: bool = False,
                   batch: int = 1, given_intermediates=None):
  """Interprets `fn` on one example's box (shape (1, ...)) of a call bounding `batch` examples,
  its tightened bounds taken from `given_intermediates` (`_Graph`) where given;
  returns (graph, outputs, treedef)."""
  placeholder = jax.ShapeDtypeStruct(lower.shape, lower.dtype)
  closed_jaxpr, out_shape = jax.make_jaxpr(fn, return_shape=True)(placeholder)
  graph = _Graph(method, IntervalBound(lower, upper), row_chunk or row_chunk_for(batch), patches,
                 outward, linear_patches.patch_budget(batch), given_intermediates)
  outputs = _interpret(graph, closed_jaxpr.jaxpr, closed_jaxpr.consts, [graph.input])
  if given_intermediates is not None and graph.given_offset != given_intermediates.shape[0]:
    raise ValueError(_INTERMEDIATES_MISMATCH)
  for leaf in jax.tree.leaves(out_shape):
    if not leaf.shape or leaf.shape[0] != 1:
      raise ValueError(f'fn must map a batch to a batch (outputs with a leading batch axis); '
                       f'on a batch of one it returned an output of shape {leaf.shape}.')
  return graph, outputs, jax.tree.structure(out_shape)


def _output_bounds(graph: _Graph, output) -> tuple[jax.Array, jax.Array]:
  """CROWN bounds of one output leaf, intersected with its interval bound."""
  if not isinstance(output, linear_graph.Node):
    output = jnp.asarray(output)
    return output, output
  size = math.prod(output.shape)

  def rows(start, count):
    identity = jax.nn.one_hot(start + jnp.arange(count), size, dtype=output.dtype)
    return identity.reshape((count,) + output.shape)

  bounds = _chunked_lower_bounds(graph, output, rows, size)
  # fmax/fmin ignore NaN: where the linear pass met inf - inf, the interval bound stands alone.
  lower = jnp.fmax(output.bound.lower, bounds[0].reshape(output.shape))
  upper = jnp.fmin(output.bound.upper, bounds[1].reshape(output.shape))
  return lower, jnp.maximum(upper, lower)


def _map_examples(one_example: Callable, outward: bool, *args):
  """`vmap(one_example)(*args)`; in the rigorous mode under matmul precision 'highest'
  (reduced-precision passes, TF32 or bf16, have another unit roundoff)."""
  if not outward:
    return jax.vmap(one_example)(*args)
  with jax.default_matmul_precision('highest'):
    return jax.vmap(one_example)(*args)


def _recorded_box(lower, upper, outward: bool) -> jax.Array:
  """The head of `linear_bounds`' intermediates, per example: the box as given, flat, and the
  rounding mode (1 outward, 0 nearest), which `_split_intermediates` checks."""
  mode = jnp.full((lower.shape[0], 1), 1 if outward else 0, lower.dtype)
  return jnp.concatenate([lower.reshape(lower.shape[0], -1), upper.reshape(upper.shape[0], -1),
                          mode], axis=1)


def _concretize_rounded(coeffs, bound: IntervalBound, outward: bool):
  """`_concretize`, in the rigorous mode minus a bound of its rounding, rounded down."""
  value = _concretize(coeffs, bound)
  if not outward:
    return value
  magnitude = jnp.maximum(jnp.abs(bound.lower), jnp.abs(bound.upper))
  slack = linear_rounding.sum_slack(coeffs, magnitude, extra_terms=2)
  return outward_rounding.round_down(value - slack)


def linear_bounds(fn: Callable[[jax.Array], Any], method: str = 'crown', *,
                  row_chunk: int | None = None, patches: bool = True,
                  rounding: str = 'nearest',
                  return_intermediates: bool = False) -> Callable[..., tuple[Any, ...]]:
  """Transforms `fn` into a function computing CROWN-family bounds of it, intersected with IBP.

  Same calling convention as `jaxcert.bounds.interval.interval(fn)`: `(lower, upper)` batched
  input boxes in, `(out_lower, out_upper)` pytrees like `fn`'s output out, with
  `out_lower <= fn(x) <= out_upper` for every `x` in the box (up to floating-point rounding).
  Works under `jax.jit` (compile it there: the interpretation is Python).

  Args:
    fn: function of one batch of inputs, batch elements independent (`fn(x)[b]` depends only on
      `x[b]`; true of every encoder in inference mode), returning a pytree of arrays with a
      leading batch axis.
    method: 'crown_ibp' (intermediate bounds by IBP; Zhang et al. 2020), 'crown' (intermediate
      bounds by backward passes; Zhang et al. 2018) or 'alpha_crown' ('crown' with the output
      pass's ReLU slopes optimised, `ALPHA_STEPS` Adam steps: about 60x the output pass of
      'crown'; Xu et al. 2021), see `METHODS`.
    row_chunk: output coordinates bounded per backward pass (memory: about 2 * row_chunk times
      the largest intermediate value, per example); None: `row_chunk_for(batch)`, 16 for
      batches of up to 8 examples, 8 from 16 on (about 128 rows a call; the patches of
      convolutions likewise take a budget per call, `linear_patches.patch_budget`).
    patches: methods 'crown', 'alpha_crown' bound the outputs of convolutions in patches
      (`jaxcert.bounds.linear_patches`; the same bounds, much faster); False: dense passes.
    rounding: 'nearest' (bounds up to rounding, as `interval`'s default) or 'outward'
      (rigorous in any float dtype, e.g. float32 on an accelerator: the bounds hold for the
      real-valued `fn`; ReLU the only relaxed step;
      docs/linear_bounds.md §8).
    return_intermediates: also return, per example, the input box, the rounding mode and the
      intermediate bounds the method computed (one flat vector; for 'crown' and 'alpha_crown'
      the backward-pass bounds of the nonlinear steps' inputs), which `linear_spec_bounds` of
      the same `fn`, box and rounding then reuses instead of recomputing them
      (docs/linear_bounds.md §6.3).

  Returns:
    `bounded(lower, upper) -> (out_lower, out_upper)`, or `(out_lower, out_upper,
    intermediates)` with `return_intermediates` (`intermediates`: (batch, m), the box's dtype).

  Raises:
    ValueError: unknown method or rounding, or a malformed box.
    NotImplementedError: a primitive with neither a linear nor an interval rule (with
      rounding='outward': or without a rounding error bound).
  """
  _check_method(method, rounding)
  outward = rounding == 'outward'

  def bounded(lower, upper):
    lower, upper = _validate_box(lower, upper)
    box = _recorded_box(lower, upper, outward) if return_intermediates else None
    if outward:
      lower, upper = outward_rounding.flush_outwards(lower, upper)

    def one_example(example_lower, example_upper):
      graph, outputs, treedef = _example_graph(fn, method, row_chunk, patches,
                                               example_lower[None], example_upper[None],
                                               outward, batch=lower.shape[0])
      pairs = [_output_bounds(graph, output) for output in outputs]
      bounds = (jax.tree.unflatten(treedef, [lo[0] for lo, _ in pairs]),
                jax.tree.unflatten(treedef, [hi[0] for _, hi in pairs]))
      return bounds + (graph.intermediates(),) if return_intermediates else bounds

    result = _map_examples(one_example, outward, lower, upper)
    if not return_intermediates:
      return result
    # The box as given (not flushed): the one `linear_spec_bounds` checks its own against.
    return result[:2] + (jnp.concatenate([box, result[2]], axis=1),)

  return bounded


def linear_spec_bounds(fn: Callable[[jax.Array], jax.Array], method: str = 'crown', *,
                       row_chunk: int | None = None, patches: bool = True,
                       skip_zero_rows: bool | None = None, rounding: str = 'nearest'
                       ) -> Callable[..., tuple[Any, Any]]:
  """Bounds of `c . fn(x)` for a batch of specification rows `c`, propagated through `fn`.

  Bounding `c . f(x)` by one backward pass from the output with coefficients `c` is tighter than
  bounding `f(x)` in a box and then `c . box` (the box forgets that the coordinates of `f(x)` move
  together; docs/linear_bounds.md §6). The result is intersected with the latter.

  Args:
    fn: function of one batch, batch elements independent, returning one array (batch, out_dim).
    method: one of `METHODS`.
    row_chunk: specification rows per backward pass (None: as in `linear_bounds`).
    patches: as in `linear_bounds`.
    skip_zero_rows: bound an example's rows after its last nonzero row (padding) by 0 without a
      backward pass (the passes then run in a `while_loop`, which reverse-mode differentiation
      does not go through); None: for 'crown' and 'alpha_crown' (whose intermediate bounds come
      from `while_loop`s anyway), not for 'crown_ibp'.
    rounding: as in `linear_bounds`; with 'outward' the bounds hold for the real-valued `fn` and
      the rows exactly as given (`spec` must then be an array of the box's dtype;
      docs/linear_bounds.md §8.2).

  Returns:
    `bounded(lower, upper, spec, intermediates=None) -> (spec_lower, spec_upper)`, with `spec`
    of shape (batch, n_spec, out_dim) and outputs (batch, n_spec):
    `spec_lower[b, s] <= spec[b, s] . fn(x)[b] <= spec_upper[b, s]` for every `x` in the box.
    `intermediates`, those `linear_bounds(fn, method, rounding=rounding,
    return_intermediates=True)` returned for the same `fn`, `method`, rounding and boxes, gives
    the same bounds without recomputing the intermediate ones (docs/linear_bounds.md §6.3). An
    example whose box or rounding is not the one they were computed with gets the bounds -inf
    and +inf (a ValueError outside `jit`); other intermediate shapes are a ValueError; another
    function with the same intermediate shapes cannot be told apart (its bounds need not hold).
  """
  return _spec_bounds(fn, method, row_chunk, patches, upper=True, skip_zero_rows=skip_zero_rows,
                      rounding=rounding)


def linear_spec_lower_bounds(fn: Callable[[jax.Array], jax.Array], method: str = 'crown', *,
                             row_chunk: int | None = None, patches: bool = True,
                             skip_zero_rows: bool | None = None, rounding: str = 'nearest'
                             ) -> Callable[..., jax.Array]:
  """The lower half of `linear_spec_bounds`, at about half its cost below the first nonlinearity.

  `bounded(lower, upper, spec, intermediates=None) -> spec_lower` (batch, n_spec),
  `spec_lower[b, s] <= spec[b, s] . fn(x)[b]` for every `x` in the box (an upper bound of
  `c . fn(x)` is minus the lower bound of `-c`; `intermediates`, `skip_zero_rows` and
  `rounding` as in `linear_spec_bounds`). Differentiable with respect to the box, the rows and
  the parameters `fn` closes over for method 'crown_ibp' without `skip_zero_rows` (CROWN-IBP
  training, Zhang et al. 2020); the other methods' intermediate bounds come from `while_loop`s,
  which reverse-mode differentiation does not go through.
  """
  return _spec_bounds(fn, method, row_chunk, patches, upper=False, skip_zero_rows=skip_zero_rows,
                      rounding=rounding)


def _spec_bounds(fn, method, row_chunk, patches, upper: bool, skip_zero_rows: bool | None,
                 rounding: str):
  """`linear_spec_bounds` (`upper`) or `linear_spec_lower_bounds`."""
  _check_method(method, rounding)
  outward = rounding == 'outward'
  if skip_zero_rows is None:
    skip_zero_rows = method in _TIGHTENING_METHODS

  def bounded(lower, upper_box, spec, intermediates=None):
    lower, upper_box = _validate_box(lower, upper_box)
    given_dtype = getattr(spec, 'dtype', None)
    spec = jnp.asarray(spec)
    if spec.ndim != 3 or spec.shape[0] != lower.shape[0]:
      raise ValueError(f'spec must have shape (batch, n_spec, out_dim) with batch '
                       f'{lower.shape[0]}, got {spec.shape}.')
    if outward and given_dtype != lower.dtype:  # A cast would round the rows: other rows.
      raise ValueError(f"rounding='outward' bounds the rows as given: pass spec as an array of "
                       f"the box's dtype {lower.dtype}, got {given_dtype}.")
    same_box = None
    if intermediates is not None:
      intermediates, same_box = _split_intermediates(intermediates, lower, upper_box, outward)
    if outward:
      lower, upper_box = outward_rounding.flush_outwards(lower, upper_box)

    def one_example(example_lower, example_upper, rows_of_spec, given=None):
      graph, outputs, _ = _example_graph(fn, method, row_chunk, patches, example_lower[None],
                                         example_upper[None], outward, batch=lower.shape[0],
                                         given_intermediates=given)
      if len(outputs) != 1 or len(_leaf_shape(outputs[0])) != 2:
        raise ValueError('linear_spec_bounds needs fn to return one array (batch, out_dim).')
      output = outputs[0]
      out_shape = _leaf_shape(output)
      if rows_of_spec.shape[1] != out_shape[1]:
        raise ValueError(f'spec rows have {rows_of_spec.shape[1]} entries, fn outputs '
                         f'{out_shape[1]}.')
      coeffs = rows_of_spec.astype(example_lower.dtype)[:, None, :]
      # The rows over the output's box: the bounds where fn does not depend on x, else
      # intersected with the backward pass's.
      if isinstance(output, linear_graph.Node):
        box = IntervalBound(output.bound.lower, output.bound.upper)
      else:
        box = IntervalBound(jnp.asarray(output), jnp.asarray(output))
      spec_lower = _concretize_rounded(coeffs, box, outward)
      spec_upper = -_concretize_rounded(-coeffs, box, outward) if upper else None
      if not isinstance(output, linear_graph.Node):
        return (spec_lower, spec_upper) if upper else spec_lower
      count = coeffs.shape[0]
      padded = jnp.concatenate([coeffs, jnp.zeros((graph.row_chunk,) + coeffs.shape[1:],
                                                  coeffs.dtype)])

      def rows(start, chunk):
        return lax.dynamic_slice_in_dim(padded, start, chunk)

      # Trailing zero rows (padding, e.g. through_encoder's) get their bound 0 without a pass.
      nonzero_rows = None
      if skip_zero_rows:
        nonzero = jnp.any(coeffs != 0, axis=tuple(range(1, coeffs.ndim)))
        nonzero_rows = jnp.max(jnp.where(nonzero, jnp.arange(1, count + 1), 0))
      bounds = _chunked_lower_bounds(graph, output, rows, count, upper=upper,
                                     nonzero_rows=nonzero_rows)
      spec_lower = jnp.maximum(bounds[0], spec_lower)
      if not upper:
        return spec_lower
      return spec_lower, jnp.maximum(jnp.minimum(bounds[1], spec_upper), spec_lower)

    if intermediates is None:
      return _map_examples(one_example, outward, lower, upper_box, spec)
    result = _map_examples(one_example, outward, lower, upper_box, spec, intermediates)
    # Bounds from another box's intermediate bounds need not hold: none there.
    if not upper:
      return jnp.where(same_box[:, None], result, -jnp.inf)
    return (jnp.where(same_box[:, None], result[0], -jnp.inf),
            jnp.where(same_box[:, None], result[1], jnp.inf))

  return bounded


_INTERMEDIATES_MISMATCH = (
    'intermediates do not match this function and method: pass those that '
    'linear_bounds(fn, method, rounding=..., return_intermediates=True) returned for the same '
    'fn, method, rounding and input boxes.')


def _split_intermediates(intermediates, lower, upper, outward: bool
                         ) -> tuple[jax.Array, jax.Array]:
  """`linear_bounds`' intermediates of the boxes `(lower, upper)`: (the tightened nodes' part,
  (batch,) whether each example's recorded box and rounding mode (`_recorded_box`) are these;
  round-to-nearest intermediate bounds may fall a rounding short of the real ones, which the
  rigorous mode must not take).

  Raises:
    ValueError: a shape or dtype that cannot be theirs, or (outside `jit`) a recorded box or
      rounding mode that is not this one.
  """
  intermediates = jnp.asarray(intermediates)
  box_size = math.prod(lower.shape[1:])
  if (intermediates.ndim != 2 or intermediates.shape[0] != lower.shape[0]
      or intermediates.shape[1] < 2 * box_size + 1 or intermediates.dtype != lower.dtype):
    raise ValueError(f'{_INTERMEDIATES_MISMATCH} Got shape {intermediates.shape} and dtype '
                     f'{intermediates.dtype} for boxes of shape {lower.shape} and dtype '
                     f'{lower.dtype}.')
  recorded_lower = intermediates[:, :box_size].reshape(lower.shape)
  recorded_upper = intermediates[:, box_size:2 * box_size].reshape(lower.shape)
  same_box = (jnp.all((recorded_lower == lower) & (recorded_upper == upper),
                      axis=tuple(range(1, lower.ndim)))
              & (intermediates[:, 2 * box_size] == (1 if outward else 0)))
  if is_concrete(same_box) and not bool(np.all(same_box)):
    raise ValueError(f'{_INTERMEDIATES_MISMATCH} Examples '
                     f'{np.flatnonzero(~np.asarray(same_box)).tolist()} have other boxes or '
                     f"another rounding (rounding={'outward' if outward else 'nearest'!r} here).")
  return intermediates[:, 2 * box_size + 1:], same_box


def _leaf_shape(value) -> tuple[int, ...]:
  return value.shape if isinstance(value, linear_graph.Node) else jnp.shape(value)


__all__ = ['METHODS', 'linear_bounds', 'linear_spec_bounds', 'linear_spec_lower_bounds']
