"""Benchmark: Monte-Carlo smoothing samples/s over plain forward images/s, memory, s per image.

For each encoder (L2-normalised and wrapped in `bounded_embedding`, as certify.py runs it; the
paper's F = 1 setting), on the same batch:
(a) a jitted plain forward pass on batch_size * chunk_size images (images/s), and
(b) `jaxcert.smoothing.smooth` on batch_size inputs with n = num_chunks * chunk_size samples, which
    embeds batch_size * chunk_size noisy copies per scan step (samples/s).
Prints (samples/s) / (images/s) against the goal of 0.9, the compiled temporary memory of the
smoother as n grows 10^3 -> 10^5 (it should stay flat: the chunks are accumulated by `lax.scan`),
and the seconds per image at n = 100,000 (the paper's setting; RetrievalGuard reports about 3 minutes per
image for ResNet-50 on a P40): from the rate at the timed n, which the output says; with
--check_linearity the smoother is timed again at 4x the scan steps, and the two rates show whether
the cost is linear in n (so the extrapolation holds).

  python bench/smoothing.py
  python bench/smoothing.py --models large_cnn --batch_size 4 --chunk_size 128
  python bench/smoothing.py --models resnet50 --image_size 224 --channels 3 --batch_size 1 \
      --chunk_size 256     # on a GPU
"""

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ''):  # Run as `python bench/smoothing.py`: import `bench` from the repo.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import common  # pylint: disable=wrong-import-position
from jaxcert import models  # pylint: disable=wrong-import-position
from jaxcert import smoothing  # pylint: disable=wrong-import-position

GOAL = 0.9
SIGMA = 0.25
PAPER_NUM_SAMPLES = smoothing.PAPER_NUM_SAMPLES


def _interleaved_median_seconds(functions: dict, *, repeats: int) -> dict:
  """Median wall time of each `fn()` after one compiling call, timed in alternation (load drift
  on a shared machine then hits every function alike)."""
  for fn in functions.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in functions}
  for _ in range(repeats):
    for name, fn in functions.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def time_smoothing_over_forward(embed, images, *, chunk_size: int, num_chunks: int,
                                repeats: int) -> dict:
  """Times a plain forward pass on batch * chunk_size images and the smoother on `images`.

  Args:
    embed: encoder as a `jax.tree_util.Partial`.
    images: (batch, H, W, C) in [0, 1].
    chunk_size: Monte-Carlo samples per scan step.
    num_chunks: scan steps per timed smoothing call (n = num_chunks * chunk_size).
    repeats: timed calls of each function (the median is kept).

  Returns:
    {'forward_images_per_s', 'smoothing_samples_per_s', 'ratio', 'num_samples',
     'smoothing_call_s'}.
  """
  batch = images.shape[0]
  num_samples = num_chunks * chunk_size
  flat = jnp.tile(images, (chunk_size, 1, 1, 1))
  forward = jax.jit(lambda embed, x: embed(x))
  smoother = smoothing.smooth(embed, sigma=SIGMA, num_samples=num_samples, chunk_size=chunk_size)
  key = jax.random.key(0)
  seconds = _interleaved_median_seconds(
      {'forward': lambda: forward(embed, flat), 'smooth': lambda: smoother(key, images).mean},
      repeats=repeats)
  forward_rate = flat.shape[0] / seconds['forward']
  smoothing_rate = batch * num_samples / seconds['smooth']
  return {'forward_images_per_s': forward_rate, 'smoothing_samples_per_s': smoothing_rate,
          'ratio': smoothing_rate / forward_rate, 'num_samples': num_samples,
          'smoothing_call_s': seconds['smooth']}


def temp_memory_bytes(embed, images, *, chunk_size: int, sample_counts) -> dict:
  """Compiled temporary memory of the smoother for each n (None if the backend does not say)."""
  result = {}
  for num_samples in sample_counts:
    smoother = smoothing.smooth(embed, sigma=SIGMA, num_samples=num_samples,
                                chunk_size=chunk_size)
    analysis = smoother.lower(jax.random.key(0), images).compile().memory_analysis()
    result[num_samples] = None if analysis is None else int(analysis.temp_size_in_bytes)
  return result


def main(argv=None) -> dict:
  """Runs the benchmark; returns {'environment', 'xla_flags', 'device', 'image_shape', 'results'}."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='small_cnn,large_cnn',
                      help=f'comma-separated names from {models.MODEL_NAMES}')
  parser.add_argument('--image_size', type=int, default=28)
  parser.add_argument('--channels', type=int, default=1)
  parser.add_argument('--embedding_dim', type=int, default=128)
  parser.add_argument('--batch_size', type=int, default=8, help='inputs smoothed per call')
  parser.add_argument('--chunk_size', type=int, default=64, help='samples per scan step')
  parser.add_argument('--num_chunks', type=int, default=4, help='scan steps per timed call')
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--memory_samples', default='1000,10000,100000',
                      help='comma-separated n whose compiled temp memory is compared')
  parser.add_argument('--check_linearity', action='store_true',
                      help='also time 4 x num_chunks scan steps (is the cost linear in n?)')
  args = parser.parse_args(argv)

  names = common.parse_model_names(parser, args.models, models.MODEL_NAMES)
  sample_counts = [int(n) for n in args.memory_samples.split(',') if n]
  image_shape = (args.image_size, args.image_size, args.channels)
  env = common.environment()
  common.print_environment(env)
  print(f'image {image_shape}   sigma {SIGMA}   batch {args.batch_size} x chunk '
        f'{args.chunk_size} = {args.batch_size * args.chunk_size} images per step')
  rng = np.random.default_rng(0)
  results = {}
  for name in names:
    model = models.get_model(name, embedding_dim=args.embedding_dim, l2_normalize=True)
    variables = models.init_variables(model, jax.random.key(0), (1,) + image_shape)
    embed = smoothing.bounded_embedding(jax.tree_util.Partial(model.apply, variables))
    images = jnp.asarray(rng.uniform(size=(args.batch_size,) + image_shape), jnp.float32)
    timing = time_smoothing_over_forward(embed, images, chunk_size=args.chunk_size,
                                         num_chunks=args.num_chunks, repeats=args.repeats)
    memory = temp_memory_bytes(embed, images, chunk_size=args.chunk_size,
                               sample_counts=sample_counts)
    known = [m for m in memory.values() if m is not None]
    memory_flat = bool(known) and max(known) == min(known)
    seconds_per_image = PAPER_NUM_SAMPLES / timing['smoothing_samples_per_s']
    results[name] = {
        'batch_size': args.batch_size, 'chunk_size': args.chunk_size, **timing,
        'meets_goal': timing['ratio'] >= GOAL, 'temp_bytes': memory, 'memory_flat': memory_flat,
        'seconds_per_image_at_100k': seconds_per_image,
        'seconds_per_image_extrapolated_from_n': timing['num_samples'],
    }
    print(f'{name}: forward {timing["forward_images_per_s"]:.0f} images/s, smoothing '
          f'{timing["smoothing_samples_per_s"]:.0f} samples/s, ratio {timing["ratio"]:.2f} '
          f'(goal >= {GOAL}: {"ok" if timing["ratio"] >= GOAL else "BELOW GOAL"})', flush=True)
    print('  temp memory by n: ' + ', '.join(
        f'{n}: {"?" if m is None else f"{m / 2**20:.2f} MiB"}' for n, m in memory.items())
          + f'  ({"flat" if memory_flat else "NOT FLAT"})')
    if args.check_linearity:
      longer = time_smoothing_over_forward(embed, images, chunk_size=args.chunk_size,
                                           num_chunks=4 * args.num_chunks, repeats=args.repeats)
      results[name]['samples_per_s_at_4x_n'] = longer['smoothing_samples_per_s']
      print(f'  n = {longer["num_samples"]}: {longer["smoothing_samples_per_s"]:.0f} samples/s '
            f'({longer["smoothing_samples_per_s"] / timing["smoothing_samples_per_s"]:.2f} x the '
            f'rate at n = {timing["num_samples"]})', flush=True)
    print(f'  n = {PAPER_NUM_SAMPLES}: {seconds_per_image:.3g} s per image (extrapolated '
          f'linearly from n = {timing["num_samples"]} x {args.batch_size} inputs in '
          f'{timing["smoothing_call_s"]:.3f} s)', flush=True)
  return {'environment': env, 'xla_flags': env['xla_flags'], 'device': env['devices'][0],
          'image_shape': image_shape, 'results': results}


if __name__ == '__main__':
  main()
