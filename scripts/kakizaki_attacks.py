"""Kakizaki et al. Table 2, empirical columns: ER-Recall@K under QA and CA (eps = 0.2) for trained models,
beside the paper's Table 1 Recall@K and Table 2 ER-Recall@K (Fashion-MNIST, Large CNN).

  python -m scripts.kakizaki_attacks --results results/kakizaki_attacks --workdir runs/kakizaki_attacks \
      --model Triplet=configs/fmnist_large_triplet.py:runs/fmnist_large_triplet \
      --model ACT=configs/fmnist_large_act.py:runs/fmnist_large_act \
      --data_dir /usr/share/datasets/fashion-mnist \
      --qa_queries 1000 --qa_steps 100 --ca_queries 50 --ca_steps 20

Each model is attacked by certify.py's mode 'attack' (`certification.run`) twice, QA and CA, with
their own query counts and PGD steps (Kakizaki et al.: all 1000 queries, 100 steps of eps/10, 100 CA
sources; CA costs num_queries x 100 sources x steps gradient steps, so a CPU run reduces it). Each
run writes its tables and plots to <workdir>/<NAME>/certify_attack_<kind> (checkpoints are only
read); when mode 'ibp' has run on a checkpoint (<checkpoint>/certify_ibp) its CR-Recall@K is put
beside ER-Recall@K there and here. A run whose results.json exists with the same attack settings
is read back instead of rerun, so models can be attacked by separate invocations (one --model
each) and the table assembled by a last one naming them all.
"""

import importlib.util
import json
import os

from absl import app
from absl import flags
from absl import logging

from jaxcert import certification
from jaxcert import report

_MODELS = flags.DEFINE_multi_string('model', None, 'NAME=CONFIG:CHECKPOINT (repeatable).')
_RESULTS = flags.DEFINE_string('results', None, 'Directory for the comparison table.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the attack runs (<workdir>/<NAME>/...).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'IDX directory (data.name=idx); None: tfds.')
_EPS = flags.DEFINE_float('eps', 0.2, 'L-inf budget (Kakizaki et al. Table 2: 0.2 for FMNIST).')
_QA_QUERIES = flags.DEFINE_integer('qa_queries', 1000, 'Queries attacked by QA (-1: all).')
_QA_STEPS = flags.DEFINE_integer('qa_steps', 100, 'PGD steps of QA.')
_CA_QUERIES = flags.DEFINE_integer('ca_queries', 1000, 'Queries attacked by CA (-1: all).')
_CA_STEPS = flags.DEFINE_integer('ca_steps', 100, 'PGD steps of CA.')
flags.mark_flags_as_required(['model', 'results', 'workdir'])

KS = (1, 10, 20, 40)
# Kakizaki et al., FMNIST rows (Large): Table 1 Recall@K; Table 2 ER-Recall@K (QA), ER-Recall@K (CA);
# Table 2's CR-Recall@K is 0.00 for both under QA and CA at every K.
PAPER = {'Triplet': {'Recall': (0.89, 0.98, 0.99, 0.99), 'ER-QA': (0.00, 0.09, 0.14, 0.20),
                     'ER-CA': (0.04, 0.11, 0.14, 0.19), 'CR-QA': (0.0,) * 4, 'CR-CA': (0.0,) * 4},
         'ACT': {'Recall': (0.83, 0.97, 0.98, 0.99), 'ER-QA': (0.74, 0.95, 0.97, 0.98),
                 'ER-CA': (0.57, 0.92, 0.96, 0.99), 'CR-QA': (0.0,) * 4, 'CR-CA': (0.0,) * 4}}
COLUMNS = ('Recall', 'ER-QA', 'ER-CA', 'CR-QA', 'CR-CA')


def measured_row(name: str, results: dict) -> dict:
  """Our numbers: Recall@K and ER-Recall@K of the QA and CA runs, CR-Recall@K when 'ibp' ran."""
  row = {'method': name, 'source': 'ours'}
  for column in COLUMNS:
    kind = 'ca' if column.endswith('CA') else 'qa'
    measured = results[kind]['rows'][0]
    comparison = results[kind]['ibp_comparison']
    certified = {r['K']: r[f'cr_{kind}'] for r in comparison['rows']} if comparison else {}
    for k in KS:
      if column.startswith('CR'):
        value = certified.get(k)
      else:
        value = measured[f'recall@{k}' if column == 'Recall' else f'er_recall@{k}']
      row[f'{column}@{k}'] = '-' if value is None else f'{value:.2f}'
  return row


def paper_row(name: str) -> dict:
  values = PAPER.get(name, {})
  return {'method': name, 'source': 'paper', **{
      f'{column}@{k}': f'{values[column][index]:.2f}' if column in values else '-'
      for column in COLUMNS for index, k in enumerate(KS)}}


def attack(config_path: str, checkpoint: str, workdir: str, kind: str, num_queries: int,
           num_steps: int) -> dict:
  """Mode 'attack' of certify.py on one checkpoint and one kind; returns its results."""
  spec = importlib.util.spec_from_file_location('experiment_config', config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if _DATA_DIR.value:
    config.data.name, config.data.data_dir = 'idx', _DATA_DIR.value
  config.checkpoint = checkpoint
  config.certify.mode = 'attack'
  config.attack.update(kinds=(kind,), eps=(_EPS.value,), ks=KS, num_queries=num_queries,
                       num_steps=num_steps)
  out = os.path.join(workdir, f'certify_attack_{kind}')
  if os.path.exists(os.path.join(out, 'results.json')):  # A finished run with these settings: reuse it.
    with open(os.path.join(out, 'config.json'), encoding='utf-8') as f:
      if json.load(f)['attack'] == json.loads(config.attack.to_json_best_effort()):
        with open(os.path.join(out, 'results.json'), encoding='utf-8') as f:
          return json.load(f)
  return certification.run(config, out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  rows = []
  for spec in _MODELS.value:
    name, _, paths = spec.partition('=')
    config_path, _, checkpoint = paths.partition(':')
    workdir = os.path.join(_WORKDIR.value, name)
    results = {kind: attack(config_path, checkpoint, workdir, kind, queries, steps)
               for kind, queries, steps in (('qa', _QA_QUERIES.value, _QA_STEPS.value),
                                            ('ca', _CA_QUERIES.value, _CA_STEPS.value))}
    rows += [measured_row(name, results), paper_row(name)]
  table = report.write_table(os.path.join(_RESULTS.value, 'table2_er_recall'), rows)
  print(table)


if __name__ == '__main__':
  app.run(main)
