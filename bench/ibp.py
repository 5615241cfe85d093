"""Benchmark: interval bound propagation against a plain forward pass.

For each encoder, times `jax.jit` of `interval(embed)` (seed 001 Eqs. 15-16
through the whole network) and of `embed` on the same batch, and prints the
ratio (goal: at most 2.5x). Parameters are jit arguments, not constants, as in
training and certification.

  python bench/ibp.py
  python bench/ibp.py --models small_cnn --batch_size 64 --repeats 5
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert import models
from jaxcert.bounds import input_box
from jaxcert.bounds import interval

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


def _median_seconds(fn, *args, repeats: int) -> float:
  """Median wall time of `fn(*args)` after one compiling call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_interval_over_forward(apply_fn, variables, images, eps, *,
                               repeats: int = 10) -> dict:
  """Times jit(interval(embed)) and jit(embed) on one batch.

  Args:
    apply_fn: `(variables, x) -> embeddings`.
    variables: model variables.
    images: (N, H, W, C) in [0, 1].
    eps: L-infinity radius of the boxes.
    repeats: timed calls (after one compiling call); the median is kept.

  Returns:
    {'forward_s', 'interval_s', 'ratio'}.
  """
  forward = jax.jit(apply_fn)
  bounded = jax.jit(lambda variables, lower, upper: interval(
      lambda x: apply_fn(variables, x))(lower, upper))
  lower, upper = input_box(images, eps)
  forward_s = _median_seconds(forward, variables, images, repeats=repeats)
  interval_s = _median_seconds(bounded, variables, lower, upper,
                               repeats=repeats)
  return {'forward_s': forward_s, 'interval_s': interval_s,
          'ratio': interval_s / forward_s}


def main(argv=None) -> dict:
  """Runs the benchmark; returns {'xla_flags', 'device', 'results'}."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='small_cnn,large_cnn,resnet18',
                      help=f'comma-separated names from {models.MODEL_NAMES}')
  parser.add_argument('--batch_size', type=int, default=256,
                      help='batch for 28x28 encoders (resnets: 64 unless '
                      '--resnet_batch_size)')
  parser.add_argument('--resnet_batch_size', type=int, default=None)
  parser.add_argument('--embedding_dim', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args(argv)

  names = [name for name in args.models.split(',') if name]
  unknown = [name for name in names if name not in IMAGE_SETTINGS]
  if unknown:
    parser.error(f'unknown models {unknown}; valid: {sorted(IMAGE_SETTINGS)}')
  xla_flags = os.environ.get('XLA_FLAGS', '')
  device = str(jax.devices()[0])
  print(f'device: {device}   XLA_FLAGS={xla_flags!r}')
  print(f'{"model":<12} {"batch":>5} {"forward ms":>11} {"interval ms":>12} '
        f'{"ratio":>6}')
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
    timing = time_interval_over_forward(
        lambda variables, x, model=model: model.apply(variables, x),
        variables, images, eps, repeats=args.repeats)
    results[name] = {'batch_size': batch_size, **timing}
    print(f'{name:<12} {batch_size:>5} {1e3 * timing["forward_s"]:>11.2f} '
          f'{1e3 * timing["interval_s"]:>12.2f} {timing["ratio"]:>6.2f}',
          flush=True)
  return {'xla_flags': xla_flags, 'device': device, 'results': results}


if __name__ == '__main__':
  main()
