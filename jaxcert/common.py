"""Small pieces several modules share: a square root safe at 0, float32's unit roundoff, and checks
of arguments (a name among its valid choices, a positive integer).

This module imports nothing of jaxcert, so any module can use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

# Unit roundoff of float32 (round to nearest): u = 2^-24 (Higham 2002, Sec. 2.1).
FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24


def safe_sqrt(squared: jax.Array) -> jax.Array:
  """sqrt(max(squared, 0)) with value and gradient 0 where squared <= 0 (no inf * 0 = NaN)."""
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def check_choice(name: str, value, valid: Sequence[str]) -> None:
  """Raises ValueError, listing the valid choices, unless `value` is one of `valid`."""
  if value not in valid:
    raise ValueError(f'{name}={value!r} is not one of {tuple(valid)}.')


def check_positive_int(name: str, value) -> int:
  """`value` as an int; ValueError unless it is an integer >= 1 (booleans are not)."""
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f'{name} must be an integer >= 1, got {value!r}.')
  return int(value)
