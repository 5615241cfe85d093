"""Benchmark: interval bound propagation and certified-retrieval verification (Kakizaki et al.).

1. For each encoder, times `jax.jit` of `interval(embed)` (Kakizaki et al. Eqs. 15-16 through the whole
   network) and of `embed` on the same batch, called alternately, and prints the ratio of the
   medians (goal: at most 2.5x), the median of the per-call ratios ("paired") and that of the
   process CPU times ("cpu", the steadiest on a shared machine). Parameters are jit arguments,
   not constants, as in training and certification. The load average is printed before and after.
2. For a query x candidate grid (default 1000 x 1000, d = 128, K = 40), times the QA + CA
   verification (`jaxcert.bounds.retrieval.rank_bounds`: both attacks' rank bounds of every
   query's top K, Theorems 1-2) over the time of the grid's distance matrix
   (`jaxcert.retrieval.pairwise_distances`), both jitted, on random embeddings and boxes.

Both in each dtype of `--dtypes`: float32 (rounded to nearest), float32_rigorous (outward-rounded
bounds of the real-valued encoder, `rounding='outward'`, docs/rigorous_float32.md; certify.py's
float32 and its default on GPU/TPU) and float64 (under `jax.enable_x64`, weights and embeddings
cast; certify.py's default on CPU, docs/bounds.md §10). The baselines (forward pass, distance
matrix) stay float32, so the other rows say what certifying in them costs against the model as
deployed.

  python bench/ibp.py
  python bench/ibp.py --models small_cnn --batch_size 64 --repeats 5 --grid 1000x1000 --dtypes float32
"""

import argparse
import contextlib
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ''):  # Run as `python bench/ibp.py`: import `bench` from the repo root.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import common  # pylint: disable=wrong-import-position
from jaxcert import models  # pylint: disable=wrong-import-position
from jaxcert import retrieval  # pylint: disable=wrong-import-position
from jaxcert.bounds import input_box  # pylint: disable=wrong-import-position
from jaxcert.bounds import interval  # pylint: disable=wrong-import-position
from jaxcert.bounds import rank_bounds  # pylint: disable=wrong-import-position
from jaxcert.bounds.retrieval import cast_floating  # pylint: disable=wrong-import-position

# Encoder name -> (image shape (H, W, C), perturbation radius eps).
IMAGE_SETTINGS = {
    'linear': ((28, 28, 1), 0.1),
    'mlp': ((28, 28, 1), 0.1),
    'small_cnn': ((28, 28, 1), 0.1),
    'large_cnn': ((28, 28, 1), 0.1),
    'resnet18': ((32, 32, 3), 2 / 255),
    'resnet50': ((32, 32, 3), 2 / 255),
}
DEFAULT_BATCH_SIZES = {'resnet18': 64, 'resnet50': 64}


DTYPES = ('float32', 'float32_rigorous', 'float64')


@contextlib.contextmanager
def computing_in(dtype: str):
  """float64 enabled (`jax.enable_x64`) inside for 'float64'; nothing changes for the others."""
  with jax.enable_x64(True) if dtype == 'float64' else contextlib.nullcontext():
    yield


def _array_dtype(dtype: str) -> str:
  """The array dtype of a bench dtype ('float32_rigorous' computes in float32)."""
  return 'float64' if dtype == 'float64' else 'float32'


def _rounding(dtype: str) -> str:
  return 'outward' if dtype == 'float32_rigorous' else 'nearest'


def _paired_timings(first, second, repeats: int) -> dict:
  """Wall and process-CPU seconds of `first()` and `second()`, called alternately `repeats` times.

  After one compiling call of each. Alternating keeps both under the same load on a shared
  machine; `paired_ratio` is the median over the repeats of second / first, `cpu_ratio` that of
  the process CPU time (all threads; less sensitive to other jobs than wall time).
  """
  jax.block_until_ready(first())
  jax.block_until_ready(second())
  wall, cpu = {0: [], 1: []}, {0: [], 1: []}
  for _ in range(repeats):
    for index, fn in enumerate((first, second)):
      start_cpu, start = time.process_time(), time.perf_counter()
      jax.block_until_ready(fn())
      wall[index].append(time.perf_counter() - start)
      cpu[index].append(time.process_time() - start_cpu)
  return {'first_s': statistics.median(wall[0]), 'second_s': statistics.median(wall[1]),
          'paired_ratio': statistics.median(b / a for a, b in zip(wall[0], wall[1])),
          'cpu_ratio': statistics.median(b / a for a, b in zip(cpu[0], cpu[1]))}


def time_interval_over_forward(apply_fn, variables, images, eps, *,
                               repeats: int = 10, dtype: str = 'float32') -> dict:
  """Times jit(interval(embed)) in `dtype` and jit(embed) in float32 on one batch, alternately.

  Args:
    apply_fn: `(variables, x) -> embeddings`.
    variables: model variables (float32).
    images: (N, H, W, C) in [0, 1].
    eps: L-infinity radius of the boxes.
    repeats: timed calls of each (after one compiling call); the medians are kept.
    dtype: what the bounds are computed in, one of DTYPES.

  Returns:
    {'forward_s', 'interval_s', 'ratio' (of the medians), 'paired_ratio', 'cpu_ratio'
    (`_paired_timings`)}.
  """
  forward = jax.jit(apply_fn)
  with computing_in(dtype):
    bounded = jax.jit(lambda variables, lower, upper: interval(
        lambda x: apply_fn(variables, x), rounding=_rounding(dtype))(lower, upper))
    bound_variables = cast_floating(variables, _array_dtype(dtype))
    lower, upper = input_box(cast_floating(images, _array_dtype(dtype)), eps)

  def bounds():
    with computing_in(dtype):  # the forward pass stays outside, in float32 as deployed
      return bounded(bound_variables, lower, upper)

  timing = _paired_timings(lambda: forward(variables, images), bounds, repeats)
  return {'forward_s': timing['first_s'], 'interval_s': timing['second_s'],
          'ratio': timing['second_s'] / timing['first_s'], 'paired_ratio': timing['paired_ratio'],
          'cpu_ratio': timing['cpu_ratio']}


def time_verification_over_distances(num_queries: int, num_candidates: int, *, k: int,
                                     dim: int, block_size: int, candidate_block_size: int,
                                     repeats: int, seed: int = 0, dtype: str = 'float32') -> dict:
  """Times QA + CA `rank_bounds` in `dtype` and the float32 distance matrix on random boxes.

  Returns:
    {'k', 'distances_s', 'verify_s', 'ratio'}.
  """
  rng = np.random.default_rng(seed)

  def boxes(num):
    emb = rng.normal(size=(num, dim)).astype(np.float32)
    radius = rng.uniform(0, 0.05, (num, dim)).astype(np.float32)
    return tuple(jax.device_put(a) for a in (emb, emb - radius, emb + radius))

  query, candidate = boxes(num_queries), boxes(num_candidates)
  distances = jax.jit(retrieval.pairwise_distances)
  distances_s = common.median_seconds(lambda: distances(query[0], candidate[0]),
                                      repeats=repeats)
  with computing_in(dtype):
    query = cast_floating(query, _array_dtype(dtype))
    candidate = cast_floating(candidate, _array_dtype(dtype))
    verify_s = common.median_seconds(
        lambda: rank_bounds(*query, *candidate, k, block_size=block_size,
                            candidate_block_size=candidate_block_size,
                            rounding=_rounding(dtype)), repeats=repeats)
  return {'k': k, 'distances_s': distances_s, 'verify_s': verify_s, 'ratio': verify_s / distances_s}


def main(argv=None) -> dict:
  """Runs the benchmark; returns {'environment', 'interval', 'verification'} (float32) and, per
  other dtype in `--dtypes`, {'interval_<dtype>', 'verification_<dtype>'}."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='small_cnn,large_cnn,resnet18',
                      help=f'comma-separated names from {models.MODEL_NAMES}')
  parser.add_argument('--batch_size', type=int, default=256,
                      help='batch for 28x28 encoders (resnets: 64 unless '
                      '--resnet_batch_size)')
  parser.add_argument('--resnet_batch_size', type=int, default=None)
  parser.add_argument('--embedding_dim', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--grid', default='1000x1000',
                      help='comma-separated QxN verification grids ("" to skip)')
  parser.add_argument('--k', type=int, default=40, help='top-K verified per query')
  parser.add_argument('--block_size', type=int, default=250, help='queries per block')
  parser.add_argument('--candidate_block_size', type=int, default=250)
  parser.add_argument('--dtypes', default=','.join(DTYPES),
                      help=f'comma-separated dtypes of the bounds, from {DTYPES}')
  args = parser.parse_args(argv)

  names = common.parse_model_names(parser, args.models, IMAGE_SETTINGS)
  dtypes = [dtype for dtype in args.dtypes.split(',') if dtype]
  if not dtypes or any(dtype not in DTYPES for dtype in dtypes):
    parser.error(f'--dtypes must name some of {DTYPES}, got {args.dtypes!r}')
  env = common.environment()
  common.print_environment(env)
  print(f'load average {" ".join(f"{load:.1f}" for load in os.getloadavg())}')
  print(f'{"model":<12} {"batch":>5} {"dtype":>16} {"forward ms":>11} {"interval ms":>12} '
        f'{"ratio":>6} {"paired":>7} {"cpu":>6}   (forward pass in float32, timed alternately '
        'with the bounds)')
  results = {}
  for name in names:
    image_shape, eps = IMAGE_SETTINGS[name]
    batch_size = (args.resnet_batch_size or DEFAULT_BATCH_SIZES[name]
                  if name in DEFAULT_BATCH_SIZES else args.batch_size)
    model = models.get_model(name, embedding_dim=args.embedding_dim)
    variables = models.init_variables(model, jax.random.key(0),
                                      (1,) + image_shape)
    images = jnp.asarray(np.random.default_rng(0).uniform(
        size=(batch_size,) + image_shape), jnp.float32)
    for dtype in dtypes:
      timing = time_interval_over_forward(
          lambda variables, x, model=model: model.apply(variables, x),
          variables, images, eps, repeats=args.repeats, dtype=dtype)
      results.setdefault(_key('interval', dtype), {})[name] = {'batch_size': batch_size, **timing}
      print(f'{name:<12} {batch_size:>5} {dtype:>16} {1e3 * timing["forward_s"]:>11.2f} '
            f'{1e3 * timing["interval_s"]:>12.2f} {timing["ratio"]:>6.2f} '
            f'{timing["paired_ratio"]:>7.2f} {timing["cpu_ratio"]:>6.2f}', flush=True)
  grids = [cell for cell in args.grid.split(',') if cell]
  if grids:
    print(f'\nQA + CA verification, K = {args.k}, d = {args.embedding_dim}, blocks '
          f'{args.block_size} x {args.candidate_block_size}')
    print(f'{"grid":<12} {"dtype":>16} {"distances ms":>13} {"verify ms":>10} {"ratio":>7}   '
          '(distances in float32)')
  for cell in grids:
    num_queries, num_candidates = (int(n) for n in cell.lower().split('x'))
    for dtype in dtypes:
      timing = time_verification_over_distances(
          num_queries, num_candidates, k=args.k, dim=args.embedding_dim,
          block_size=args.block_size, candidate_block_size=args.candidate_block_size,
          repeats=args.repeats, dtype=dtype)
      results.setdefault(_key('verification', dtype), {})[cell] = timing
      print(f'{cell:<12} {dtype:>16} {1e3 * timing["distances_s"]:>13.2f} '
            f'{1e3 * timing["verify_s"]:>10.2f} {timing["ratio"]:>7.1f}', flush=True)
  print(f'load average {" ".join(f"{load:.1f}" for load in os.getloadavg())}')
  return {'environment': env, 'interval': {}, 'verification': {}, **results}


def _key(what: str, dtype: str) -> str:
  """'interval' / 'verification' for float32 (the keys bench/run.py reads), else '<what>_<dtype>'."""
  return what if dtype == 'float32' else f'{what}_{dtype}'


if __name__ == '__main__':
  main()
