"""Interval bound propagation (IBP) by interpreting a function's jaxpr.

`interval(fn)` turns a JAX function of one input array into a function
`(lower, upper) -> (out_lower, out_upper)` whose outputs bound `fn(x)` for
every `x` with `lower <= x <= upper` (Kakizaki et al., Sec. 3.2.1, Eqs. 15-16; Gowal
et al. 2018). The function is traced with `jax.make_jaxpr` and its equations
are interpreted one by one, in the manner of deepmind/jax_verify:

* every jaxpr variable is bound in an environment to either a concrete value
  (an array or a tracer of an enclosing `jit`/`grad`/`vmap`) or an
  `IntervalBound`;
* an equation whose inputs are all concrete (weights, BatchNorm statistics,
  anything that does not depend on the perturbed input) is evaluated exactly
  with `primitive.bind`, so it adds no looseness;
* an equation that touches a bound is sent to the rule registered for its
  primitive in `RULES` (filled by `jaxcert.bounds.rules`); a primitive with no
  rule is an error naming the primitive and the user's source line, never a
  silent concrete evaluation;
* a binary primitive applied twice to the same variable (`x * x`, `x - x`,
  `x != x`) uses `SAME_OPERAND_RULES` when it has an entry there;
* calls (`jit`, `closed_call`, `custom_jvp_call`, `custom_vjp_call`,
  `checkpoint`/remat) are interpreted recursively, unless the call's name is
  registered in `NAMED_CALL_RULES` (a "synthetic primitive" with a tighter rule
  than the composition of its parts, e.g. `jaxcert.bounds.l2_normalize`);
* beside each bound the interpreter keeps a flag "may be NaN somewhere in the
  box" (`NAN_SOURCES`: `sqrt` of negatives, `0 / 0`, any rule meeting an
  infinite input): where an input may be NaN, comparisons, `is_finite`, casts
  to integers and `sort` give the whole range of their output type, since
  NaN compares false; NaN ends become infinite ends, and every rule's output
  is checked (lower <= upper, no NaN) when concrete.

Derivations of the rules are in docs/bounds.md.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.extend.core as jex_core
import jax.extend.source_info_util as source_info_util
import jax.numpy as jnp
from jax import lax
import numpy as np


@dataclasses.dataclass(frozen=True)
class IntervalBound:
  """Elementwise interval `lower <= x <= upper` of an array-valued quantity.

  A registered pytree (both fields are leaves), so it crosses `jit`, `vmap`
  and `grad` boundaries as is.

  Attributes:
    lower: array of lower bounds.
    upper: array of upper bounds, same shape and dtype as `lower`.
  """

  lower: jax.Array
  upper: jax.Array

  @classmethod
  def from_center_radius(cls, center, radius) -> IntervalBound:
    """The interval `[center - radius, center + radius]` (radius >= 0)."""
    return cls(center - radius, center + radius)

  @property
  def center(self) -> jax.Array:
    """`(lower + upper) / 2`, finite for every finite interval (`l/2 + u/2` where the sum overflows)."""
    total = self.upper + self.lower
    return jnp.where(jnp.isfinite(total), total / 2, self.lower / 2 + self.upper / 2)

  @property
  def radius(self) -> jax.Array:
    """`(upper - lower) / 2`, finite for every finite interval (`u/2 - l/2` where the difference
    overflows)."""
    difference = self.upper - self.lower
    return jnp.where(jnp.isfinite(difference), difference / 2, self.upper / 2 - self.lower / 2)

  @property
  def shape(self) -> tuple[int, ...]:
    return jnp.shape(self.lower)


jax.tree_util.register_dataclass(
    IntervalBound, data_fields=['lower', 'upper'], meta_fields=[])

# A rule maps the equation's inputs (concrete arrays or IntervalBounds, at
# least one of them an IntervalBound) and the equation's params to its output
# (or to a list of outputs for primitives with multiple results).
Rule = Callable[..., Any]

# Primitive -> rule. Filled by `jaxcert.bounds.rules` (imported by the
# package), the way JAX registers per-primitive rules from several modules.
RULES: dict[jex_core.Primitive, Rule] = {}

# Primitive -> rule for `p(x, x)` with both operands the same variable, which
# can be tighter than the rule for independent operands: x * x >= 0,
# x - x == 0, x == x. Filled by `jaxcert.bounds.rules`.
SAME_OPERAND_RULES: dict[jex_core.Primitive, Rule] = {}

# Name of a `jax.jit`-wrapped function -> rule over the call's inputs. Used for
# functions with a tighter bound than the composition of their primitives. A
# rule returns None to decline (e.g. when `vmap` has batched the call and its
# parameters no longer describe the body): the body is then interpreted.
NAMED_CALL_RULES: dict[str, Rule] = {}

# Primitive or named call -> `may_create_nan(*invals, **params)`, a boolean
# scalar: whether the equation can output NaN at a point of its input bounds
# where no input is NaN or infinite (`sqrt` of a negative, `0 / 0`). Filled by
# `jaxcert.bounds.rules`. NaN from infinite inputs (`inf - inf`, `0 * inf`) is
# assumed possible for every equation (see `nan_aware_outputs`).
NAN_SOURCES: dict[jex_core.Primitive | str, Callable[..., Any]] = {}

# Primitives whose floating-point output can be a number where an input is NaN
# (`sort` moves NaN to the end, shifting the other entries).
NAN_ABSORBING_PRIMITIVES = frozenset({jex_core.primitives.sort_p})

# --- Rigorous mode (`interval(fn, rounding='outward')`). ---------------------
# The same three tables for rules whose bounds contain the real-valued result
# although computed with round-to-nearest (outward rounding). Filled by
# `jaxcert.bounds.rounding` (docs/rigorous_float32.md). A primitive absent from
# `OUTWARD_RULES` is an error in that mode; a named call absent from
# `OUTWARD_NAMED_CALL_RULES` is interpreted primitive by primitive.
OUTWARD_RULES: dict[jex_core.Primitive, Rule] = {}
OUTWARD_SAME_OPERAND_RULES: dict[jex_core.Primitive, Rule] = {}
OUTWARD_NAMED_CALL_RULES: dict[str, Rule] = {}
ROUNDING_MODES = ('nearest', 'outward')

_CALL_PRIMITIVES = (
    jex_core.primitives.jit_p,
    jex_core.primitives.closed_call_p,
    jex_core.primitives.custom_jvp_call_p,
    jex_core.primitives.custom_vjp_call_p,
    jex_core.primitives.remat_p,
)

# Frames inside these packages are library code, not the user's source line.
_LIBRARY_DIRS = tuple(
    os.path.dirname(path) + os.sep
    for path in (jax.__file__, flax.__file__, __file__))


def is_concrete(value) -> bool:
  """Whether `value` has a known value now (not a tracer of jit/vmap/grad)."""
  return not isinstance(value, jax.core.Tracer)


def _user_frame(eqn: jex_core.JaxprEqn) -> str | None:
  """Innermost frame of `eqn`'s traceback outside jax and flax, or None."""
  traceback = eqn.source_info.traceback
  for frame in (traceback.frames if traceback is not None else []):
    if not frame.file_name.startswith(_LIBRARY_DIRS):
      return f'{frame.file_name}:{frame.line_num} ({frame.function_name})'
  return None


def source_location(eqn: jex_core.JaxprEqn,
                    enclosing_calls: Sequence[jex_core.JaxprEqn] = ()) -> str:
  """Where the user's code emitted `eqn`.

  Args:
    eqn: the equation.
    enclosing_calls: the call equations (`jit`, `custom_jvp_call`, ...) whose
      inner jaxpr holds `eqn`, outermost first. A traceback recorded inside a
      `jit` stops at its boundary, so the user's line may be on a caller.

  Returns:
    `file:line:column (function)` of the JAX-level call, the Flax module
    path, and the user's line if it is further out.
  """
  parts = []
  for level in (eqn, *reversed(enclosing_calls)):
    summary = source_info_util.summarize(level.source_info)
    name_stack = str(level.source_info.name_stack)
    if level is not eqn:
      name = level.params.get('name')
      parts.append(f'inside `{level.primitive.name}`'
                   + (f' ({name})' if name else ''))
    parts.append(f'at {summary or "<jax internals>"}'
                 + (f' in module {name_stack}' if name_stack else ''))
    user_frame = _user_frame(level)
    if user_frame is not None:
      if not summary.startswith(user_frame.split(' ')[0]):
        parts.append(f'called from {user_frame}')
      break
  return ', '.join(parts)


def _read(env: dict, atom) -> Any:
  if isinstance(atom, jex_core.Literal):
    return atom.val
  return env[atom]


def _call_jaxpr(eqn: jex_core.JaxprEqn) -> tuple[jex_core.Jaxpr, Sequence]:
  """The inner jaxpr and its constants of a call-like equation."""
  params = eqn.params
  inner = params['jaxpr'] if 'jaxpr' in params else params['call_jaxpr']
  if isinstance(inner, jex_core.ClosedJaxpr):
    return inner.jaxpr, inner.consts
  return inner, ()


def _any(flags: Sequence) -> Any:
  """Logical or of boolean scalars, `False` (a Python bool, no work) when every flag is `False`."""
  flags = [flag for flag in flags if flag is not False]
  if not flags:
    return False
  result = flags[0]
  for flag in flags[1:]:
    result = result | flag
  return result


def _is_floating(value) -> bool:
  return jnp.issubdtype(jnp.result_type(value), jnp.floating)


def _may_be_infinite(value) -> Any:
  """Whether an input (bound or concrete) has an infinite entry or end: `inf - inf`, `0 * inf`
  and `inf / inf` are NaN, so every rule may output NaN from such an input."""
  lower, upper = ((value.lower, value.upper) if isinstance(value, IntervalBound)
                  else (value, value))
  if not _is_floating(lower):
    return False
  if is_concrete(lower) and is_concrete(upper):
    return bool(np.isinf(np.asarray(lower)).any() or np.isinf(np.asarray(upper)).any())
  return jnp.any(jnp.isinf(lower)) | jnp.any(jnp.isinf(upper))


def _may_be_nan(atom, value, nan_flags: dict) -> Any:
  """Whether the value of `atom` may be NaN somewhere in the box (see `_interpret`)."""
  if isinstance(value, IntervalBound):
    return nan_flags.get(atom, False)
  if not _is_floating(value):
    return False
  if is_concrete(value):
    return bool(np.isnan(np.asarray(value)).any())
  return jnp.any(jnp.isnan(value))


def _widen_where(flag, outval: IntervalBound, lowest, highest) -> IntervalBound:
  dtype = outval.lower.dtype
  return IntervalBound(jnp.where(flag, np.asarray(lowest, dtype), outval.lower),
                       jnp.where(flag, np.asarray(highest, dtype), outval.upper))


def nan_aware_outputs(eqn: jex_core.JaxprEqn, key, invals: list, in_nan: list,
                       outvals: list) -> tuple[list, list]:
  """The rule's outputs made safe for NaN, and whether each may be NaN.

  * A floating output may be NaN if an input may be, if an input is infinite somewhere (the
    rule's arithmetic can meet `inf - inf` or `0 * inf`), or if `NAN_SOURCES[key]` says the
    equation leaves its domain on this box (`sqrt` of negatives, `0 / 0`).
  * A NaN end of a rule's output (from that same arithmetic on infinite ends) becomes `-inf`
    (lower) or `+inf` (upper): a valid, vacuous end. A lower end of `+inf` (a finite real end
    that overflowed when rounded, e.g. `square` of 1e20 in float32) becomes the largest finite
    float, and an upper end of `-inf` its negative: round-to-nearest would otherwise put the
    end infinitely far on the wrong side of a finite value.
  * Where an input may be NaN, an integer or bool output (a comparison, `isnan`, `is_finite`,
    a cast) can take any value of its dtype, and a floating output of a NaN-absorbing primitive
    (`sort` moves NaN to the end) any value: their bounds are widened to the dtype's range.
  """
  source = NAN_SOURCES.get(key)
  created = _any([_may_be_infinite(value) for value in invals]
                 + [source(*invals, **eqn.params) if source is not None else False])
  incoming = _any(in_nan)
  may_be_nan = _any([incoming, created])
  results, flags = [], []
  for outvar, outval in zip(eqn.outvars, outvals):
    dtype = outvar.aval.dtype
    floating = jnp.issubdtype(dtype, jnp.floating)
    if not isinstance(outval, IntervalBound) and (
        (floating and may_be_nan is not False) or (not floating and incoming is not False)):
      outval = IntervalBound(jnp.asarray(outval, dtype), jnp.asarray(outval, dtype))
    if isinstance(outval, IntervalBound) and floating:
      largest = np.asarray(jnp.finfo(dtype).max, dtype)
      outval = IntervalBound(
          jnp.where(jnp.isnan(outval.lower), -jnp.inf,
                    jnp.where(outval.lower == jnp.inf, largest, outval.lower)),
          jnp.where(jnp.isnan(outval.upper), jnp.inf,
                    jnp.where(outval.upper == -jnp.inf, -largest, outval.upper)))
      if incoming is not False and eqn.primitive in NAN_ABSORBING_PRIMITIVES:
        outval = _widen_where(incoming, outval, -jnp.inf, jnp.inf)
    elif isinstance(outval, IntervalBound) and incoming is not False:
      info = jnp.iinfo(dtype) if jnp.issubdtype(dtype, jnp.integer) else None
      outval = _widen_where(incoming, outval, info.min if info else False,
                            info.max if info else True)
    results.append(outval)
    flags.append(may_be_nan if floating else False)
  return results, flags


def _apply_rule(eqn: jex_core.JaxprEqn, invals: list, in_nan: list,
                enclosing_calls: tuple[jex_core.JaxprEqn, ...],
                rounding: str = 'nearest') -> tuple[list, list]:
  """Bounds of the outputs of `eqn` given at least one bounded input.

  Returns:
    The outputs' values, and for each whether it may be NaN somewhere in the box.
  """
  primitive = eqn.primitive
  outward = rounding == 'outward'
  rules, same_operand_rules, named_call_rules = (
      (OUTWARD_RULES, OUTWARD_SAME_OPERAND_RULES, OUTWARD_NAMED_CALL_RULES)
      if outward else (RULES, SAME_OPERAND_RULES, NAMED_CALL_RULES))
  if primitive in _CALL_PRIMITIVES:
    name = eqn.params.get('name')
    if primitive is jex_core.primitives.jit_p and name in named_call_rules:
      outvals = named_call_rules[name](*invals)
      if outvals is not None:  # None: the rule declines (a vmapped body), interpret the body.
        outvals = [outvals] if len(eqn.outvars) == 1 else list(outvals)
        return nan_aware_outputs(eqn, name, invals, in_nan, outvals)
    inner_jaxpr, inner_consts = _call_jaxpr(eqn)
    return _interpret(inner_jaxpr, inner_consts, invals,
                      (*enclosing_calls, eqn), in_nan, rounding)
  rule = rules.get(primitive)
  if (primitive in same_operand_rules and len(eqn.invars) == 2
      and isinstance(eqn.invars[0], jex_core.Var)
      and eqn.invars[0] is eqn.invars[1]):
    rule = same_operand_rules[primitive]
    invals = invals[:1]
    in_nan = in_nan[:1]
  if rule is None and outward and primitive in RULES:
    raise NotImplementedError(
        f'No outward-rounding error bound for primitive `{primitive.name}` '
        f'{source_location(eqn, enclosing_calls)}: rounding=\'outward\' would '
        'not be sound for it. Add its error bound to jaxcert.bounds.rounding, '
        "or use rounding='nearest' (in float64). Supported in outward mode: "
        f'{", ".join(sorted(p.name for p in OUTWARD_RULES))}.')
  if rule is None:
    raise NotImplementedError(
        f'No interval rule for primitive `{primitive.name}` (applied to a '
        f'value that depends on the perturbed input) '
        f'{source_location(eqn, enclosing_calls)}. Add a rule to '
        'jaxcert.bounds.rules, or rewrite this step with supported operations '
        '(supported: '
        f'{", ".join(sorted(p.name for p in RULES))}).')
  try:
    outvals = rule(*invals, **eqn.params)
  except (ValueError, NotImplementedError) as error:
    raise type(error)(
        f'{error} (primitive `{primitive.name}` '
        f'{source_location(eqn, enclosing_calls)})') from error
  outvals = list(outvals) if primitive.multiple_results else [outvals]
  return nan_aware_outputs(eqn, primitive, invals, in_nan, outvals)


def _check_output(eqn: jex_core.JaxprEqn, outvar, outval,
                  enclosing_calls: tuple[jex_core.JaxprEqn, ...]) -> None:
  """Checks a rule's output against the traced shape, and (when concrete) lower <= upper.

  A failure is a bug in a rule, reported as such rather than returned as a bound.
  """
  if not isinstance(outval, IntervalBound):
    return
  expected = tuple(outvar.aval.shape)
  if outval.lower.shape != expected or outval.upper.shape != expected:
    raise AssertionError(
        f'Interval rule for `{eqn.primitive.name}` returned shapes '
        f'{outval.lower.shape}/{outval.upper.shape}, expected {expected}.')
  if is_concrete(outval.lower) and is_concrete(outval.upper):
    lower, upper = np.asarray(outval.lower), np.asarray(outval.upper)
    bad = (lower > upper) | np.isnan(lower) | np.isnan(upper)
    if bad.any():
      index = tuple(int(i) for i in np.argwhere(bad)[0])
      raise RuntimeError(
          f'Interval rule for `{eqn.primitive.name}` returned lower > upper (or NaN) at '
          f'{int(bad.sum())} position(s), first at index {index}: [{lower[index]}, '
          f'{upper[index]}] {source_location(eqn, enclosing_calls)}. This is a bug in the rule '
          '(jaxcert.bounds.rules); the bound is not returned.')


def _interpret(jaxpr: jex_core.Jaxpr, consts: Sequence, args: Sequence,
               enclosing_calls: tuple[jex_core.JaxprEqn, ...] = (),
               args_may_be_nan: Sequence | None = None,
               rounding: str = 'nearest') -> tuple[list, list]:
  """Evaluates `jaxpr` on concrete values and `IntervalBound`s.

  Invariant (docs/bounds.md, "What is guaranteed"): for every point of the box, every entry of
  a bounded variable's value is NaN or lies in its bound; and where `may_be_nan[var]` is
  False, no entry is NaN. The flag is a boolean scalar (traced under `jit`).

  Args:
    jaxpr: the jaxpr.
    consts: values of its constvars.
    args: values of its invars (arrays or IntervalBounds).
    enclosing_calls: call equations holding `jaxpr`, outermost first (for
      error messages).
    args_may_be_nan: for each invar, whether it may be NaN (default: none may).
    rounding: 'nearest' or 'outward' (which rule tables to use).

  Returns:
    The values of its outvars, and for each whether it may be NaN.
  """
  env: dict = {}
  may_be_nan: dict = {}
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  if args_may_be_nan is not None:
    may_be_nan.update(zip(jaxpr.invars, args_may_be_nan))
  for eqn in jaxpr.eqns:
    invals = [_read(env, atom) for atom in eqn.invars]
    # Operations emitted while interpreting `eqn` (under an enclosing jit)
    # carry the user's source line and module path, as in jax.core.eval_jaxpr.
    with (source_info_util.user_context(eqn.source_info.traceback,
                                        name_stack=eqn.source_info.name_stack),
          eqn.ctx.manager):
      if any(isinstance(value, IntervalBound) for value in invals):
        in_nan = [_may_be_nan(atom, value, may_be_nan)
                  for atom, value in zip(eqn.invars, invals)]
        outvals, out_nan = _apply_rule(eqn, invals, in_nan, enclosing_calls, rounding)
        for outvar, outval in zip(eqn.outvars, outvals):
          _check_output(eqn, outvar, outval, enclosing_calls)
      else:
        outvals = eqn.primitive.bind(
            *invals, **eqn.primitive.get_bind_params(eqn.params))
        if not eqn.primitive.multiple_results:
          outvals = [outvals]
        out_nan = [False] * len(outvals)
    for outvar, outval, flag in zip(eqn.outvars, outvals, out_nan):
      if not isinstance(outvar, jex_core.DropVar):
        env[outvar] = outval
        if flag is not False:
          may_be_nan[outvar] = flag
  outvals = [_read(env, atom) for atom in jaxpr.outvars]
  return outvals, [_may_be_nan(atom, value, may_be_nan) if isinstance(value, IntervalBound)
                   else False for atom, value in zip(jaxpr.outvars, outvals)]


# Steps whose output is one of their inputs' values (or a cast, handled exactly by its interval
# rule): they do not round, whatever their dtype.
_EXACT_IN_ANY_DTYPE = frozenset(getattr(jex_core.primitives, name) for name in (
    'convert_element_type_p', 'reshape_p', 'broadcast_in_dim_p', 'transpose_p', 'squeeze_p',
    'slice_p', 'dynamic_slice_p', 'dynamic_update_slice_p', 'gather_p', 'concatenate_p', 'pad_p',
    'rev_p', 'copy_p', 'select_n_p', 'max_p', 'min_p', 'neg_p', 'abs_p', 'reduce_max_p',
    'reduce_min_p', 'reduce_precision_p', 'stop_gradient_p', 'sharding_constraint_p',
    'device_put_p', 'sort_p'))


def _inner_jaxprs(params) -> list[jex_core.Jaxpr]:
  """The jaxprs among an equation's parameters (a loop's body, a conditional's branches)."""
  found = []
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        found.append(item.jaxpr)
      elif isinstance(item, jex_core.Jaxpr):
        found.append(item)
  return found


def arithmetic_narrower_than(fn: Callable, dtype, *example_args) -> list[str]:
  """The steps of `fn` that compute, on values depending on its arguments, in a floating dtype
  with less precision or range than `dtype` (e.g. bfloat16 in an encoder certified in float64),
  each as '`primitive` in dtype at <source>'.

  Round-to-nearest bounds hold up to the rounding of the dtype each step computes in
  (docs/bounds.md §10): bfloat16 keeps 8 significant bits, so a slack calibrated for float64 or
  float32 rounding does not cover it. Casts and steps returning one of their inputs' values
  (reshapes, max, selection...) do not round and are not listed.

  Args:
    fn: the function, traced with `jax.make_jaxpr` on `example_args` (arrays or
      `jax.ShapeDtypeStruct`s).
    dtype: the reference floating dtype.
    *example_args: `fn`'s arguments; every one counts as input-dependent.
  """
  reference = jnp.finfo(dtype)
  closed = jax.make_jaxpr(fn)(*example_args)
  found = []

  def narrower(var) -> bool:
    aval_dtype = getattr(var.aval, 'dtype', None)
    if aval_dtype is None or not jnp.issubdtype(aval_dtype, jnp.floating):
      return False
    info = jnp.finfo(aval_dtype)
    return info.nmant < reference.nmant or info.maxexp < reference.maxexp

  def walk(jaxpr, tainted_inputs, enclosing):
    tainted = {var for var, flag in zip(jaxpr.invars, tainted_inputs) if flag}
    for eqn in jaxpr.eqns:
      inputs = [not isinstance(v, jex_core.Literal) and v in tainted for v in eqn.invars]
      if not any(inputs):
        continue
      tainted.update(eqn.outvars)
      if eqn.primitive in _CALL_PRIMITIVES:
        walk(_call_jaxpr(eqn)[0], inputs, (*enclosing, eqn))
        continue
      if eqn.primitive not in _EXACT_IN_ANY_DTYPE and any(map(narrower, eqn.outvars)):
        found.append(f'`{eqn.primitive.name}` in {eqn.outvars[0].aval.dtype} '
                     f'{source_location(eqn, enclosing)}')
      for inner in _inner_jaxprs(eqn.params):  # scan, while, cond: every operand may matter
        walk(inner, [True] * len(inner.invars), (*enclosing, eqn))

  walk(closed.jaxpr, [True] * len(closed.jaxpr.invars), ())
  return found


def _validate_box(lower, upper) -> tuple[jax.Array, jax.Array]:
  lower = jnp.asarray(lower)
  upper = jnp.asarray(upper)
  if lower.shape != upper.shape:
    raise ValueError(
        f'lower and upper must have the same shape, got {lower.shape} and '
        f'{upper.shape}. Build the box with jaxcert.bounds.input_box(x, eps).')
  dtype = jnp.result_type(lower, upper)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f'Interval bounds must be floating point, got dtype {dtype}; '
        'convert images to float32 in [0, 1].')
  lower = lower.astype(dtype)
  upper = upper.astype(dtype)
  if is_concrete(lower) and is_concrete(upper):
    lower_np, upper_np = np.asarray(lower), np.asarray(upper)
    if np.isnan(lower_np).any() or np.isnan(upper_np).any():
      raise ValueError('The input box contains NaN.')
    inverted = lower_np > upper_np
    if inverted.any():
      index = tuple(int(i) for i in np.argwhere(inverted)[0])
      raise ValueError(
          f'lower > upper at {int(inverted.sum())} position(s), first at '
          f'index {index}: {lower_np[index]} > {upper_np[index]}. Pass '
          '(lower, upper) in that order with lower <= upper.')
  return lower, upper


def interval(fn: Callable[[jax.Array], Any], *,
             rounding: str = 'nearest') -> Callable[..., tuple[Any, Any]]:
  """Transforms `fn` into a function computing sound interval bounds of it.

  Implements interval bound propagation (Kakizaki et al. Sec. 3.2.1, Eqs. 15-16) for
  any composition of primitives that have a rule in `RULES`: affine layers in
  centre/radius form (`W c +- |W| r`), monotone activations on both ends, and
  the rules derived in docs/bounds.md.

  `fn` is traced at the shape of `lower`, so a batch of boxes is bounded in one
  call when `fn` takes a batch. Parameters are closed over by `fn`; they may be
  tracers (the bounds can be differentiated with respect to them, as certified
  training needs). The returned function works under `jax.jit` and
  `jax.vmap`. Input checks (same shape, `lower <= upper`, no NaN) run when the
  box is concrete; under `jit`/`vmap` only the shape check runs. Matmuls and
  convolutions use the model's precision: on GPU/TPU the default float32
  precision (TF32/bf16 passes) is too coarse for certificates, so certify
  under `jax.default_matmul_precision('highest')` (docs/bounds.md §1).

  With `rounding='outward'` every rule's bounds contain the real-valued
  result of its operation (each bound rounded outwards by the operation's
  error bound, `jaxcert.bounds.rounding`, docs/rigorous_float32.md), so float32
  bounds hold for the real-valued `fn` on any backend; matmuls and
  convolutions then run at `Precision.HIGHEST`, and a primitive without an
  error bound is an error.

  Args:
    fn: function of one floating-point array, returning a pytree of arrays.
    rounding: 'nearest' (bounds up to rounding) or 'outward' (rigorous).

  Returns:
    `bounded(lower, upper) -> (out_lower, out_upper)`: two pytrees with the
    structure of `fn`'s output with `out_lower <= fn(x) <= out_upper` for all
    `x` in the box and every entry where `fn(x)` is not NaN (up to the
    round-to-nearest rounding of the ends; docs/bounds.md §1, "What is
    guaranteed"). Outputs that do not depend on `x` are exact
    (`out_lower == out_upper == fn(x)`).

  Raises:
    ValueError: for a malformed box.
    NotImplementedError: when `fn` applies a primitive without a rule to a
      value that depends on `x` (or an operation the rule cannot bound
      soundly, e.g. integer division); the message names the primitive and
      the source line.
    RuntimeError: when a rule returns lower > upper or a NaN end (a bug in
      the rule; checked for concrete bounds).

  Examples:
    >>> import jax.numpy as jnp
    >>> lo, hi = interval(lambda x: jnp.maximum(2 * x - 1, 0))(
    ...     jnp.array([0., 0.]), jnp.array([1., 0.25]))
    >>> lo.tolist(), hi.tolist()
    ([0.0, 0.0], [1.0, 0.0])
  """

  if rounding not in ROUNDING_MODES:
    raise ValueError(f'Unknown rounding {rounding!r}; valid: {list(ROUNDING_MODES)}.')
  if rounding == 'outward' and not OUTWARD_RULES:
    raise RuntimeError('No outward rules registered: import jaxcert.bounds.')

  def bounded(lower, upper):
    lower, upper = _validate_box(lower, upper)
    if rounding == 'outward':
      from jaxcert.bounds import rounding as outward_rounding  # pylint: disable=import-outside-toplevel
      lower, upper = outward_rounding.flush_outwards(lower, upper)
    placeholder = jax.ShapeDtypeStruct(lower.shape, lower.dtype)
    closed_jaxpr, out_shape = jax.make_jaxpr(fn, return_shape=True)(
        placeholder)
    outvals, _ = _interpret(closed_jaxpr.jaxpr, closed_jaxpr.consts,
                            [IntervalBound(lower, upper)], rounding=rounding)
    out_lower = [v.lower if isinstance(v, IntervalBound) else jnp.asarray(v)
                 for v in outvals]
    out_upper = [v.upper if isinstance(v, IntervalBound) else jnp.asarray(v)
                 for v in outvals]
    treedef = jax.tree.structure(out_shape)
    return (jax.tree.unflatten(treedef, out_lower),
            jax.tree.unflatten(treedef, out_upper))

  return bounded


def _one_ulp_towards(value, direction):
  """`nextafter(value, direction)`, differentiable as the identity (nextafter has no JVP)."""
  constant = lax.stop_gradient(value)
  return value + (jnp.nextafter(constant, jnp.asarray(direction, value.dtype)) - constant)


def eps_rounded_up(eps, dtype):
  """`eps` in `dtype`, rounded up where the conversion rounds it down.

  A Python float or NumPy eps is converted in NumPy from its own (float64) value; a JAX array
  of a wider type than `dtype` (float64 eps, float32 images) is stepped up with the same
  gradient-transparent step as the box's ends. Either way `eps_in_dtype >= eps` exactly
  (float32(0.01) is below 0.01: pass the radius to `input_box` as given, or through this).
  """
  dtype = jnp.dtype(dtype)
  if isinstance(eps, jax.Array):
    if (not jnp.issubdtype(eps.dtype, jnp.floating)
        or jnp.finfo(eps.dtype).bits <= jnp.finfo(dtype).bits):
      return eps.astype(dtype)
    rounded = eps.astype(dtype)
    return jnp.where(rounded.astype(eps.dtype) < eps, _one_ulp_towards(rounded, jnp.inf), rounded)
  exact = np.asarray(eps, np.float64)
  rounded = exact.astype(dtype)
  rounded = np.where(rounded.astype(np.float64) < exact,
                     np.nextafter(rounded, np.asarray(np.inf, dtype)), rounded)
  return jnp.asarray(rounded, dtype)


def input_box(x, eps, *, clip: tuple[float, float] | None = (0., 1.)):
  """The L-infinity box of radius `eps` around `x`, clipped to the pixel range.

  Returns `(max(x - eps, clip[0]), min(x + eps, clip[1]))`: the set
  `{x + delta : ||delta||_inf <= eps, x + delta in X}` of Kakizaki et al. Sec. 3.2.1
  with `X = [0, 1]^d`. The box is in `x`'s floating dtype (float32 for integer images) and
  contains the real box around `x`'s value for the real `eps` as given: a Python-float eps is
  rounded up to that dtype (never down), and where `eps > 0` the ends are rounded outwards (one
  ulp past the round-to-nearest `x - eps` and `x + eps`, which may land inside the real box);
  `eps = 0` gives `[x, x]`.

  Args:
    x: images (any shape), values in `[clip[0], clip[1]]`.
    eps: perturbation radius, a scalar or an array broadcastable to `x`
      (e.g. shape (N, 1, 1, 1) for one radius per image); must be >= 0.
    clip: valid input range, or None for no clipping and no range check.

  Returns:
    `(lower, upper)` arrays of the shape of `x`, differentiable in `x` and `eps` (as `x -+ eps`).

  Raises:
    ValueError: if `eps < 0` or `x` lies outside `clip`. These checks need
      concrete values; under `jit`/`vmap` (traced `x` or `eps`) they are
      skipped, so validate data before entering `jit`.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  if is_concrete(eps) and not np.all(np.asarray(eps) >= 0):
    raise ValueError(
        f'eps must be >= 0 (and not NaN), got {np.asarray(eps).min()}.')
  eps = eps_rounded_up(eps, x.dtype)
  lower = jnp.where(eps > 0, _one_ulp_towards(x - eps, -jnp.inf), x - eps)  # x - 0 is exact
  upper = jnp.where(eps > 0, _one_ulp_towards(x + eps, jnp.inf), x + eps)
  if clip is None:
    return lower, upper
  clip_min, clip_max = clip
  if is_concrete(x) and x.size:
    x_np = np.asarray(x)
    if not (x_np.min() >= clip_min and x_np.max() <= clip_max):
      raise ValueError(
          f'Inputs must lie in [{clip_min}, {clip_max}], found values in '
          f'[{x_np.min()}, {x_np.max()}]. Scale images to [0, 1] (the models '
          'normalise internally), or pass clip=None for an unclipped box.')
  return jnp.maximum(lower, clip_min), jnp.minimum(upper, clip_max)
