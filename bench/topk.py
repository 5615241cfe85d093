"""Benchmark: blocked top-k retrieval (`jaxcert.retrieval.blocked_topk`) against a forward pass.

For each query x gallery grid, times `blocked_topk` on random embeddings and
prints the time per query and the ratio of the whole top-k to a forward pass of
the small_cnn encoder over as many 28x28 images as there are queries (timed in
the same run, in batches of `--forward_batch`), i.e. how much retrieval adds to
embedding the queries.

  python bench/topk.py
  python bench/topk.py --grid 1000x1000,60000x60000 --k 40 --block_size 4096 \
      --gallery_block_size 512
"""

import argparse
import pathlib
import sys

import jax
import numpy as np

if __package__ in (None, ''):  # Run as `python bench/topk.py`: import `bench` from the repo root.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import common  # pylint: disable=wrong-import-position
from jaxcert import models  # pylint: disable=wrong-import-position
from jaxcert import retrieval  # pylint: disable=wrong-import-position

IMAGE_SHAPE = (28, 28, 1)


def _parse_grid(text: str) -> list[tuple[int, int]]:
  grid = []
  for cell in text.split(','):
    try:
      num_query, num_gallery = (int(n) for n in cell.lower().split('x'))
    except ValueError:
      raise ValueError(f'grid cells are QxG, e.g. 1000x1000, got {cell!r}') from None
    grid.append((num_query, num_gallery))
  return grid


def time_blocked_topk(num_query: int, num_gallery: int, *, k: int, dim: int, block_size: int,
                      gallery_block_size: int | None, repeats: int, seed: int = 0) -> float:
  """Median seconds of `blocked_topk` on (num_query, dim) x (num_gallery, dim) random embeddings."""
  rng = np.random.default_rng(seed)
  query = jax.device_put(rng.normal(size=(num_query, dim)).astype(np.float32))
  gallery = jax.device_put(rng.normal(size=(num_gallery, dim)).astype(np.float32))
  return common.median_seconds(
      lambda: retrieval.blocked_topk(query, gallery, k, block_size=block_size,
                                     gallery_block_size=gallery_block_size),
      repeats=repeats)


def main(argv=None) -> dict:
  """Runs the benchmark; returns {'environment', 'model', 'k', 'dim', 'block_size',
  'gallery_block_size', 'results'}."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--grid', default='1000x1000,10000x10000',
                      help='comma-separated QxG sizes (queries x gallery items)')
  parser.add_argument('--k', type=int, default=40)
  parser.add_argument('--dim', type=int, default=128, help='embedding dimension')
  parser.add_argument('--block_size', type=int, default=retrieval.DEFAULT_BLOCK_SIZE,
                      help='query rows per block')
  parser.add_argument('--gallery_block_size', type=int, default=None,
                      help='gallery columns per block (default: --block_size)')
  parser.add_argument('--model', default='small_cnn', help=f'one of {models.MODEL_NAMES}')
  parser.add_argument('--forward_batch', type=int, default=1000,
                      help='images per timed forward pass of the baseline')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  try:
    grid = _parse_grid(args.grid)
  except ValueError as error:
    parser.error(str(error))
  if args.model not in models.MODEL_NAMES:
    parser.error(f'unknown model {args.model!r}; valid: {models.MODEL_NAMES}')

  env = common.environment()
  common.print_environment(env)
  print(f'k={args.k}  embedding {args.dim}  block_size {args.block_size}  '
        f'gallery_block_size {args.gallery_block_size or args.block_size}  '
        f'baseline: {args.model} forward on {IMAGE_SHAPE} images, batches of {args.forward_batch}')
  print(f'{"queries":>8} {"gallery":>8} {"top-k ms":>9} {"us/query":>9} {"forward ms":>10} '
        f'{"ratio":>6}')
  forward_per_image = {}
  results = []
  for num_query, num_gallery in grid:
    batch = min(num_query, args.forward_batch)
    if batch not in forward_per_image:
      forward_per_image[batch] = common.forward_baseline(
          args.model, batch, IMAGE_SHAPE, embedding_dim=args.dim, repeats=args.repeats) / batch
    topk_s = time_blocked_topk(num_query, num_gallery, k=args.k, dim=args.dim,
                               block_size=args.block_size,
                               gallery_block_size=args.gallery_block_size, repeats=args.repeats)
    forward_s = forward_per_image[batch] * num_query
    result = {'num_query': num_query, 'num_gallery': num_gallery, 'topk_s': topk_s,
              'topk_s_per_query': topk_s / num_query, 'forward_s': forward_s,
              'forward_batch': batch, 'ratio_topk_to_forward': topk_s / forward_s}
    results.append(result)
    print(f'{num_query:>8} {num_gallery:>8} {1e3 * topk_s:>9.1f} '
          f'{1e6 * result["topk_s_per_query"]:>9.2f} {1e3 * forward_s:>10.1f} '
          f'{result["ratio_topk_to_forward"]:>6.2f}', flush=True)
  return {'environment': env, 'model': args.model, 'k': args.k, 'dim': args.dim,
          'block_size': args.block_size,
          'gallery_block_size': args.gallery_block_size or args.block_size, 'results': results}


if __name__ == '__main__':
  main()
