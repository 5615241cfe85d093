"""certify.py mode 'ibp': Recall@K and CR-Recall@K under QA and CA from embedding bounds.

Kakizaki et al. Sec. 5.1.2: for the query set Q and the candidate set C of
`config.eval`, Recall@K (Eq. 22) and CR-Recall@K (Eq. 25, alpha = K - rank) against the query
attack (QA, Theorem 3) and the candidate attack (CA, Theorem 4) at `config.ibp.eps`, and
CR-Recall@K over the radii `config.ibp.eps_sweep`. The certificates are those of
`jaxcert.bounds.retrieval` (docs/bounds.md §10-13), computed in `config.ibp.dtype` at full matmul
precision: 'float64' (the encoder's float32 weights cast exactly, under `jax.enable_x64`; bounds
rounded to nearest and guarded by a distance slack) or 'float32' (rigorous: every bound rounded
outwards, so it holds for the real-valued encoder with no slack, docs/rigorous_float32.md);
'auto' (the default) is float64 on CPU and float32 on GPU and TPU. Two more choices, named in
ibp.md and results.json ('certified_by'):
  config.ibp.method    how the embedding boxes are bounded: 'ibp' (interval bound propagation,
                       Eqs. 15-16), 'crown_ibp', 'crown' or 'alpha_crown' (linear
                       relaxations of `jaxcert.bounds.linear`, intersected with IBP;
                       float64 only);
  config.ibp.qa_bound  the QA certificate: 'linear' (the exact linear specification over the
                       query's embedding box, docs/bounds.md §13), 'network' ('linear', then
                       for each query's nearest same-class candidate the same specification
                       bounded through the encoder with config.ibp.method's relaxation on the
                       config.ibp.spec_rows candidates the box leaves undecided,
                       `jaxcert.bounds.through_encoder`; a linear method only) or
                       'kakizaki' (Theorem 1);
  config.ibp.ca_bound  the CA certificate: 'kakizaki' (Theorem 2 over the candidates' boxes) or
                       'network' (Theorem 2 with the candidates' distance lower bounds also
                       bounded through the encoder for each query's nearest same-class
                       candidate, on the pairs the box leaves undecided; a linear method only).

`compute(inputs)` certifies and returns every number; `write_report(inputs, computed, workdir)`
writes them; `run` (the mode's entry point) does both.

Writes into the workdir (`jaxcert.certification.run` adds results.json, the returned dict: every
number of the tables, and timings):
  ibp.md                 the tables (also printed)
  ibp_per_query.tsv      per query: its index in Q and in the test split, its label, and for each K
                         whether it is certified under QA and under CA at config.ibp.eps
  cr_recall_vs_k.png     Recall@K and CR-Recall@K (QA, CA) against K at config.ibp.eps
  cr_recall_vs_eps.png   CR-Recall@K (QA, CA) against eps, one curve per K and attack

Rounding: every distance bound is widened by `config.ibp.distance_slack` times the magnitudes of
its box and point before comparison (docs/bounds.md §10; by default 1e-5 in float64 and 0 in the
rigorous float32). In float64 the bounds' own rounding is
~1e-16 of the magnitudes, ten orders below the default slack; in float32 it is ~1e-7 to 1e-5 and
the slack is the only guard. ibp.md and results.json give the slack beside the float32 rounding
error measured on the first `config.ibp.batch_size` queries and candidates against the same
computation in float64 (`float32_rounding_error`), and warn when the slack covers it less than
`ROUNDING_MARGIN` times: in float32 the certificates may then rest on rounding; in float64 the
float32 encoder as deployed may rank near-ties otherwise than the certified one.

ibp.md and results.json also give, per eps, how wide the boxes are: percentiles of the box radius
||(upper - lower) / 2||_2 of the queries' and of the candidates' embeddings, beside the median
distance from a query to its nearest candidate. A box wider than the gaps between distances cannot
be certified; under CA every candidate's box counts against every query (results/kakizaki/explorations/NOTES.md).
"""

from __future__ import annotations

import functools
import os
import time

from absl import logging
import jax
import numpy as np

from jaxcert import data
from jaxcert import metrics
from jaxcert import report
from jaxcert import retrieval
from jaxcert.bounds import linear
from jaxcert.bounds import retrieval as certified_retrieval
from jaxcert.bounds.interval import interval
from jaxcert.bounds import rounding as outward_rounding
from jaxcert.bounds import through_encoder


ROUNDING_MARGIN = 10  # the distance slack should exceed the measured float32 rounding this many times
# config.ibp.dtype: what the certificates are computed in ('float32' is rigorous, outward-rounded).
DTYPES = ('auto', 'float64', 'float32')
# config.ibp.method: how the embedding boxes are computed -> what ibp.md says about it.
METHODS = {
    'ibp': 'interval bound propagation (Kakizaki et al. Eqs. 15-16)',
    'crown_ibp': 'CROWN-IBP linear bounds intersected with IBP (jaxcert.bounds.linear)',
    'crown': 'CROWN linear bounds intersected with IBP (jaxcert.bounds.linear)',
    'alpha_crown': ('alpha-CROWN linear bounds (CROWN with optimised ReLU slopes) intersected '
                    'with IBP (jaxcert.bounds.linear)'),
}
# config.ibp.qa_bound: the query-attack certificate (`rank_bounds`'s qa_bound) -> its description.
QA_BOUNDS = {
    'linear': 'the linear specification, exact over the query embedding box (docs/bounds.md §13)',
    'network': ('the linear specification, exact over the query embedding box, and for each '
                "query's nearest same-class candidate also bounded through the encoder on the "
                'pairs the box leaves undecided (jaxcert.bounds.through_encoder)'),
    'kakizaki': 'Kakizaki et al. Theorem 1 (distance bounds, Eqs. 9-10)',
}
# The methods whose relaxations also bound a specification through the encoder ('network').
LINEAR_METHODS = tuple(linear.METHODS)
# config.ibp.ca_bound: the candidate-attack certificate -> its description.
CA_BOUNDS = {
    'kakizaki': 'Kakizaki et al. Theorem 2 (distance bounds, Eqs. 11-12)',
    'network': ("Kakizaki et al. Theorem 2, and for each query's nearest same-class candidate the "
                "candidates' distance lower bounds also bounded through the encoder on the pairs "
                'the box leaves undecided (jaxcert.bounds.through_encoder)'),
}


def certification_dtype(ibp_config) -> str:
  """`config.ibp.dtype`, with 'auto' resolved: 'float64' on CPU, 'float32' on GPU and TPU."""
  if ibp_config.dtype != 'auto':
    return ibp_config.dtype
  return 'float64' if jax.default_backend() == 'cpu' else 'float32'


def distance_slack(ibp_config) -> float:
  """`config.ibp.distance_slack`; unset (None): 1e-5 in float64, 0 in the rigorous float32."""
  if ibp_config.distance_slack is not None:
    return float(ibp_config.distance_slack)
  if certification_dtype(ibp_config) == 'float32':
    return 0.
  return certified_retrieval.DEFAULT_DISTANCE_SLACK


def check_ibp_config(ibp_config, num_candidates: int) -> tuple[float, tuple[int, ...], list[float]]:
  """`(eps, ks, sorted radii to certify at)` from `config.ibp`; ValueError if invalid."""
  if ibp_config.dtype not in DTYPES:
    raise ValueError(f'Unknown config.ibp.dtype {ibp_config.dtype!r}; valid: {list(DTYPES)}.')
  if ibp_config.method not in METHODS:
    raise ValueError(f'Unknown config.ibp.method {ibp_config.method!r}; valid: {list(METHODS)}.')
  if ibp_config.qa_bound not in QA_BOUNDS:
    raise ValueError(f'Unknown config.ibp.qa_bound {ibp_config.qa_bound!r}; valid: '
                     f'{list(QA_BOUNDS)}.')
  if ibp_config.ca_bound not in CA_BOUNDS:
    raise ValueError(f'Unknown config.ibp.ca_bound {ibp_config.ca_bound!r}; valid: '
                     f'{list(CA_BOUNDS)}.')
  for field in ('qa_bound', 'ca_bound'):
    if ibp_config[field] == 'network' and ibp_config.method not in LINEAR_METHODS:
      raise ValueError(f"config.ibp.{field}='network' bounds through the encoder with "
                       f"config.ibp.method's linear relaxation; config.ibp.method is "
                       f"{ibp_config.method!r}: set it to one of {list(LINEAR_METHODS)}.")
  if not (int(ibp_config.spec_rows) == ibp_config.spec_rows and ibp_config.spec_rows >= 1):
    raise ValueError(f'config.ibp.spec_rows must be a positive integer, got '
                     f'{ibp_config.spec_rows!r}.')
  if ibp_config.dtype == 'float64' and jax.default_backend() == 'tpu':
    raise ValueError('TPUs do not compute in float64: certify with --config.ibp.dtype=float32 '
                     '(rigorous: outward-rounded bounds, docs/rigorous_float32.md).')
  if not distance_slack(ibp_config) >= 0:
    raise ValueError(f'config.ibp.distance_slack must be >= 0 (default '
                     f'{certified_retrieval.DEFAULT_DISTANCE_SLACK}), got {ibp_config.distance_slack}.')
  eps = float(ibp_config.eps)
  radii = [float(r) for r in ibp_config.eps_sweep]
  bad = [r for r in [eps] + radii if not r >= 0]
  if bad:
    raise ValueError(f'config.ibp.eps and eps_sweep must be >= 0 (L-inf radii in pixel units), got '
                     f'{bad}.')
  ks = tuple(ibp_config.ks)
  if not ks or any(int(k) != k or not 1 <= k <= num_candidates for k in ks):
    raise ValueError(f'config.ibp.ks must be integers in [1, {num_candidates}] (the candidate set '
                     f'size), got {ks}.')
  return eps, tuple(int(k) for k in ks), sorted(set(radii) | {eps})


def in_dtype(inputs, dtype: str):
  """`inputs` with the encoder's floating-point variables cast to `dtype` (exact from float32).

  Call inside `certification_precision(dtype)`; `embed` is rebuilt from `inputs.model.apply`.
  """
  variables = certified_retrieval.cast_floating(inputs.variables, dtype)
  return inputs._replace(variables=variables,
                         embed=jax.tree_util.Partial(inputs.model.apply, variables))


@functools.cache
def embedding_bound_transform(method: str, outward: bool = False):
  """The bound transform of `config.ibp.method` for `certified_retrieval.embedding_bounds`.

  'ibp': `interval` (`outward_interval` if `outward`, the rigorous float32). 'crown_ibp',
  'crown', 'alpha_crown': `jaxcert.bounds.linear.linear_bounds(fn, method=...)` (same calling
  convention as `interval(fn)`, already intersected with the IBP bounds). Cached: one function
  object per method, so jit reuses its compilations.

  With `outward` (the rigorous float32): `outward_interval`, or `linear_bounds(fn, method,
  rounding='outward')` (docs/linear_bounds.md §8.1).

  Raises:
    ValueError: an unknown method.
  """
  if method not in METHODS:
    raise ValueError(f'Unknown config.ibp.method {method!r}; valid: {list(METHODS)}.')
  if method == 'ibp':
    return certified_retrieval.outward_interval if outward else interval
  if outward:
    return functools.partial(linear.linear_bounds, method=method, rounding='outward')
  return functools.partial(linear.linear_bounds, method=method)


def point_margins(inputs, query_emb, candidate_emb) -> dict:
  """How far the real-valued encoder's embeddings are from the computed ones (rigorous float32).

  Outward-rounded boxes at eps = 0 of the queries and candidates, reduced to per-coordinate
  margins over all of them (`rounding.point_margins`; `certify_at` widens the query boxes by the
  candidates' for Theorem 1, `rounding.widen_for_points`) and to one distance per embedding (the
  linear QA specification widens each pair by its candidates', Theorem 2's distance bounds are
  widened by the query's; docs/rigorous_float32.md §6, docs/bounds.md §13).

  Returns:
    {'query': (below, above), 'candidate': (below, above)}, each (d,) arrays, and
    'query_distance', 'candidate_distance': (N,) upper bounds of each embedding's ||y - y~||_2.
  """
  ibp_config = inputs.config.ibp
  margins = {}
  for side, emb, images in (('query', query_emb, inputs.queries.images),
                            ('candidate', candidate_emb, inputs.candidates.images)):
    point_box = certified_retrieval.embedding_bounds(
        inputs.embed, images, 0., batch_size=ibp_config.batch_size, sharding=inputs.batch_sharding,
        dtype=emb.dtype, bound=certified_retrieval.outward_interval)
    margins[side] = outward_rounding.point_margins(emb, *point_box)
    # ||y - y~||_2 per embedding: for the linear QA specification (candidates) and the CA
    # distance bounds (queries).
    margins[f'{side}_distance'] = outward_rounding.outward_distance_bounds(
        point_box[0], point_box[1], emb)[1]
  return margins


def certify_at(inputs, query_emb, candidate_emb, eps: float, ks, *, margins=None) -> dict:
  """Rank bounds and per-query certificates of the inputs' encoder at radius `eps`.

  The input boxes are built in the dtype of `query_emb` (that of `inputs.embed`), by
  `config.ibp.method`; QA is certified by `config.ibp.qa_bound`. In the rigorous float32
  (`config.ibp.dtype`), every bound is rounded outwards, with the embeddings' own `margins`
  (`point_margins`, computed here if not given).

  Returns:
    {'rank_bounds': RankBounds, 'certified': {'qa', 'ca'} -> (Nq, len(ks)) bool,
     'cr_recall': {'qa', 'ca'} -> {K: float}, 'box_radius': {'query', 'candidate'} ->
     {percentile: float} (`box_radius_percentiles`), 'bounds_s', 'verify_s'}.
  """
  ibp_config = inputs.config.ibp
  start = time.perf_counter()
  # Progress bars for the linear methods' boxes (minutes; IBP's take a second).
  progress = ibp_config.method != 'ibp' and inputs.config.get('progress_bar', True)
  (query_box, candidate_box), intermediates = embedding_boxes(
      inputs, eps, ibp_config.method, query_emb.dtype,
      network='network' in (ibp_config.qa_bound, ibp_config.ca_bound), progress=progress)
  if certification_dtype(ibp_config) == 'float32' and margins is None:
    margins = point_margins(inputs, query_emb, candidate_emb)
  bounds_s = time.perf_counter() - start
  start = time.perf_counter()
  rank_bounds = certified_rank_bounds(
      inputs, query_emb, candidate_emb, eps, max(ks), (query_box, candidate_box), intermediates,
      qa_bound=ibp_config.qa_bound, ca_bound=ibp_config.ca_bound, method=ibp_config.method,
      slack=distance_slack(ibp_config), margins=margins)
  verify_s = time.perf_counter() - start
  certified = certified_retrieval.certified_retrieval(
      rank_bounds, inputs.queries.labels, inputs.candidates.labels, ks)
  cr_recall = certified_retrieval.cr_recall_at_k(certified, ks)
  box_radius = {'query': box_radius_percentiles(*query_box),
                'candidate': box_radius_percentiles(*candidate_box)}
  return {'rank_bounds': rank_bounds, 'certified': certified, 'cr_recall': cr_recall,
          'box_radius': box_radius, 'bounds_s': bounds_s, 'verify_s': verify_s}


def embedding_boxes(inputs, eps: float, method: str, dtype, *, network: bool,
                    count: int | None = None, progress: bool = False):
  """The query and candidate embedding boxes at `eps` by `method`, as certify.py computes them
  (rounded outwards in the rigorous float32 of `config.ibp.dtype`), of the first `count` images
  of each set (None: all); with `network`, also their intermediate bounds, which the bounds
  through the encoder reuse (`through_encoder.embedding_bounds_and_intermediates`).

  Returns:
    `((query_lower, query_upper), (candidate_lower, candidate_upper))` and the queries' and
    candidates' intermediate bounds (`(None, None)` without `network`).
  """
  ibp_config = inputs.config.ibp
  outward = certification_dtype(ibp_config) == 'float32'
  sets = (('queries', inputs.queries.images[:count]),
          ('candidates', inputs.candidates.images[:count]))
  describe = lambda name: f'{method} boxes of the {name}, eps {eps:g}' if progress else None
  if not network:
    bound = embedding_bound_transform(method, outward)
    return tuple(certified_retrieval.embedding_bounds(
        inputs.embed, images, eps, batch_size=ibp_config.batch_size,
        sharding=inputs.batch_sharding, dtype=dtype, bound=bound, progress=describe(name))
                 for name, images in sets), (None, None)
  query_all, candidate_all = (through_encoder.embedding_bounds_and_intermediates(
      inputs.embed, images, eps, method, batch_size=ibp_config.batch_size,
      sharding=inputs.batch_sharding, dtype=dtype, rounding='outward' if outward else 'nearest',
      progress=describe(name)) for name, images in sets)
  return (query_all[:2], candidate_all[:2]), (query_all[2], candidate_all[2])


def certified_rank_bounds(inputs, query_emb, candidate_emb, eps: float, k: int, boxes,
                          intermediates=(None, None), *, qa_bound: str, ca_bound: str,
                          method: str, slack: float, margins=None):
  """QA and CA rank bounds of each query's `k` nearest candidates from the embedding `boxes`
  (`embedding_boxes`), as certify.py computes them: `rank_bounds` with `qa_bound` ('linear'
  where 'network') and the slack, then the 'network' bounds through the encoder
  (`through_encoder_rank_bounds`). In the rigorous float32 (`config.ibp.dtype`) every bound is
  rounded outwards, with the embeddings' `margins` (`point_margins`): Theorem 1 compares the
  query boxes widened by the candidates' margins, the linear specification each pair widened
  by its candidates' distances (docs/bounds.md §13, "Rigorous float32: the point margin"),
  Theorem 2 the candidate boxes' distances moved out by the query's (docs/rigorous_float32.md §6).
  """
  ibp_config = inputs.config.ibp
  outward = certification_dtype(ibp_config) == 'float32'
  query_box, candidate_box = boxes
  compared_query_box = query_box
  point_margin = query_point_margin = 0.
  if outward:
    if margins is None:
      raise ValueError('The rigorous float32 needs the embeddings\' margins (point_margins).')
    if qa_bound == 'kakizaki':
      compared_query_box = outward_rounding.widen_for_points(*query_box, margins['candidate'])
    point_margin = margins['candidate_distance']
    query_point_margin = margins['query_distance']
  rank_bounds = jax.block_until_ready(certified_retrieval.rank_bounds(
      query_emb, *compared_query_box, candidate_emb, *candidate_box, k,
      block_size=ibp_config.query_block_size,
      candidate_block_size=ibp_config.candidate_block_size, distance_slack=slack,
      qa_bound='linear' if qa_bound == 'network' else qa_bound,
      rounding='outward' if outward else 'nearest', point_margin=point_margin,
      query_point_margin=query_point_margin))
  return through_encoder_rank_bounds(
      inputs, rank_bounds, eps, query_box, candidate_box, query_emb, candidate_emb,
      qa_bound=qa_bound, ca_bound=ca_bound, method=method, slack=slack,
      intermediates=intermediates, outward=outward, point_margin=point_margin,
      query_point_margin=query_point_margin)


def through_encoder_rank_bounds(inputs, rank_bounds, eps: float, query_box, candidate_box,
                               query_emb, candidate_emb, *, qa_bound: str, ca_bound: str,
                               method: str, slack: float, intermediates=(None, None),
                               outward: bool = False, point_margin=0., query_point_margin=0.):
  """`rank_bounds` (QA by 'linear' where `qa_bound` is 'network') with each query's nearest
  same-class candidate's QA rank (`qa_bound` 'network') and CA rank (`ca_bound` 'network')
  tightened through `inputs.embed` with the relaxation of the linear `method`
  (`jaxcert.bounds.through_encoder`; config.ibp.spec_rows rows per query or candidate),
  reusing the boxes' `intermediates` (queries', candidates'; `embedding_bounds_and_intermediates`)
  where given; returned unchanged when neither is 'network'. `outward`: the rigorous float32,
  with the candidates' and queries' point margins (`point_margins`' 'candidate_distance' and
  'query_distance')."""
  if 'network' not in (qa_bound, ca_bound):
    return rank_bounds
  ibp_config = inputs.config.ibp
  columns = through_encoder.first_same_class_column(
      rank_bounds.indices, inputs.queries.labels, inputs.candidates.labels)
  settings = dict(method=method, max_rows=ibp_config.spec_rows, batch_size=ibp_config.batch_size,
                  distance_slack=slack, progress=inputs.config.get('progress_bar', True),
                  rounding='outward' if outward else 'nearest', sharding=inputs.batch_sharding)
  if qa_bound == 'network':
    rank_bounds, _ = through_encoder.tighten_query_attack_upper(
        rank_bounds, inputs.embed, inputs.queries.images, eps, *query_box, candidate_emb,
        columns, query_intermediates=intermediates[0], point_margin=point_margin, **settings)
  if ca_bound == 'network':
    rank_bounds, _ = through_encoder.tighten_candidate_attack_upper(
        rank_bounds, inputs.embed, inputs.candidates.images, eps, *candidate_box, query_emb,
        candidate_emb, columns, candidate_intermediates=intermediates[1],
        query_point_margin=query_point_margin, **settings)
  return rank_bounds


def rounding_check(inputs, eps: float) -> dict:
  """float32 rounding of the embeddings and boxes at `eps` against the distance slack.

  Measured on the first `config.ibp.batch_size` queries and as many candidates
  (`certified_retrieval.float32_rounding_error`; `inputs` holds the float32 encoder). Certified
  in float64, logs a warning, and says so in the returned text, when `distance_slack` exceeds the
  larger relative error by less than `ROUNDING_MARGIN` times: the certificates hold, but the
  float32 encoder as deployed may order near-ties otherwise. Certified in the rigorous float32
  (`config.ibp.dtype`), nothing rests on the slack; the text says which arithmetic certified.

  Returns:
    {'dtype', 'distance_slack', 'images', 'embedding', 'box', 'text'} (the errors relative to the
    magnitudes; 'text' is the paragraph for ibp.md).
  """
  ibp_config = inputs.config.ibp
  dtype = certification_dtype(ibp_config)
  count = int(ibp_config.batch_size)
  images = np.concatenate([np.asarray(inputs.queries.images[:count]),
                           np.asarray(inputs.candidates.images[:count])])
  error = certified_retrieval.float32_rounding_error(inputs.model.apply, inputs.variables, images, eps)
  slack = distance_slack(ibp_config)
  largest = max(error.values())
  margin = slack / largest if largest > 0 else float('inf')
  measured = (f'measured on {len(images)} images, float32 against float64, the embeddings are '
              f'within {error["embedding"]:.2g} of theirs and the boxes at eps = {eps:g} fall short '
              f'of theirs by at most {error["box"]:.2g}')
  if dtype == 'float32':
    text = (f'\nRounding: certified in float32 with outward rounding (config.ibp.dtype): every '
            f'bound contains that of the real-valued encoder, with distance_slack = {slack:g} '
            f'(docs/rigorous_float32.md). The float32 encoder as deployed: {measured}.\n')
    return {'dtype': dtype, 'distance_slack': slack, 'images': len(images), **error, 'text': text}
  text = (f'\nRounding: certified in float64 (config.ibp.dtype), whose rounding is ~1e-16 of the '
          f'magnitudes; distance bounds widened by distance_slack = {slack:g} of the magnitudes '
          f'(docs/bounds.md §10). The float32 encoder as deployed: {measured}: the slack is '
          f'{margin:.3g}x that.\n')
  if margin < ROUNDING_MARGIN:
    warning = (f'distance_slack {slack:g} is only {margin:.3g}x the measured float32 rounding '
               f'{largest:.2g} (fewer than {ROUNDING_MARGIN}x): the float32 encoder may order '
               'near-ties otherwise than the certified one.')
    logging.warning(warning)
    text += f'\n**Warning**: {warning}\n'
  return {'dtype': dtype, 'distance_slack': slack, 'images': len(images), **error, 'text': text}


BOX_RADIUS_PERCENTILES = (50, 90, 99)


def box_radius_percentiles(lower, upper) -> dict[int, float]:
  """Percentiles `BOX_RADIUS_PERCENTILES` of the box radii ||(upper - lower) / 2||_2, one per row."""
  radii = np.linalg.norm((np.asarray(upper, np.float64) - np.asarray(lower, np.float64)) / 2, axis=1)
  return {p: float(np.percentile(radii, p)) for p in BOX_RADIUS_PERCENTILES}


def certified_by(ibp_config) -> dict[str, str]:
  """What the certificates rest on: {'method', 'qa_bound', 'ca_bound', 'text'} ('text' is ibp.md's
  line)."""
  return {'method': ibp_config.method, 'qa_bound': ibp_config.qa_bound,
          'ca_bound': ibp_config.ca_bound,
          'text': (f'Certified by: embedding boxes from {METHODS[ibp_config.method]} '
                   f'(config.ibp.method = {ibp_config.method!r}); QA by '
                   f'{QA_BOUNDS[ibp_config.qa_bound]} (config.ibp.qa_bound = '
                   f'{ibp_config.qa_bound!r}); CA by {CA_BOUNDS[ibp_config.ca_bound]} '
                   f'(config.ibp.ca_bound = {ibp_config.ca_bound!r}).')}


def _tables(eps, ks, recall, sweep, nearest_distance: float, certified_by_text: str) -> str:
  """The markdown of ibp.md: recall and CR-Recall at eps, CR-Recall and box radii over the sweep."""
  at_eps = sweep[eps]['cr_recall']
  rows = [{'metric': 'Recall@K', **{f'K={k}': recall[k] for k in ks}}]
  for attack in certified_retrieval.ATTACKS:
    rows.append({'metric': f'CR-Recall@K ({attack.upper()})',
                 **{f'K={k}': at_eps[attack][k] for k in ks}})
  sweep_rows = [{'eps': radius, **{f'{attack.upper()}@{k}': result['cr_recall'][attack][k]
                                   for attack in certified_retrieval.ATTACKS for k in ks}}
                for radius, result in sorted(sweep.items())]
  box_rows = [{'eps': radius, **{f'{side} p{p}': result['box_radius'][side][p]
                                  for side in ('query', 'candidate') for p in BOX_RADIUS_PERCENTILES}}
              for radius, result in sorted(sweep.items())]
  return (f'Certified retrieval (Kakizaki et al.), eps = {eps:g}.\n{certified_by_text}\n\n'
          f'{report.markdown_table(rows)}\n\nCR-Recall@K over eps:\n\n'
          f'{report.markdown_table(sweep_rows)}\n\nBox radius ||(upper - lower) / 2|| of the '
          f'embeddings, percentiles (median distance from a query to its nearest candidate: '
          f'{nearest_distance:.4g}):\n\n{report.markdown_table(box_rows)}\n')


def compute(inputs) -> dict:
  """Certifies the encoder of `inputs` under QA and CA at every radius; writes nothing.

  Args:
    inputs: a `jaxcert.certification.CertifyInputs`.

  Returns:
    {'eps', 'ks', 'radii', 'sweep': {radius: `certify_at`'s dict}, 'recall': {K: Recall@K},
     'nearest_distance' (median distance from a query to its nearest candidate), 'rounding'
     (`rounding_check`), 'certified_by' (`certified_by`), 'embed_s'}.
  """
  config = inputs.config
  eps, ks, radii = check_ibp_config(config.ibp, len(inputs.candidates.labels))
  dtype = certification_dtype(config.ibp)
  if dtype == 'float32':
    outward_rounding.check_no_subnormals(inputs.variables)
  with certified_retrieval.certification_precision(dtype):
    certified_inputs = in_dtype(inputs, dtype)
    start = time.perf_counter()
    query_emb = retrieval.embed_in_batches(certified_inputs.embed, inputs.queries.images,
                                           config.ibp.batch_size, sharding=inputs.batch_sharding)
    candidate_emb = retrieval.embed_in_batches(certified_inputs.embed, inputs.candidates.images,
                                               config.ibp.batch_size,
                                               sharding=inputs.batch_sharding)
    embed_s = time.perf_counter() - start
    if query_emb.dtype != np.dtype(dtype):
      remedy = (f'certify with --config.ibp.dtype={query_emb.dtype}'
                if query_emb.dtype.name in DTYPES else
                'certify an encoder computing in float64 or float32 (Flax: no fixed `dtype`)')
      raise ValueError(f'The encoder computes in {query_emb.dtype} with {dtype} '
                       f'variables (a fixed dtype in the model?); {remedy}.')
    if dtype == 'float64':  # Rounded to nearest: the slack covers float64's rounding only.
      certified_retrieval.check_computes_in(certified_inputs.embed,
                                            inputs.queries.images.shape[1:], dtype)
    margins = (point_margins(certified_inputs, query_emb, candidate_emb) if dtype == 'float32'
               else None)
    sweep = {radius: certify_at(certified_inputs, query_emb, candidate_emb, radius, ks,
                                margins=margins)
             for radius in radii}
  with certified_retrieval.certification_precision('float32'):  # the float32 encoder (x64 off), against float64
    rounding = rounding_check(inputs, eps)
  indices = np.asarray(sweep[eps]['rank_bounds'].indices)
  recall = metrics.recall_at_k(inputs.queries.labels, inputs.candidates.labels[indices], ks)
  nearest_distance = float(np.median(np.linalg.norm(
      np.asarray(query_emb) - np.asarray(candidate_emb)[indices[:, 0]], axis=1)))
  return {'eps': eps, 'ks': ks, 'radii': radii, 'sweep': sweep, 'recall': recall,
          'nearest_distance': nearest_distance, 'rounding': rounding,
          'certified_by': certified_by(config.ibp), 'embed_s': embed_s}


def write_report(inputs, computed: dict, workdir: str) -> dict:
  """Writes `compute`'s results as the files of the module docstring; returns results.json's dict.

  Args:
    inputs: the `CertifyInputs` that `computed` was computed from.
    computed: `compute(inputs)`.
    workdir: output directory.

  Returns:
    {'eps', 'ks', 'recall@K', 'cr_recall_qa@K', 'cr_recall_ca@K', 'sweep', 'box_radius',
     'nearest_distance_median', 'rounding', 'certified_by', 'timing_s'}.
  """
  config = inputs.config
  eps, ks, radii, sweep, recall = (computed[key] for key in ('eps', 'ks', 'radii', 'sweep',
                                                              'recall'))
  nearest_distance, rounding = computed['nearest_distance'], computed['rounding']
  table = (_tables(eps, ks, recall, sweep, nearest_distance, computed['certified_by']['text'])
           + rounding['text'])
  print(table)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'ibp.md'), 'w', encoding='utf-8') as f:
    f.write(table)
  test_index, _ = data.query_candidate_split(
      len(inputs.dataset.test.labels), num_queries=config.eval.num_queries,
      num_candidates=config.eval.num_candidates, seed=config.eval.split_seed)
  certified = sweep[eps]['certified']
  per_query = [{'query': i, 'test_index': int(test_index[i]), 'label': int(label),
                **{f'{attack}@{k}': int(certified[attack][i, j])
                   for j, k in enumerate(ks) for attack in certified_retrieval.ATTACKS}}
               for i, label in enumerate(inputs.queries.labels)]
  report.write_tsv(os.path.join(workdir, 'ibp_per_query.tsv'), per_query)
  report.plot_curves(
      os.path.join(workdir, 'cr_recall_vs_k.png'),
      {'Recall@K': (ks, [recall[k] for k in ks]),
       **{f'CR-Recall@K ({attack.upper()})': (ks, [sweep[eps]['cr_recall'][attack][k] for k in ks])
          for attack in certified_retrieval.ATTACKS}},
      xlabel='K', ylabel='recall', title=f'eps = {eps:g}')
  report.plot_curves(
      os.path.join(workdir, 'cr_recall_vs_eps.png'),
      {f'{attack.upper()}, K={k}': (radii, [sweep[r]['cr_recall'][attack][k] for r in radii])
       for attack in certified_retrieval.ATTACKS for k in ks},
      xlabel='eps (L-inf, pixels in [0, 1])', ylabel='CR-Recall@K')
  return {
      'eps': eps, 'ks': list(ks),
      **{f'recall@{k}': recall[k] for k in ks},
      **{f'cr_recall_{attack}@{k}': sweep[eps]['cr_recall'][attack][k]
         for attack in certified_retrieval.ATTACKS for k in ks},
      'sweep': {str(radius): result['cr_recall'] for radius, result in sweep.items()},
      'box_radius': {str(radius): result['box_radius'] for radius, result in sweep.items()},
      'nearest_distance_median': nearest_distance,
      'rounding': {key: rounding[key]
                   for key in ('dtype', 'distance_slack', 'images', 'embedding', 'box')},
      'certified_by': {key: computed['certified_by'][key]
                       for key in ('method', 'qa_bound', 'ca_bound')},
      'timing_s': {'embed': computed['embed_s'],
                   'bounds': {str(r): result['bounds_s'] for r, result in sweep.items()},
                   'verify': {str(r): result['verify_s'] for r, result in sweep.items()}},
  }


def run(inputs, workdir: str) -> dict:
  """Certifies the encoder of `inputs` under QA and CA (`compute`) and writes the files
  (`write_report`).

  Args:
    inputs: a `jaxcert.certification.CertifyInputs`.
    workdir: output directory.

  Returns:
    `write_report`'s dict (certification.run writes it as results.json).
  """
  return write_report(inputs, compute(inputs), workdir)
