"""CR-Recall@K of one checkpoint under every combination of embedding-bound method, QA bound and slack.

  python -m scripts.certificate_comparison --config configs/embedded_small_tbt.py \
      --config.checkpoint=runs/embedded_small_tbt --name embedded_small_tbt \
      --eps 0.05,0.1,0.2 --methods ibp --qa_bounds kakizaki,linear --slacks 1e-5,1e-9 \
      --out results/certificate_comparison

For each method of `config.ibp.method` (`--methods`, e.g. ibp,crown_ibp,crown) and radius, the
query and candidate embedding boxes are computed once (timed, after a first call that compiles);
for each QA bound of `config.ibp.qa_bound` (`--qa_bounds`: Kakizaki et al. Theorem 1, the
linear specification of docs/bounds.md §13, or 'network', that specification also bounded through
the encoder for each query's nearest same-class candidate, with the method's relaxation: linear
methods only), CA bound (`--ca_bounds`: Theorem 2 over the boxes, 'kakizaki', or 'network', the
candidates' distance lower bounds also through the encoder) and distance slack, `rank_bounds` gives QA and CA rank bounds (timed, the network
bounds included) and CR-Recall@K (Kakizaki et al. Eq. 25). CA does not depend on the QA bound. Everything is computed as
certify.py mode ibp does (`jaxcert.evaluation.ibp`'s `embedding_boxes` and `certified_rank_bounds`:
`config.ibp.dtype`, float64 on CPU by default, the rigorous float32 with its point margins,
full matmul precision) on the query/candidate split of `config.eval`.

Writes <out>/<name>.md (the table, with the command) and <out>/<name>.json (the rows).
"""

import itertools
import json
import os
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from jaxcert import certification
from jaxcert import report
from jaxcert import retrieval
from jaxcert.bounds import retrieval as certified_retrieval
from jaxcert.evaluation import ibp

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config (with checkpoint).',
                                          lock_config=True)
_NAME = flags.DEFINE_string('name', None, 'Name of the checkpoint in the table and file names.')
_OUT = flags.DEFINE_string('out', 'results/certificate_comparison', 'Output directory.')
_EPS = flags.DEFINE_list('eps', ['0.1', '0.2'], 'L-inf radii.')
_KS = flags.DEFINE_list('ks', ['1', '10', '20', '40'], 'K of CR-Recall@K.')
_METHODS = flags.DEFINE_list('methods', ['ibp'], f'Embedding-bound methods, of {list(ibp.METHODS)}.')
_QA_BOUNDS = flags.DEFINE_list('qa_bounds', ['kakizaki', 'linear'],
                               f'QA bounds, of {list(ibp.QA_BOUNDS)}.')
_CA_BOUNDS = flags.DEFINE_list('ca_bounds', ['kakizaki'], f'CA bounds, of {list(ibp.CA_BOUNDS)}.')
_SLACKS = flags.DEFINE_list('slacks', [str(certified_retrieval.DEFAULT_DISTANCE_SLACK)],
                            'Distance slacks (docs/bounds.md §10).')
flags.mark_flags_as_required(['config', 'name'])


def compare(inputs, radii, ks, methods, qa_bounds, slacks, ca_bounds=('kakizaki',)) -> list[dict]:
  """One row per (method, radius, QA bound, CA bound, slack): CR-Recall@K under QA and CA, and
  timings."""
  ibp_config = inputs.config.ibp
  for method in methods:
    ibp.embedding_bound_transform(method)  # Unknown or unavailable methods fail before any work.
  for qa_bound in qa_bounds:
    if qa_bound not in ibp.QA_BOUNDS:
      raise ValueError(f'Unknown QA bound {qa_bound!r}; valid: {list(ibp.QA_BOUNDS)}.')
  for ca_bound in ca_bounds:
    if ca_bound not in ibp.CA_BOUNDS:
      raise ValueError(f'Unknown CA bound {ca_bound!r}; valid: {list(ibp.CA_BOUNDS)}.')
  if 'network' in (*qa_bounds, *ca_bounds) and set(methods) - set(ibp.LINEAR_METHODS):
    raise ValueError(f"QA or CA bound 'network' needs linear methods "
                     f'({list(ibp.LINEAR_METHODS)}), got {methods}.')
  rows = []
  dtype = ibp.certification_dtype(ibp_config)  # 'auto' resolved for this backend
  with certified_retrieval.certification_precision(dtype):
    certified_inputs = ibp.in_dtype(inputs, dtype)
    query_emb, candidate_emb = (
        retrieval.embed_in_batches(certified_inputs.embed, images, ibp_config.batch_size)
        for images in (inputs.queries.images, inputs.candidates.images))

    network = 'network' in (*qa_bounds, *ca_bounds)
    margins = (ibp.point_margins(certified_inputs, query_emb, candidate_emb)
               if dtype == 'float32' else None)  # (the rigorous float32's)

    def boxes(method, eps, count=None):  # (of the first `count` images of each set only)
      """(query box, candidate box), and with 'network' bounds their intermediate bounds."""
      return ibp.embedding_boxes(certified_inputs, eps, method, query_emb.dtype, network=network,
                                 count=count)

    def ranks(query_box, candidate_box, qa_bound, ca_bound, slack, method, eps, intermediates):
      return ibp.certified_rank_bounds(
          certified_inputs, query_emb, candidate_emb, eps, max(ks), (query_box, candidate_box),
          intermediates, qa_bound=qa_bound, ca_bound=ca_bound, method=method, slack=slack,
          margins=margins)

    for method in methods:
      # Compiles on one batch (the same shapes), so that the times below exclude it.
      boxes(method, radii[0], ibp_config.batch_size)
      compiled = set()
      for eps in radii:
        start = time.perf_counter()
        (query_box, candidate_box), intermediates = boxes(method, eps)
        bounds_s = time.perf_counter() - start
        for qa_bound, ca_bound, slack in itertools.product(qa_bounds, ca_bounds, slacks):
          settings = (qa_bound, ca_bound, slack, method, eps, intermediates)
          if (qa_bound, ca_bound) not in compiled:  # A first call compiles, excluded below.
            ranks(query_box, candidate_box, *settings)
            compiled.add((qa_bound, ca_bound))
          start = time.perf_counter()
          rank_bounds = ranks(query_box, candidate_box, *settings)
          rank_s = time.perf_counter() - start
          recall = certified_retrieval.cr_recall_at_k(certified_retrieval.certified_retrieval(
              rank_bounds, inputs.queries.labels, inputs.candidates.labels, ks), ks)
          rows.append({'method': method, 'qa_bound': qa_bound, 'ca_bound': ca_bound,
                       'slack': slack, 'eps': eps, **{f'QA@{k}': recall['qa'][k] for k in ks},
                       **{f'CA@{k}': recall['ca'][k] for k in ks},
                       'bounds_s': bounds_s, 'rank_bounds_s': rank_s})
          print(rows[-1], flush=True)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  inputs = certification.load_inputs(config)
  radii = [float(eps) for eps in _EPS.value]
  ks = tuple(int(k) for k in _KS.value)
  rows = compare(inputs, radii, ks, _METHODS.value, _QA_BOUNDS.value,
                 [float(slack) for slack in _SLACKS.value], _CA_BOUNDS.value)
  os.makedirs(_OUT.value, exist_ok=True)
  command = 'python -m scripts.certificate_comparison ' + ' '.join(sys.argv[1:])
  header = (f'# {_NAME.value}: CR-Recall@K by embedding-bound method, QA bound and slack\n\n'
            f'Checkpoint step {inputs.checkpoint_step}, {len(inputs.queries.labels)} queries, '
            f'{len(inputs.candidates.labels)} candidates, certified in {ibp.certification_dtype(config.ibp)}. '
            f'Times in seconds on this machine, compilation excluded (bounds_s: the query and '
            f'candidate embedding boxes at that eps, shared by the rows of one method and eps; '
            f'rank_bounds_s: QA and CA rank bounds, with the \'network\' bounds through the '
            f'encoder).\n\n    {command}\n\n')
  table_rows = [{**row, 'slack': f'{row["slack"]:g}', 'eps': f'{row["eps"]:g}',
                 'bounds_s': f'{row["bounds_s"]:.1f}', 'rank_bounds_s': f'{row["rank_bounds_s"]:.1f}'}
                for row in rows]
  with open(os.path.join(_OUT.value, f'{_NAME.value}.md'), 'w', encoding='utf-8') as f:
    f.write(header + report.markdown_table(table_rows) + '\n')
  with open(os.path.join(_OUT.value, f'{_NAME.value}.json'), 'w', encoding='utf-8') as f:
    json.dump({'command': command, 'checkpoint_step': inputs.checkpoint_step, 'rows': rows}, f,
              indent=1)


if __name__ == '__main__':
  app.run(main)
