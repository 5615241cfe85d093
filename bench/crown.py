"""Benchmark: CROWN-family linear bounds (`jaxcert.bounds.linear`) against a forward pass and IBP.

1. Cost (default): for each encoder, times `jax.jit` of `linear_bounds(embed, method)` for the
   methods of `--methods` (all of `METHODS` by default), of `interval(embed)` and of `embed` on
   the same batch of random-weight encoders (weights as jit arguments), and prints each per
   image and as a multiple of the forward pass measured in the same run.
2. Certification (`--checkpoint`): on a trained checkpoint, the embedding boxes of the query and
   candidate sets (`config.eval`) at each `--eps` by IBP and by each method (intersected with IBP),
   their median radius, the time, and Kakizaki et al.'s CR-Recall@K under QA and CA
   (`jaxcert.bounds.retrieval.rank_bounds`, Theorems 1-2, Eq. 25), computed in float64.

Beside auto_LiRPA (optional; docs/linear_bounds.md, "Against auto_LiRPA", says how to install it):
when it imports, the cost mode also times its CROWN-IBP and CROWN (`compute_bounds`) on the same
weights and boxes (Small and Large CNN) and prints how far its bounds are from jaxcert's; the
certification mode takes 'auto_lirpa_crown_ibp', 'auto_lirpa_crown' and 'auto_lirpa_alpha_crown'
in `--methods`.

  python bench/crown.py
  python bench/crown.py --models small_cnn --batch_size 32 --repeats 3 --dtype float32
  python bench/crown.py --config configs/quickstart.py --checkpoint runs/quickstart --eps 0.002
  python bench/crown.py --config configs/quickstart.py --checkpoint runs/quickstart --eps 0.002 \
      --methods crown --qa_only 100
  python bench/crown.py --config configs/quickstart.py --checkpoint runs/quickstart --eps 0.002 \
      --methods auto_lirpa_crown_ibp,auto_lirpa_crown --batch_size 50
  python bench/crown.py --config configs/quickstart.py --checkpoint runs/quickstart --eps 0.002 \
      --cost --dense --dtype float64 --batch_size 8
  python bench/crown.py --config configs/quickstart.py --checkpoint runs/quickstart --eps 0.002 \
      --cost --outward --methods crown_ibp,crown --dtype float32 --batch_size 50

`--cost` with `--checkpoint` times the methods (1.) on the checkpoint's first `--batch_size`
queries at the first `--eps` instead of certifying; `--dense` adds 'crown (dense)', CROWN without
the patches pass of its convolutions' intermediate bounds (`linear_bounds(..., patches=False)`);
`--outward` adds the rigorous mode of IBP and of each linear method timed
(`rounding='outward'`, docs/linear_bounds.md §8.1); `--spec_rows N` the lower bounds of N
specification rows per image through the encoder, recomputing the intermediate bounds and reusing
the box pass's (docs/linear_bounds.md §6.3), with `--outward` in the rigorous mode too (§8.2).
"""

import argparse
import contextlib
import importlib
import inspect
import pathlib
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ''):  # Run as `python bench/crown.py`: import `bench` from the repo root.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import common  # pylint: disable=wrong-import-position
from bench import compare_torch  # pylint: disable=wrong-import-position
from jaxcert import checkpointing  # pylint: disable=wrong-import-position
from jaxcert import data  # pylint: disable=wrong-import-position
from jaxcert import models  # pylint: disable=wrong-import-position
from jaxcert.bounds import input_box  # pylint: disable=wrong-import-position
from jaxcert.bounds import interval  # pylint: disable=wrong-import-position
from jaxcert.bounds import retrieval as certified_retrieval  # pylint: disable=wrong-import-position
from jaxcert.bounds.linear import linear_bounds  # pylint: disable=wrong-import-position
from jaxcert.bounds.linear import linear_spec_lower_bounds  # pylint: disable=wrong-import-position
from jaxcert.bounds.linear import METHODS  # pylint: disable=wrong-import-position

# Encoder name -> (image shape (H, W, C), perturbation radius eps).
IMAGE_SETTINGS = {
    'mlp': ((28, 28, 1), 0.01),
    'small_cnn': ((28, 28, 1), 0.01),
    'large_cnn': ((28, 28, 1), 0.01),
}
DTYPES = ('float32', 'float64')
# jaxcert method -> auto_LiRPA's `compute_bounds(method=...)`; `--methods` takes 'auto_lirpa_' + key.
LIRPA_METHODS = {'crown_ibp': 'CROWN-IBP', 'crown': 'CROWN', 'alpha_crown': 'alpha-CROWN'}
LIRPA_PREFIX = 'auto_lirpa_'
KS = (1, 10, 20, 40)
DENSE_CROWN = 'crown (dense)'
OUTWARD_SUFFIX = ' (outward)'  # --outward: the rigorous mode, rounding='outward'


@contextlib.contextmanager
def computing_in(dtype: str):
  """float64 enabled (`jax.enable_x64`) inside for 'float64'; nothing changes for 'float32'."""
  with jax.enable_x64(True) if dtype == 'float64' else contextlib.nullcontext():
    yield


def _method_and_rounding(method: str) -> tuple[str, str]:
  """('<method>', 'outward') for '<method> (outward)', else (method, 'nearest')."""
  if method.endswith(OUTWARD_SUFFIX):
    return method.removesuffix(OUTWARD_SUFFIX), 'outward'
  return method, 'nearest'


def bound_function(apply_fn, method: str, row_chunk: int | None):
  """`(variables, lower, upper) -> (out_lower, out_upper)`, jitted, by IBP or `method` (or
  'crown (dense)': CROWN without patches; '<method> (outward)': the rigorous mode of IBP or a
  linear method, rounding='outward')."""
  method, rounding = _method_and_rounding(method)

  def bounded(variables, lower, upper):
    embed = lambda x: apply_fn(variables, x)
    if method == 'ibp':
      return interval(embed, rounding=rounding)(lower, upper)
    if method == DENSE_CROWN:
      return linear_bounds(embed, 'crown', row_chunk=row_chunk, patches=False)(lower, upper)
    return linear_bounds(embed, method, row_chunk=row_chunk, rounding=rounding)(lower, upper)
  return jax.jit(bounded)


def spec_function(apply_fn, method: str):
  """`(variables, lower, upper, spec, intermediates) -> spec_lower`, jitted
  (`linear_spec_lower_bounds`, reusing `intermediates` unless None), and
  `(variables, lower, upper) -> intermediates` (`linear_bounds(..., return_intermediates=True)`);
  '<method> (outward)': both in the rigorous mode."""
  method, rounding = _method_and_rounding(method)
  spec_lower = jax.jit(lambda variables, lower, upper, spec, intermediates: (
      linear_spec_lower_bounds(lambda x: apply_fn(variables, x), method, rounding=rounding)(
          lower, upper, spec, intermediates)))
  intermediates = jax.jit(lambda variables, lower, upper: linear_bounds(
      lambda x: apply_fn(variables, x), method, rounding=rounding,
      return_intermediates=True)(lower, upper)[2])
  return spec_lower, intermediates


def time_methods(apply_fn, variables, images, eps, *, methods, repeats: int, dtype: str,
                 row_chunk: int | None, auto_lirpa_model=None,
                 spec_rows: int = 0) -> tuple[dict, dict]:
  """Median seconds of the float32 forward pass and of each bound method in `dtype`, and the
  bounds of each method.

  With `auto_lirpa_model` (the Flax module of `apply_fn`) and auto_LiRPA importable, auto_LiRPA's
  bounds by each of `methods` on the same weights and boxes too, under 'auto_lirpa_<method>'.
  With `spec_rows`, each linear method's lower bounds of that many random specification rows
  per image through the encoder (what certify.py's 'network' bounds compute), with their own
  intermediate bounds ('<method> spec N') and reusing the box pass's ('... (reused)';
  docs/linear_bounds.md §6.3).
  """
  forward = jax.jit(apply_fn)
  timings = {'forward': common.median_seconds(lambda: forward(variables, images),
                                              repeats=repeats)}
  bounds = {}
  with computing_in(dtype):
    bound_variables = certified_retrieval.cast_floating(variables, dtype)
    lower, upper = input_box(certified_retrieval.cast_floating(images, dtype), eps)
    for method in ('ibp', *methods):
      bounded = bound_function(apply_fn, method, row_chunk)
      run = lambda bounded=bounded: bounded(bound_variables, lower, upper)
      timings[method] = common.median_seconds(run, repeats=repeats)
      bounds[method] = tuple(np.asarray(b) for b in run())
    if spec_rows:
      spec = jnp.asarray(np.random.default_rng(1).normal(
          size=(lower.shape[0], spec_rows, bounds['ibp'][0].shape[-1])), lower.dtype)
      for method in (m for m in methods if _method_and_rounding(m)[0] in METHODS):
        spec_lower, intermediates_of = spec_function(apply_fn, method)
        intermediates = intermediates_of(bound_variables, lower, upper)
        for label, given in ((f'{method} spec {spec_rows}', None),
                             (f'{method} spec {spec_rows} (reused)', intermediates)):
          timings[label] = common.median_seconds(
              lambda given=given: spec_lower(bound_variables, lower, upper, spec, given),
              repeats=repeats)
  lirpa = auto_lirpa_or_none() if auto_lirpa_model is not None else None
  if lirpa is not None:
    for method in methods:
      bounded = auto_lirpa_bound_function(*lirpa, auto_lirpa_model, variables, images.shape[1:],
                                          method, dtype)
      run = lambda bounded=bounded: bounded(lower, upper)
      timings[LIRPA_PREFIX + method] = common.median_seconds(run, repeats=repeats)
      bounds[LIRPA_PREFIX + method] = run()
  return timings, bounds


def largest_relative_difference(bounds, other) -> float:
  """max |bound - other bound| over both ends, over the largest |bound| (at least 1)."""
  scale = max(max(float(np.max(np.abs(b))) for b in bounds), 1.0)
  return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
             for a, b in zip(bounds, other)) / scale


def cost_main(args, parser) -> dict:
  names = ([_config(args).model.name] if args.checkpoint
           else common.parse_model_names(parser, args.models, IMAGE_SETTINGS))
  methods = _methods(parser, args.methods)
  methods += [DENSE_CROWN] if args.dense else []
  if args.outward:
    methods += ['ibp' + OUTWARD_SUFFIX] + [method + OUTWARD_SUFFIX for method in methods
                                           if method in METHODS]
  lirpa = auto_lirpa_or_none()
  print(f'{"model":<10} {"batch":>5} {"dtype":>8} {"method":>22} {"ms / image":>11} '
        f'{"x forward":>10} {"mean width":>11}   (forward pass in float32, same run; width: '
        'upper - lower, auto_LiRPA\'s intersected with IBP as jaxcert\'s are)')
  results, rows = {}, []
  for name in names:
    if args.checkpoint:  # The checkpoint's encoder on its first queries.
      model, variables, images, eps = _checkpoint_queries(args)
    else:
      image_shape, eps = IMAGE_SETTINGS[name]
      model = models.get_model(name, embedding_dim=args.embedding_dim)
      variables = models.init_variables(model, jax.random.key(0), (1,) + image_shape)
      images = jnp.asarray(np.random.default_rng(0).uniform(
          size=(args.batch_size,) + image_shape), jnp.float32)
    exportable = lirpa is not None and name in compare_torch.LAYERS
    timings, bounds = time_methods(model.apply, variables, images, eps, methods=methods,
                                   repeats=args.repeats, dtype=args.dtype,
                                   row_chunk=args.row_chunk,
                                   auto_lirpa_model=model if exportable else None,
                                   spec_rows=args.spec_rows)
    results[name] = timings
    forward = timings['forward'] / args.batch_size
    for method, seconds in list(timings.items()):
      agreement, width = '', ''
      if method in bounds:
        lower, upper = bounds[method]
        if method.startswith(LIRPA_PREFIX):
          lower, upper = np.maximum(lower, bounds['ibp'][0]), np.minimum(upper, bounds['ibp'][1])
        results[name][method + '_mean_width'] = float(np.mean(upper - lower))
        width = f'{results[name][method + "_mean_width"]:.5g}'
      if method.startswith(LIRPA_PREFIX):
        difference = largest_relative_difference(bounds[method.removeprefix(LIRPA_PREFIX)],
                                                 bounds[method])
        results[name][method + '_relative_difference'] = difference
        agreement = f'   max |difference| from jaxcert {difference:.1e} of the largest |bound|'
      print(f'{name:<10} {args.batch_size:>5} {args.dtype:>8} {method:>22} '
            f'{1e3 * seconds / args.batch_size:>11.3f} {seconds / timings["forward"]:>10.1f} '
            f'{width:>11}' + agreement, flush=True)
      if method in LIRPA_METHODS or method.startswith(LIRPA_PREFIX):
        base = method.removeprefix(LIRPA_PREFIX)
        who = (f'auto_LiRPA, bounds within {difference:.0e} of jaxcert\'s'
               if method.startswith(LIRPA_PREFIX) else 'jaxcert')
        rows.append(common.summary_row(
            f'{LIRPA_METHODS[base]} bounds', name,
            f'batch {args.batch_size}, eps {eps}, {args.dtype}, {who}', 'image',
            seconds / args.batch_size, forward))
  if lirpa is None:
    print('auto_LiRPA is not installed: its rows are left out (docs/linear_bounds.md says how '
          'to install it).')
  return {'cost': results, 'summary_rows': rows}


def _config(args):
  """The config of `--config` (a path such as configs/quickstart.py)."""
  return importlib.import_module(
      str(pathlib.Path(args.config).with_suffix('')).replace('/', '.')).get_config()


def _checkpoint_queries(args):
  """(model, variables, the first `--batch_size` query images, the first `--eps`)."""
  config = _config(args)
  model, variables, dataset, _ = checkpointing.load_trained(config, args.checkpoint)
  (query_images, _), _ = data.query_candidate_sets(config, dataset)
  return (model, variables, jnp.asarray(query_images[:args.batch_size], jnp.float32),
          args.eps[0])


def bounder(model, variables, image_shape, method: str, *, dtype: str, row_chunk: int | None):
  """`(variables, lower, upper) -> (out_lower, out_upper)` by `method`: 'ibp', one of METHODS
  (jitted; built once, it compiles once), or 'auto_lirpa_' + one of LIRPA_METHODS (auto_LiRPA's
  bounds on the same weights, numpy out)."""
  if not method.startswith(LIRPA_PREFIX):
    return bound_function(model.apply, method, row_chunk)
  lirpa = auto_lirpa_or_none()
  if lirpa is None:
    raise ValueError(f'{method} needs auto_LiRPA, which does not import here '
                     '(docs/linear_bounds.md says how to install it).')
  by_auto_lirpa = auto_lirpa_bound_function(*lirpa, model, variables, image_shape,
                                            method.removeprefix(LIRPA_PREFIX), dtype)
  return lambda _, lower, upper: by_auto_lirpa(lower, upper)


def boxes(bounded, variables, images, eps, *, batch_size: int, dtype: str):
  """Embedding boxes of `images` at `eps` by `bounded` (`bounder`) in `dtype`, batch by batch.

  Returns (lower, upper, seconds, first-batch seconds, CPU seconds, median seconds of the later
  batches (None with one batch)): the first batch of a jitted method includes its compilation;
  the CPU seconds are the process's (all threads; on a shared machine steadier than the wall
  time).
  """
  with computing_in(dtype):
    bound_variables = certified_retrieval.cast_floating(variables, dtype)
    lowers, uppers, batch_seconds = [], [], []
    start_time, start_cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(images), batch_size):
      batch_start = time.perf_counter()
      batch = np.asarray(images[start:start + batch_size])
      padding = batch_size - len(batch)
      batch = np.concatenate([batch, np.repeat(batch[-1:], padding, 0)]) if padding else batch
      lower, upper = input_box(certified_retrieval.cast_floating(batch, dtype), eps)
      out_lower, out_upper = jax.block_until_ready(bounded(bound_variables, lower, upper))
      lowers.append(np.asarray(out_lower)[:batch_size - padding])
      uppers.append(np.asarray(out_upper)[:batch_size - padding])
      batch_seconds.append(time.perf_counter() - batch_start)
    seconds, cpu_seconds = time.perf_counter() - start_time, time.process_time() - start_cpu
  later = float(np.median(batch_seconds[1:])) if len(batch_seconds) > 1 else None
  return (np.concatenate(lowers), np.concatenate(uppers), seconds, batch_seconds[0], cpu_seconds,
          later)


def xla_temp_megabytes(bounded, variables, images, eps, *, batch_size: int, dtype: str):
  """The temporary memory XLA allocates for one call of a jitted `bounded` on a batch (its
  `memory_analysis`), in MB: the bound computation's working memory, without the process's."""
  with computing_in(dtype):
    batch = certified_retrieval.cast_floating(np.asarray(images[:batch_size]), dtype)
    lower, upper = input_box(batch, eps)
    compiled = bounded.lower(certified_retrieval.cast_floating(variables, dtype), lower,
                             upper).compile()
  return compiled.memory_analysis().temp_size_in_bytes / 1e6


def certify_main(args, parser) -> dict:
  """CR-Recall@K under QA and CA of the checkpoint's boxes by IBP and each method."""
  methods = _methods(parser, args.methods, auto_lirpa=True)
  config = _config(args)
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
  print(f'{"eps":>6} {"method":>22} {"seconds":>8} {"first batch":>11} {"CPU s":>8} '
        f'{"median r":>9} '
        + ' '.join(f'{"QA@" + str(k):>7}' for k in KS) + ' '
        + ' '.join(f'{"CA@" + str(k):>7}' for k in KS))
  for eps in args.eps:
    query_boxes = {}
    for method in ('ibp', *methods):
      with computing_in(args.dtype):
        bounded = bounder(model, variables, query_images.shape[1:], method, dtype=args.dtype,
                          row_chunk=args.row_chunk)
      query_lower, query_upper, query_s, first_s, query_cpu_s, later_s = boxes(
          bounded, variables, query_images, eps, batch_size=args.batch_size, dtype=args.dtype)
      temp_mb = (None if method.startswith(LIRPA_PREFIX) else xla_temp_megabytes(
          bounded, variables, query_images, eps, batch_size=args.batch_size, dtype=args.dtype))
      query_boxes[method] = (query_lower, query_upper)
      if args.qa_only:
        candidate_lower, candidate_upper, candidate_s, candidate_first_s, candidate_cpu_s = (
            candidate_emb, candidate_emb, 0., None, 0.)
      else:
        (candidate_lower, candidate_upper, candidate_s, candidate_first_s, candidate_cpu_s,
         _) = boxes(bounded, variables, candidate_images, eps, batch_size=args.batch_size,
                    dtype=args.dtype)
      # A batch after compilation: the queries' later batches, else the candidates' first.
      later_s = later_s if later_s is not None else candidate_first_s
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
      cpu_seconds = query_cpu_s + candidate_cpu_s
      results[f'{eps}/{method}'] = {'seconds': seconds, 'first_batch_seconds': first_s,
                                    'later_batch_seconds': later_s, 'xla_temp_mb': temp_mb,
                                    'peak_rss_mb': _peak_rss_megabytes(),
                                    'cpu_seconds': cpu_seconds,
                                    'images': len(query_images) + (
                                        0 if args.qa_only else len(candidate_images)),
                                    'median_radius': radius, **cr_recall}
      print(f'{eps:>6g} {method:>22} {seconds:>8.1f} {first_s:>11.1f} {cpu_seconds:>8.1f} '
            f'{radius:>9.4g} '
            + ' '.join(f'{cr_recall["qa"][k]:>7.3f}' for k in KS) + ' '
            + ' '.join(f'{cr_recall["ca"][k]:>7.3f}' if not args.qa_only else f'{"-":>7}'
                       for k in KS)
            + (f'   a batch after compilation {later_s:.2f} s' if later_s is not None else '')
            + (f', XLA temp {temp_mb:.0f} MB' if temp_mb is not None else '')
            + f', peak RSS so far {_peak_rss_megabytes():.0f} MB', flush=True)
    for method in methods:  # jaxcert's boxes against auto_LiRPA's on the same queries
      if LIRPA_PREFIX + method in query_boxes:
        difference = largest_relative_difference(query_boxes[method],
                                                 query_boxes[LIRPA_PREFIX + method])
        results[f'{eps}/{method}']['auto_lirpa_relative_difference'] = difference
        print(f'{eps:>6g} {method}: query boxes within {difference:.1e} of the largest |bound| '
              'of auto_LiRPA\'s', flush=True)
  return {'certify': results}


def _peak_rss_megabytes() -> float:
  """The process's peak resident memory so far (Linux: `ru_maxrss` in KB), in MB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


# --- auto_LiRPA on the same weights (when it imports). -------------------------------------------


def auto_lirpa_or_none():
  """(torch, auto_LiRPA) when both import, else None (auto_LiRPA is optional: docs/linear_bounds.md)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import auto_LiRPA  # pylint: disable=import-outside-toplevel
  except Exception:  # pylint: disable=broad-except  (its imports fail in several ways)
    return None
  return torch, auto_LiRPA


def torch_sequential(torch, model, params, image_shape):
  """`torch.nn.Sequential` (NCHW input) computing the Flax encoder `model` with `params`.

  Built of `Conv2d`, `ReLU`, `Flatten` and `Linear` only, the layers auto_LiRPA bounds natively
  (its `Pad` node rejects the explicit padding bench/compare_torch.py uses). Flax's 'SAME'
  padding (before, after) with after = before + 1 (a stride-2 layer of the Large CNN) becomes a
  symmetric padding `after` with one zero row and column prepended to the kernel: the window that
  starts `before` pixels left of each output's first input then sees the same pixels with the same
  weights. Flax flattens (H, W, C): the first Dense layer's input rows are permuted to PyTorch's
  (C, H, W) order. Encoders with input normalisation, BatchNorm or an L2 head are refused.
  """
  if model.input_mean != 0.0 or model.input_std != 1.0 or getattr(model, 'batch_norm', False) \
      or model.l2_normalize:
    raise ValueError('torch_sequential exports plain Small/Large CNNs only (no input '
                     'normalisation, BatchNorm or L2 head).')
  model_name = {'SmallCNN': 'small_cnn', 'LargeCNN': 'large_cnn'}.get(type(model).__name__)
  if model_name is None:
    raise ValueError(f'torch_sequential exports small_cnn and large_cnn, not {type(model).__name__}.')
  nn = torch.nn
  as_tensor = lambda a: torch.from_numpy(np.array(a))
  layers, (height, width, channels) = [], image_shape
  for layer in compare_torch.LAYERS[model_name]:
    if layer[0] == 'conv':
      _, name, stride, padding = layer
      kernel = np.asarray(params[name]['kernel'])  # (kh, kw, in, out)
      pads = [(0, 0), (0, 0)]
      if padding == 'SAME':
        pads = [_same_padding(size, kernel.shape[axis], stride)
                for axis, size in enumerate((height, width))]
      height, width = ((size + sum(pad) - kernel.shape[axis]) // stride + 1
                       for axis, (size, pad) in enumerate(zip((height, width), pads)))
      for axis, (before, after) in enumerate(pads):
        if after == before + 1:  # One zero row/column first: symmetric padding `after`.
          kernel = np.concatenate([np.zeros_like(kernel.take([0], axis)), kernel], axis)
        elif after != before:
          raise ValueError(f'unexpected padding {(before, after)} of {name}')
      conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2], stride=stride,
                       padding=tuple(after for _, after in pads))
      conv.weight.data, conv.bias.data = as_tensor(kernel.transpose(3, 2, 0, 1)), as_tensor(
          params[name]['bias'])
      layers.append(conv)
      channels = kernel.shape[3]
    elif layer[0] == 'dense':
      kernel = np.asarray(params[layer[1]]['kernel'])  # (in, out)
      if isinstance(layers[-1], nn.Flatten):  # Rows in Flax's (H, W, C) order -> (C, H, W).
        kernel = kernel.reshape(height, width, channels, -1).transpose(2, 0, 1, 3).reshape(
            kernel.shape)
      dense = nn.Linear(*kernel.shape)
      dense.weight.data, dense.bias.data = as_tensor(kernel.T), as_tensor(params[layer[1]]['bias'])
      layers.append(dense)
    elif layer[0] == 'relu':
      layers.append(nn.ReLU())
    else:
      layers.append(nn.Flatten())
  return nn.Sequential(*layers).eval()


@contextlib.contextmanager
def torch_default_dtype(torch, dtype: str):
  """PyTorch's default dtype set to `dtype` inside (auto_LiRPA builds its identity specification
  and the IBP comparison in it)."""
  previous = torch.get_default_dtype()
  torch.set_default_dtype(getattr(torch, dtype))
  try:
    yield
  finally:
    torch.set_default_dtype(previous)


def auto_lirpa_bound_function(torch, auto_lirpa, model, variables, image_shape, method: str,
                              dtype: str):
  """auto_LiRPA's `compute_bounds` by `method` (a key of LIRPA_METHODS) on `model`'s weights.

  Returns `(lower, upper) -> (out_lower, out_upper)` on NHWC numpy boxes, numpy bounds out.
  Like jaxcert (docs/linear_bounds.md, "Against auto_LiRPA"): every intermediate and final linear
  bound intersected with IBP (`compare_crown_with_ibp`); auto_LiRPA's other options at their
  defaults (adaptive ReLU lower slope, patches mode for convolutions, CROWN only for the
  pre-activations IBP finds unstable; alpha-CROWN with its `optimize_bound_args` defaults, 20
  Adam steps at learning rate 0.5 x 0.98 a step as jaxcert's 'alpha_crown', but also optimising
  the intermediate layers' slopes, which jaxcert's keeps at CROWN's: docs/linear_bounds.md §5.2).
  """
  module = torch_sequential(torch, model, jax.tree.map(np.asarray, variables['params']),
                            image_shape).to(getattr(torch, dtype))
  to_nchw = lambda a: torch.from_numpy(np.array(np.asarray(a).transpose(0, 3, 1, 2)))
  with torch_default_dtype(torch, dtype):
    bounded_module = auto_lirpa.BoundedModule(
        module, torch.zeros((1,) + tuple(image_shape[2:]) + tuple(image_shape[:2])),
        bound_opts={'compare_crown_with_ibp': True}, device='cpu')

  def bounded(lower, upper):
    lower, upper = to_nchw(lower), to_nchw(upper)
    box = auto_lirpa.BoundedTensor((lower + upper) / 2, auto_lirpa.PerturbationLpNorm(
        norm=float('inf'), x_L=lower, x_U=upper))
    # alpha-CROWN differentiates its bounds with respect to its slopes.
    gradients = contextlib.nullcontext() if method == 'alpha_crown' else torch.no_grad()
    with torch_default_dtype(torch, dtype), gradients:
      out_lower, out_upper = bounded_module.compute_bounds(x=(box,), method=LIRPA_METHODS[method])
    return out_lower.numpy(), out_upper.numpy()
  return bounded


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(before, after) padding of Flax's 'SAME' along one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _methods(parser, text: str, auto_lirpa: bool = False) -> list[str]:
  """The comma-separated methods of `text`; with `auto_lirpa`, auto_LiRPA's too."""
  valid = list(METHODS) + ([LIRPA_PREFIX + method for method in LIRPA_METHODS]
                           if auto_lirpa else [])
  methods = [method for method in text.split(',') if method]
  unknown = [method for method in methods if method not in valid]
  if unknown:
    parser.error(f'unknown methods {unknown}; valid: {valid}')
  return methods


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='small_cnn',
                      help=f'cost: comma-separated names from {sorted(IMAGE_SETTINGS)}')
  parser.add_argument('--methods', default=','.join(METHODS),
                      help=f'from {list(METHODS)}; with --checkpoint also auto_LiRPA\'s '
                      f'{[LIRPA_PREFIX + method for method in LIRPA_METHODS]} (the cost mode '
                      'adds those by itself when auto_LiRPA imports)')
  parser.add_argument('--batch_size', type=int, default=16, help='images per bound call')
  parser.add_argument('--embedding_dim', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--row_chunk', type=int, default=None,
                      help='specification rows per backward pass (memory); default: '
                      'linear_bounds\' choice for the batch (row_chunk_for)')
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
  parser.add_argument('--spec_rows', type=int, default=0,
                      help='cost: also time each linear method\'s lower bounds of that many '
                      'specification rows through the encoder, with their own intermediate '
                      'bounds and reusing the box pass\'s (certify.py\'s \'network\' bounds)')
  parser.add_argument('--outward', action='store_true',
                      help="cost: also time the rigorous mode (rounding='outward', "
                           "docs/linear_bounds.md §8.1) of IBP and of each linear method, "
                           "e.g. 'crown (outward)'")
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
