"""Measures the float32 error of XLA's elementwise functions on this backend, in ulps.

For each function of `jaxcert.bounds.rounding.ELEMENTWISE_ULPS` with a float64 reference, evaluates
the jitted float32 function on dense samples (random bit patterns over the whole float32 range,
subnormals included; uniform grids over the range where the function varies; runs of consecutive
floats near overflow, near 0 and near the function's steep parts) and prints, per function:

* max error in ulps of the exact value, |fl(f(x)) - f(x)| / ulp(f(x)) over samples where f(x) is a
  normal float32 (the reference is the float64 function, itself within ~1e-16 relative);
* the largest absolute error where f(x) is below the normal range (subnormal or flushed results),
  in units of the smallest normal float32 (`jaxcert.bounds.rounding` adds such a term);
* the largest monotonicity violation: over runs of consecutive float32 inputs, how many ulps the
  computed value drops while the exact function rises (or the reverse, for decreasing functions);
* the bound `jaxcert.bounds.rounding` uses, and whether it covers the measurement.

docs/rigorous_float32.md gives the table this printed on our CPU.

  PYTHONPATH=. python scripts/measure_ulp_errors.py --samples 4000000
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from jaxcert.bounds import rounding

# Primitive name -> (jnp function, float64 reference, domain (low, high), increasing?).
REFERENCES = {
    'exp': (jnp.exp, np.exp, (-104., 89.), True),
    'exp2': (jnp.exp2, np.exp2, (-150., 128.5), True),
    'expm1': (jnp.expm1, np.expm1, (-104., 89.), True),
    'log': (jnp.log, np.log, (0., np.inf), True),
    'log1p': (jnp.log1p, np.log1p, (-1., np.inf), True),
    'tanh': (jnp.tanh, np.tanh, (-np.inf, np.inf), True),
    'logistic': (jax.nn.sigmoid, scipy.special.expit, (-np.inf, np.inf), True),
    'erf': (jax.scipy.special.erf, scipy.special.erf, (-np.inf, np.inf), True),
    'atan': (jnp.arctan, np.arctan, (-np.inf, np.inf), True),
    'asinh': (jnp.arcsinh, np.arcsinh, (-np.inf, np.inf), True),
    'sinh': (jnp.sinh, np.sinh, (-90., 90.), True),
    'cbrt': (jnp.cbrt, np.cbrt, (-np.inf, np.inf), True),
    'rsqrt': (jax.lax.rsqrt, lambda x: 1 / np.sqrt(x), (0., np.inf), False),
    'sqrt': (jnp.sqrt, np.sqrt, (0., np.inf), True),
}


def ulp_of(values: np.ndarray) -> np.ndarray:
  """ulp (float32) of float64 values: the spacing of float32 numbers at |value|."""
  magnitude = np.abs(values).astype(np.float32)
  return (np.nextafter(magnitude, np.float32(np.inf)) - magnitude).astype(np.float64)


def samples(low: float, high: float, count: int, rng: np.random.Generator) -> np.ndarray:
  """float32 samples of [low, high]: random bit patterns, uniform grids, consecutive runs."""
  bits = rng.integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32).view(np.float32)
  finite_low = max(low, -3.4e38)
  finite_high = min(high, 3.4e38)
  grid_high = min(finite_high, 30.)
  grid_low = max(finite_low, -30.)
  uniform = rng.uniform(grid_low, grid_high, count).astype(np.float32)
  runs = []
  for start in (finite_low, finite_high, 0., 1., -1., 0.5, 3., -3., 8., 20.):
    if finite_low <= start <= finite_high:
      run = [np.float32(start)]
      for _ in range(2000):
        run.append(np.nextafter(run[-1], np.float32(np.inf)))
      runs.append(np.array(run, np.float32))
  everything = np.concatenate([bits, uniform, *runs])
  # Subnormal inputs are excluded: XLA:CPU reads them as 0 (denormals-are-zero), and the rigorous
  # rules never pass them on (`rounding.round_up` / `round_down`, `rounding.flush_outwards`).
  normal_or_zero = (np.abs(everything) >= np.finfo(np.float32).tiny) | (everything == 0)
  return everything[np.isfinite(everything) & normal_or_zero & (everything >= low)
                    & (everything <= high)]


def monotonicity_violation(fn, low: float, high: float, increasing: bool) -> float:
  """Largest drop (in ulps) of fl(f) along runs of consecutive float32 inputs."""
  worst = 0.
  starts = np.linspace(max(low, -20.), min(high, 20.), 400)
  for start in starts:
    run = np.float32(start) + np.arange(4096, dtype=np.float32) * np.spacing(np.float32(start))
    run = np.unique(run[(run >= low) & (run <= high)])
    values = np.asarray(fn(jnp.asarray(run)), np.float64)
    steps = np.diff(values) if increasing else -np.diff(values)
    with np.errstate(invalid='ignore'):
      ulps = np.nan_to_num(-steps / ulp_of(values[1:]))
    worst = max(worst, float(np.max(ulps, initial=0.)))
  return worst


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--samples', type=int, default=1_000_000)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  tiny = float(np.finfo(np.float32).tiny)
  print(f'backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}')
  print('| primitive | max error (ulps) | at x | max error below normal range (smallest normals) '
        '| monotonicity violation (ulps) | bound used (ulps) | covered |')
  print('|---|---|---|---|---|---|---|')
  for name, (fn, reference, (low, high), increasing) in REFERENCES.items():
    jitted = jax.jit(fn)
    x = samples(low, high, args.samples, rng)
    computed = np.asarray(jitted(jnp.asarray(x)), np.float64)
    with np.errstate(divide='ignore', invalid='ignore'):
      exact = reference(x.astype(np.float64))
    finite = np.isfinite(exact) & (np.abs(exact) <= float(np.finfo(np.float32).max))
    normal = finite & (np.abs(exact) >= tiny)
    error = np.abs(computed - exact)
    ulps = error[normal] / ulp_of(exact[normal])
    max_ulps = float(np.max(ulps, initial=0.))
    worst_input = float(x[normal][np.argmax(ulps)]) if ulps.size else float('nan')
    below = finite & ~normal
    max_below = float(np.max(error[below] / tiny, initial=0.))
    violation = monotonicity_violation(jitted, low, high, increasing)
    bound = rounding.ELEMENTWISE_ULPS.get(name)
    covered = bound is not None and max_ulps <= bound and max_below <= bound
    print(f'| {name} | {max_ulps:.2f} | {worst_input:.8g} | {max_below:.2g} | {violation:.0f} | {bound} | '
          f'{"yes" if covered else "NO"} |')


if __name__ == '__main__':
  main()
