"""Benchmark: CROWN-family linear bounds (`jaxcert.bounds.linear`) against a forward pass and IBP.

1. Cost (default): for each encoder, times `jax.jit` of `linear_bounds(embed, method)` for the
   methods 'crown_ibp' and 'crown', of `interval(embed)` and of `embed` on the same batch of
   random-weight encoders (weights as jit arguments), and prints each per image and as a multiple
   of the forward pass measured in the same run.
2. Certification (`--checkpoint`): on a trained checkpoint, the embedding boxes of the query and
   candidate sets (`config.eval`) at each `--eps` by IBP and by each method (intersected with IBP),
   their median radius, the time, and Kakizaki et al.'s CR-Recall@K under QA and CA
   (`jaxcert.bounds.retrieval.rank_bounds`, Theorems 1-2, Eq. 25), computed in float64.

  python bench/crown.py
  python bench/crown.py --models small_cnn --batch_size 32 --repeats 3 --dtype float32
  python bench/crown.py --config configs/quickstart.py --checkpoint runs/quickstart --eps 0.002
  python bench/crown.py --config configs/quickstart.py --checkpoint runs/quickstart --eps 0.002 \
      --methods crown --qa_only 100
  python bench/crown.py --config configs/quickstart.py --checkpoint runs/quickstart --eps 0.002 \
      --cost --dense --dtype float64 --batch_size 8

`--cost` with `--checkpoint` times the methods (1.) on the checkpoint's first `--batch_size`
queries at the first `--eps` instead of certifying; `--dense` adds 'crown (dense)', CROWN without
the patches pass of its convolutions' intermediate bounds (`linear_bounds(..., patches=False)`).
"""

import argparse
import contextlib
import importlib
import inspect
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ''):  # Run as `python bench/crown.py`: import `bench` from the repo root.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import common  # pylint: disable=wrong-import-position
from jaxcert import checkpointing  # pylint: disable=wrong-import-position
from jaxcert import data  # pylint: disable=wrong-import-position
from jaxcert import models  # pylint: disable=wrong-import-position
from jaxcert.bounds import input_box  # pylint: disable=wrong-import-position
from jaxcert.bounds import interval  # pylint: disable=wrong-import-position
from jaxcert.bounds import retrieval as certified_retrieval  # pylint: disable=wrong-import-position
from jaxcert.bounds.linear import linear_bounds  # pylint: disable=wrong-import-position
from jaxcert.bounds.linear import METHODS  # pylint: disable=wrong-import-position

# Encoder name -> (image shape (H, W, C), perturbation radius eps).
IMAGE_SETTINGS = {
    'mlp': ((28, 28, 1), 0.01),
    'small_cnn': ((28, 28, 1), 0.01),
    'large_cnn': ((28, 28, 1), 0.01),
}
DTYPES = ('float32', 'float64')
KS = (1, 10, 20, 40)
DENSE_CROWN = 'crown (dense)'


@contextlib.contextmanager
def computing_in(dtype: str):
  """float64 enabled (`jax.enable_x64`) inside for 'float64'; nothing changes for 'float32'."""
  with jax.enable_x64(True) if dtype == 'float64' else contextlib.nullcontext():
    yield


def bound_function(apply_fn, method: str, row_chunk: int):
  """`(variables, lower, upper) -> (out_lower, out_upper)`, jitted, by IBP or `method` (or
  'crown (dense)': CROWN without patches)."""
  def bounded(variables, lower, upper):
    embed = lambda x: apply_fn(variables, x)
    if method == 'ibp':
      return interval(embed)(lower, upper)
    if method == DENSE_CROWN:
      return linear_bounds(embed, 'crown', row_chunk=row_chunk, patches=False)(lower, upper)
    return linear_bounds(embed, method, row_chunk=row_chunk)(lower, upper)
  return jax.jit(bounded)


def time_methods(apply_fn, variables, images, eps, *, methods, repeats: int, dtype: str,
                 row_chunk: int) -> dict:
  """Median seconds of the float32 forward pass and of each bound method in `dtype`."""
  forward = jax.jit(apply_fn)
  timings = {'forward': common.median_seconds(lambda: forward(variables, images),
                                              repeats=repeats)}
  with computing_in(dtype):
    bound_variables = certified_retrieval.cast_floating(variables, dtype)
    lower, upper = input_box(certified_retrieval.cast_floating(images, dtype), eps)
    for method in ('ibp', *methods):
      bounded = bound_function(apply_fn, method, row_chunk)
      timings[method] = common.median_seconds(
          lambda bounded=bounded: bounded(bound_variables, lower, upper), repeats=repeats)
  return timings


def cost_main(args, parser) -> dict:
  names = common.parse_model_names(parser, args.models, IMAGE_SETTINGS)
  methods = _methods(parser, args.methods)
  methods += [DENSE_CROWN] if args.dense else []
  print(f'{"model":<10} {"batch":>5} {"dtype":>8} {"method":>13} {"ms / image":>11} '
        f'{"x forward":>10}   (forward pass in float32, same run)')
  results = {}
  for name in names:
    if args.checkpoint:  # The checkpoint's encoder on its first queries.
      model, variables, images, eps = _checkpoint_queries(args)
    else:
      image_shape, eps = IMAGE_SETTINGS[name]
      model = models.get_model(name, embedding_dim=args.embedding_dim)
      variables = models.init_variables(model, jax.random.key(0), (1,) + image_shape)
      images = jnp.asarray(np.random.default_rng(0).uniform(
          size=(args.batch_size,) + image_shape), jnp.float32)
    timings = time_methods(model.apply, variables, images, eps, methods=methods,
                           repeats=args.repeats, dtype=args.dtype, row_chunk=args.row_chunk)
    results[name] = timings
    for method, seconds in timings.items():
      print(f'{name:<10} {args.batch_size:>5} {args.dtype:>8} {method:>13} '
            f'{1e3 * seconds / args.batch_size:>11.3f} {seconds / timings["forward"]:>10.1f}',
            flush=True)
  return {'cost': results}


def _checkpoint_queries(args):
  """(model, variables, the first `--batch_size` query images, the first `--eps`)."""
  config = importlib.import_module(
      str(pathlib.Path(args.config).with_suffix('')).replace('/', '.')).get_config()
  model, variables, dataset, _ = checkpointing.load_trained(config, args.checkpoint)
  (query_images, _), _ = data.query_candidate_sets(config, dataset)
  return (model, variables, jnp.asarray(query_images[:args.batch_size], jnp.float32),
          args.eps[0])


def boxes(apply_fn, variables, images, eps, method, *, batch_size: int, dtype: str,
          row_chunk: int):
  """Embedding boxes of `images` at `eps` by `method` in `dtype`, batch by batch; (lower, upper,
  seconds)."""
  with computing_in(dtype):
    bounded = bound_function(apply_fn, method, row_chunk)
    bound_variables = certified_retrieval.cast_floating(variables, dtype)
    lowers, uppers = [], []
    start_time = time.perf_counter()
    for start in range(0, len(images), batch_size):
      batch = np.asarray(images[start:start + batch_size])
      padding = batch_size - len(batch)
      batch = np.concatenate([batch, np.repeat(batch[-1:], padding, 0)]) if padding else batch
      lower, upper = input_box(certified_retrieval.cast_floating(batch, dtype), eps)
      out_lower, out_upper = jax.block_until_ready(bounded(bound_variables, lower, upper))
      lowers.append(np.asarray(out_lower)[:batch_size - padding])
      uppers.append(np.asarray(out_upper)[:batch_size - padding])
    seconds = time.perf_counter() - start_time
  return np.concatenate(lowers), np.concatenate(uppers), seconds


def certify_main(args, parser) -> dict:
  """CR-Recall@K under QA and CA of the checkpoint's boxes by IBP and each method."""
  methods = _methods(parser, args.methods)
  config_module = importlib.import_module(
      str(pathlib.Path(args.config).with_suffix('')).replace('/', '.'))
  config = config_module.get_config()
  model, variables, dataset, _ = checkpointing.load_trained(config, args.checkpoint)
  (query_images, query_labels), (candidate_images, candidate_labels) = (
      data.query_candidate_sets(config, dataset))
  if args.limit:
    query_images, query_labels = query_images[:args.limit], query_labels[:args.limit]
    candidate_images, candidate_labels = (candidate_images[:args.limit],
                                          candidate_labels[:args.limit])
  if args.qa_only:  # QA needs the query boxes only: the candidates stay points (Theorem 1).
    query_images, query_labels = query_images[:args.qa_only], query_labels[:args.qa_only]
  with computing_in('float64'):
    variables64 = certified_retrieval.cast_floating(variables, 'float64')
    query_emb = np.asarray(model.apply(variables64, jnp.asarray(query_images, jnp.float64)))
    candidate_emb = np.asarray(model.apply(variables64, jnp.asarray(candidate_images,
                                                                    jnp.float64)))
  results = {}
  print(f'{len(query_images)} queries, {len(candidate_images)} candidates'
        f'{" (points: QA only)" if args.qa_only else ""}; boxes in '
        f'{args.dtype}, rank bounds in float64 (distance slack '
        f'{certified_retrieval.DEFAULT_DISTANCE_SLACK:g})')
  print(f'{"eps":>6} {"method":>10} {"seconds":>8} {"median r":>9} '
        + ' '.join(f'{"QA@" + str(k):>7}' for k in KS) + ' '
        + ' '.join(f'{"CA@" + str(k):>7}' for k in KS))
  for eps in args.eps:
    for method in ('ibp', *methods):
      query_lower, query_upper, query_s = boxes(
          model.apply, variables, query_images, eps, method, batch_size=args.batch_size,
          dtype=args.dtype, row_chunk=args.row_chunk)
      if args.qa_only:
        candidate_lower, candidate_upper, candidate_s = candidate_emb, candidate_emb, 0.
      else:
        candidate_lower, candidate_upper, candidate_s = boxes(
            model.apply, variables, candidate_images, eps, method, batch_size=args.batch_size,
            dtype=args.dtype, row_chunk=args.row_chunk)
      with computing_in('float64'):
        as64 = lambda a: np.asarray(a, np.float64)
        kakizaki = ({'qa_bound': 'kakizaki'} if 'qa_bound' in inspect.signature(
            certified_retrieval.rank_bounds).parameters else {})  # Theorem 1 where selectable
        bounds = certified_retrieval.rank_bounds(
            query_emb, as64(query_lower), as64(query_upper), candidate_emb,
            as64(candidate_lower), as64(candidate_upper), max(KS), **kakizaki)
        certified = certified_retrieval.certified_retrieval(bounds, query_labels,
                                                            candidate_labels, KS)
        cr_recall = certified_retrieval.cr_recall_at_k(certified, KS)
      radius = float(np.median(np.linalg.norm((as64(query_upper) - as64(query_lower)) / 2,
                                              axis=1)))
      seconds = query_s + candidate_s
      results[f'{eps}/{method}'] = {'seconds': seconds, 'median_radius': radius, **cr_recall}
      print(f'{eps:>6g} {method:>10} {seconds:>8.1f} {radius:>9.4g} '
            + ' '.join(f'{cr_recall["qa"][k]:>7.3f}' for k in KS) + ' '
            + ' '.join(f'{cr_recall["ca"][k]:>7.3f}' if not args.qa_only else f'{"-":>7}'
                       for k in KS), flush=True)
  return {'certify': results}


def _methods(parser, text: str) -> list[str]:
  methods = [method for method in text.split(',') if method]
  unknown = [method for method in methods if method not in METHODS]
  if unknown:
    parser.error(f'unknown methods {unknown}; valid: {list(METHODS)}')
  return methods


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='small_cnn',
                      help=f'cost: comma-separated names from {sorted(IMAGE_SETTINGS)}')
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--batch_size', type=int, default=16, help='images per bound call')
  parser.add_argument('--embedding_dim', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--row_chunk', type=int, default=256,
                      help='specification rows per backward pass (memory)')
  parser.add_argument('--dtype', default='float32', choices=DTYPES,
                      help='what the bounds are computed in')
  parser.add_argument('--config', default=None, help='certification: the training config')
  parser.add_argument('--checkpoint', default=None, help='certification: the training workdir')
  parser.add_argument('--eps', type=float, nargs='+', default=[0.002])
  parser.add_argument('--limit', type=int, default=0,
                      help='certification: only the first LIMIT queries and candidates (0: all)')
  parser.add_argument('--qa_only', type=int, default=0,
                      help='certification: QA only, on the first QA_ONLY queries against all '
                      'candidates (their boxes are not computed; CA is not reported)')
  parser.add_argument('--cost', action='store_true',
                      help='with --checkpoint: time the methods on its first queries (1.)')
  parser.add_argument('--dense', action='store_true',
                      help="cost: also time 'crown (dense)', CROWN without patches")
  args = parser.parse_args(argv)
  env = common.environment()
  common.print_environment(env)
  if args.checkpoint and not args.config:
    parser.error('--checkpoint needs --config (the config the model was trained with)')
  if args.checkpoint and not args.cost:
    return {'environment': env, **certify_main(args, parser)}
  return {'environment': env, **cost_main(args, parser)}


if __name__ == '__main__':
  main()
