"""Regenerates every results table of results/ from the files the runs wrote.

Each paper's results/<paper>/README.md has one main table, between the two marker lines below: per
row the paper's table (or figure) and row it reproduces, the paper's number, ours, the config, the
command that produced ours and its budget. Our numbers are read from the results files in results/
(results.json, the scripts' .tsv / .md tables, per-query TSVs), never typed here; the paper's
numbers, the commands and the budgets are the provenance this script records. It also writes the
index results/README.md (one line per paper, its headline number and a link) and
results/kakizaki/tables.md (every Kakizaki et al. run, main and exploration, by
scripts/kakizaki_report.py). The text outside the markers is the README's own.

  python -m scripts.results_tables           # rewrite the tables
  python -m scripts.results_tables --check   # exit 1, naming them, if tables on disk differ

tests/test_results_tables.py runs `--check`, so a table cannot drift from its data.
"""

import argparse
import csv
import json
import pathlib
import sys
from typing import Callable, NamedTuple

import numpy as np

from jaxcert import smoothing
from scripts import kakizaki_report

RESULTS = pathlib.Path(__file__).resolve().parents[1] / 'results'
BEGIN = '<!-- results_tables.py: begin (written by python -m scripts.results_tables; edit it there) -->'
END = '<!-- results_tables.py: end -->'
COLUMNS = ('reproduces', 'paper', 'ours', 'config', 'command', 'budget')
FASHION_MNIST = '--config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist'
MNIST = '--config.data.name=idx --config.data.data_dir=data/mnist'  # from scripts/get_mnist_idx.sh


class Row(NamedTuple):
  """One line of a main table: a paper cell (or our own measurement) and our number beside it."""
  reproduces: str  # the paper's table / figure and row
  paper: str       # the paper's number ('-' where the paper gives none)
  ours: str        # read from a results file
  config: str      # configs/<name>.py[:variant]
  command: str     # the key of the command (in Section.commands) that produced `ours`
  budget: str      # steps / samples / time; 'reduced' where below the paper's


class Section(NamedTuple):
  """The main table of results/<directory>/README.md and its line in the index."""
  title: str       # the paper (or jaxcert's own measurement)
  directory: str   # under results/
  rows: list
  commands: dict   # key -> shell lines (from the repository root)
  headline: str    # the index's line, with numbers read from the results files
  preamble: str = ''  # shell variables the commands use


def _read_json(path: pathlib.Path) -> dict:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _read_tsv(path: pathlib.Path) -> list[dict]:
  with open(path, encoding='utf-8') as f:
    return list(csv.DictReader(f, delimiter='\t'))


def _slash(values, digits: int = 3) -> str:
  return ' / '.join(f'{value:.{digits}f}' for value in values)


# ---------------------------------------------------------------------------
# Kakizaki et al. 2023: Tables 1-2 (Recall@K, ER- and CR-Recall@K, Large CNN).
# ---------------------------------------------------------------------------

KAKIZAKI_KS = (1, 10, 20, 40)
KAKIZAKI_PAPER_STEPS = '60,000'  # 100 epochs of 600 steps (Sec. 5.1.4: batch 100, 60,000 images)
# (dataset, method, run directory, config, what the row is) of the main table.
KAKIZAKI_MAIN = (
    ('fmnist', 'triplet', 'fmnist_large_triplet', 'configs/fmnist_large_triplet.py:reduced', 'Large'),
    ('fmnist', 'cibp', 'fmnist_large_cibp', 'configs/fmnist_large_cibp.py:reduced', 'Large'),
    ('fmnist', 'tbt', 'fmnist_large_tbt_eq20', 'configs/fmnist_large_tbt.py:reduced', 'Large'),
    ('fmnist', 'fctb', 'fmnist_large_fctb_from_eq20', 'configs/fmnist_large_fctb.py', 'Large'),
    ('fmnist', 'tbt', 'fmnist_small_tbt_full', 'configs/fmnist_small_tbt.py:reduced', 'Small'),
    ('mnist', 'triplet', 'mnist_large_triplet', 'configs/mnist_large_triplet.py:reduced', 'Large'),
    ('mnist', 'cibp', 'mnist_large_cibp', 'configs/mnist_large_cibp.py:reduced', 'Large'),
    ('mnist', 'tbt', 'mnist_large_tbt_eq20', 'configs/mnist_large_tbt.py:reduced', 'Large'),
    ('mnist', 'fctb', 'mnist_large_fctb_from_eq20', 'configs/mnist_large_fctb.py', 'Large'),
    ('mnist', 'tbt', 'mnist_small_tbt_full', 'configs/mnist_small_tbt.py:reduced', 'Small'),
)
# Every run of results/kakizaki/tables.md, in its order: (dataset:method, directory under results/kakizaki).
KAKIZAKI_TABLES = (
    'fmnist:triplet=fmnist_large_triplet', 'fmnist:cibp=fmnist_large_cibp',
    'fmnist:tbt=explorations/fmnist_large_tbt_clip_ramp2000', 'fmnist:tbt=fmnist_large_tbt_eq20',
    'fmnist:fctb=explorations/fmnist_large_fctb_from5700', 'fmnist:fctb=fmnist_large_fctb_from_eq20',
    'fmnist:tbt=explorations/fmnist_small_tbt_paper_ramp', 'fmnist:tbt=fmnist_small_tbt_full',
    'mnist:triplet=mnist_large_triplet', 'mnist:cibp=mnist_large_cibp',
    'mnist:tbt=explorations/mnist_large_tbt_clip_ramp2000', 'mnist:tbt=mnist_large_tbt_eq20',
    'mnist:fctb=explorations/mnist_large_fctb_from3000', 'mnist:fctb=mnist_large_fctb_from_eq20',
    'mnist:tbt=explorations/mnist_small_tbt_paper_ramp', 'mnist:tbt=mnist_small_tbt_full',
    'mnist:tbt=explorations/mnist_small_tbt_100ep', 'mnist:tbt=explorations/mnist_small_tbt_full_seed1',
    'fmnist:tbt=explorations/fmnist_small_tbt_full_rerun', 'fmnist:tbt=explorations/fmnist_small_tbt_100ep',
    'fmnist:tbt=explorations/fmnist_small_tbt_full_seed1',
    'mnist:tbt=explorations/mnist_small_tbt_full_seed2',
    'mnist:fctb=explorations/mnist_small_fctb_from_seed2',
    'fmnist:fctb=explorations/fmnist_small_fctb_from_seed1',
)


def _train(config: str, workdir: str, *flags: str) -> str:
  return ' '.join(('python train.py --config', config, '--workdir', workdir) + flags)


def _certify(config: str, checkpoint: str, *flags: str) -> str:
  return ' '.join(('python certify.py --config', config, f'--config.checkpoint={checkpoint}') + flags)


def certified_as(results: dict) -> tuple[str, ...]:
  """The certify.py flags that certify as `results` (a results.json of mode 'ibp') was certified.

  Results written before certify.py recorded them were certified in float32 (the dtype is in
  `rounding` since float64 became the default) with Theorem 1's QA bound (`certified_by` since the
  linear QA bound became the default, 'qa_bound' = 'kakizaki').
  """
  dtype = results.get('rounding', {}).get('dtype', 'float32')
  certified_by = results.get('certified_by', {'method': 'ibp', 'qa_bound': 'kakizaki'})
  method = () if certified_by['method'] == 'ibp' else (f'--config.ibp.method={certified_by["method"]}',)
  ca_bound = certified_by.get('ca_bound', 'kakizaki')  # (recorded since the 'network' CA bound)
  ca = () if ca_bound == 'kakizaki' else (f'--config.ibp.ca_bound={ca_bound}',)
  return method + (f'--config.ibp.qa_bound={certified_by["qa_bound"]}', *ca,
                   f'--config.ibp.dtype={dtype}')


def _kakizaki_commands(flags: dict) -> dict:
  """The commands of the main table's runs (scripts/kakizaki_reproduce.sh runs them all);
  `flags[run]`: the certify.py flags of `certified_as` for each run."""
  commands = {}
  for dataset, data in (('fmnist', '$FM'), ('mnist', '$MN')):
    large = f'{dataset}_large'
    for method in ('triplet', 'cibp'):
      config, run = f'configs/{large}_{method}.py', f'runs/{large}_{method}'
      commands[f'{large}_{method}'] = [_train(f'{config}:reduced', run, data),
                                       _certify(config, run, data, *flags[f'{large}_{method}'])]
    if dataset == 'fmnist':  # TBT starts from the Triplet run's step 1500 (the paper: 2K triplet steps).
      triplet = 'runs/fmnist_large_triplet_step1500'
      start = [f'mkdir -p {triplet}/checkpoints',
               f'cp -r runs/fmnist_large_triplet/checkpoints/1500 {triplet}/checkpoints/']
      branch, end, decays = 5700, 7000, '10.833,11.333'
    else:
      start, triplet, branch, end, decays = [], 'runs/mnist_large_triplet', 3000, 4300, '6.333,6.833'
    config, run = f'configs/{large}_tbt.py', f'runs/{large}_tbt_eq20'
    first = f'runs/{large}_tbt_clip_ramp2000'
    commands[f'{large}_tbt_eq20'] = start + [
        f'# T over the active triplets (mining batch_all), then Eq. 20\'s balance from step {branch}',
        _train(f'{config}:reduced', first, data, f'--config.init_from={triplet}',
               '--config.loss.mining=batch_all'),
        _train(f'{config}:reduced', run, data, f'--config.resume_from={first}@{branch}',
               f'--config.num_steps={end}', f'"--config.lr_decay_epochs=({decays})"'),
        _certify(config, run, data, *flags[f'{large}_tbt_eq20'])]
    config, run = f'configs/{large}_fctb.py', f'runs/{large}_fctb_from_eq20'
    commands[f'{large}_fctb_from_eq20'] = [
        _train(config, run, data, f'--config.init_from=runs/{large}_tbt_eq20'),
        _certify(config, run, data, *flags[f'{large}_fctb_from_eq20'])]
    config, run = f'configs/{dataset}_small_tbt.py', f'runs/{dataset}_small_tbt_full'
    commands[f'{dataset}_small_tbt_full'] = [_train(f'{config}:reduced', run, data),
                                             _certify(config, run, data, *flags[f'{dataset}_small_tbt_full'])]
  commands['kakizaki_attacks'] = [
      '# ACT: 200 steps of configs/fmnist_large_act.py from the Triplet run\'s step-1500 checkpoint',
      '# (the exact training command was not recorded); then both models attacked:',
      'python -m scripts.kakizaki_attacks --results results/kakizaki_attacks '
      '--workdir runs/kakizaki_attacks_reduced '
      '--model Triplet=configs/fmnist_large_triplet.py:runs/fmnist_large_triplet '
      '--model ACT=configs/fmnist_large_act.py:runs/fmnist_large_act '
      '--data_dir /usr/share/datasets/fashion-mnist '
      '--qa_queries 200 --qa_steps 20 --ca_queries 20 --ca_steps 10']
  return commands


def _kakizaki_values(results: dict) -> tuple[list, list, list]:
  """(Recall@K, CR-Recall@K QA, CA) at K = 1, 10, 20, 40 of a certify.py results.json."""
  return ([results[f'recall@{k}'] for k in KAKIZAKI_KS],
          [results[f'cr_recall_qa@{k}'] for k in KAKIZAKI_KS],
          [results[f'cr_recall_ca@{k}'] for k in KAKIZAKI_KS])


def kakizaki(root: pathlib.Path) -> Section:
  """Kakizaki et al. Tables 1-2 (Large CNN) beside our runs, and our Small CNN on the paper's schedule."""
  directory = root / 'kakizaki'
  names = {'fmnist': 'FMNIST', 'mnist': 'MNIST'}
  rows, headline_values, flags = [], None, {}
  for dataset, method, run, config, model in KAKIZAKI_MAIN:
    results = _read_json(directory / run / 'results.json')
    flags[run] = certified_as(results)
    if abs(results['eps'] - 0.2) > 1e-9:
      raise ValueError(f'{run}: certified at eps {results["eps"]}, Table 2 is at 0.2.')
    recall, qa, ca = _kakizaki_values(results)
    key = (dataset, method)
    paper = (f'R {_slash(kakizaki_report.PAPER_RECALL[key], 2)}<br>'
             f'QA {_slash(kakizaki_report.PAPER_CR_QA[key], 2)}<br>'
             f'CA {_slash(kakizaki_report.PAPER_CR_CA[key], 2)}')
    step = kakizaki_report.certified_step(str(directory / run), results)
    method_name = kakizaki_report.METHOD_NAMES[method]
    if model == 'Large':
      reproduces = f'Tables 1-2, {names[dataset]}, {method_name}'
      budget = ('200 steps on the 1000 candidates after the TBT row (the paper\'s are in its appendix)'
                if method == 'fctb' else f'step {step} of the paper\'s {KAKIZAKI_PAPER_STEPS}: reduced')
    else:  # The paper's Small CNN values are in its appendix, which our copy lacks.
      reproduces = (f'{names[dataset]}, {method_name} on the Small CNN with the paper\'s schedule '
                    '(paper: its Large CNN; its Small values are in an appendix our copy lacks)')
      budget = f'step {step} (epoch 50) of the paper\'s {KAKIZAKI_PAPER_STEPS}: reduced'
    ours = f'R {_slash(recall)}<br>QA {_slash(qa)}<br>CA {_slash(ca)}'
    rows.append(Row(reproduces, paper, ours, f'`{config}`', run, budget))
    if run == 'fmnist_large_tbt_eq20':
      headline_values = qa, step
  for line in _read_tsv(root / 'kakizaki_attacks' / 'table2_er_recall.tsv'):
    if line['source'] != 'ours':
      continue
    paper = next(p for p in _read_tsv(root / 'kakizaki_attacks' / 'table2_er_recall.tsv')
                 if p['source'] == 'paper' and p['method'] == line['method'])
    er = lambda row: (f'ER-QA {" / ".join(row[f"ER-QA@{k}"] for k in KAKIZAKI_KS)}<br>'
                      f'ER-CA {" / ".join(row[f"ER-CA@{k}"] for k in KAKIZAKI_KS)}')
    config = {'Triplet': 'configs/fmnist_large_triplet.py:reduced', 'ACT': 'configs/fmnist_large_act.py'}
    trained = {'Triplet': 'the Triplet row\'s model', 'ACT': 'ACT trained 200 steps'}[line['method']]
    rows.append(Row(f'Table 2, FMNIST, {line["method"]}: ER-Recall@K under PGD', er(paper), er(line),
                    f'`{config[line["method"]]}`', 'kakizaki_attacks',
                    f'{trained}; QA: 200 queries x 20 PGD steps, CA: 20 queries x 10 steps (paper: 1000 '
                    'queries x 100 steps): reduced'))
  qa, step = headline_values
  paper_qa = kakizaki_report.PAPER_CR_QA['fmnist', 'tbt']
  headline = (f'FMNIST Large CNN, TBT at eps 0.2, step {step} of {KAKIZAKI_PAPER_STEPS}: QA '
              f'CR-Recall@10/20/40 {_slash(qa[1:])} (paper {_slash(paper_qa[1:], 2)}); Triplet '
              'certifies 0, as in the paper')
  preamble = f'FM="{FASHION_MNIST}"\nMN="{MNIST}"  # scripts/get_mnist_idx.sh'
  return Section('Kakizaki et al. 2023', 'kakizaki', rows, _kakizaki_commands(flags), headline, preamble)


def kakizaki_tables(root: pathlib.Path) -> str:
  """results/kakizaki/tables.md: every run beside Tables 1-2 (scripts/kakizaki_report.py)."""
  runs = []
  for item in KAKIZAKI_TABLES:
    key, run = item.split('=')
    dataset, method = key.split(':')
    runs.append((dataset, method, str(root / 'kakizaki' / run)))
  return kakizaki_report.tables(runs)


# ---------------------------------------------------------------------------
# RetrievalGuard (Wu et al. 2022): certified Recall@1(r) by Gaussian smoothing.
# ---------------------------------------------------------------------------

RETRIEVALGUARD_SIGMAS = ('0.1', '0.25', '0.5', '1.0')
RETRIEVALGUARD_BUDGET = ('10 epochs; 100 leave-one-out test queries, n = 10,000 samples '
                         '(paper: 100,000): reduced')


def _smoothed(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(radius, correct) of a per-query TSV of certify.py mode 'smoothing'."""
  rows = _read_tsv(path)
  return (np.array([float(r['radius']) for r in rows]), np.array([r['correct'] == '1' for r in rows]))


def _certified_recall(curve) -> float:
  """Certified Recall@1(0) (RetrievalGuard Sec. 4.3)."""
  return float(smoothing.certified_recall_at_1(curve[0], curve[1], [0.0])[0])


def _mean_radius(curve) -> float:
  """The area under Recall@1(r): the mean certified radius, 0 for an abstained or wrong query."""
  radius, correct = curve
  return float(np.mean(np.where(correct & (radius >= 0), radius, 0.0)))


def _median_radius(curve) -> float:
  """The median certified radius over the certified correct queries (-1 if none)."""
  radius, correct = curve
  certified = correct & (radius >= 0)
  return float(np.median(radius[certified])) if certified.any() else -1.0


def retrievalguard(root: pathlib.Path) -> Section:
  """RetrievalGuard's figures (the paper gives no numbers in its text) beside our Fashion-MNIST runs."""
  tsv = root / 'retrievalguard' / 'tsv'
  read = lambda stem: _smoothed(tsv / f'{stem}.tsv')
  rows = []
  for sigma in RETRIEVALGUARD_SIGMAS:
    dml = read(f'fmnist_small_margin_smoothing_sigma{sigma}_retrievalguard')
    gdml = read(f'fmnist_small_gdml{sigma}_smoothing_retrievalguard')
    rows.append(Row(
        f'Fig. 2, sigma {sigma}: DML+RG vs GDML+RG',
        'GDML+RG above DML+RG at every sigma (a plot, on CUB, CARS, SOP)',
        f'certified Recall@1(0) DML {_certified_recall(dml):.2f}, GDML {_certified_recall(gdml):.2f}; '
        f'mean certified radius {_mean_radius(dml):.4f} / {_mean_radius(gdml):.4f}',
        f'`configs/fmnist_small_margin.py`, `configs/fmnist_small_gdml.py:{sigma}`',
        'retrievalguard_curves', RETRIEVALGUARD_BUDGET))
  n_curves = [read(f'fmnist_small_gdml1.0_ablation_n_retrievalguard_n_{n}') for n in (1000, 10000, 100000)]
  rows.append(Row(
      'Fig. 3 middle: n (GDML+RG, sigma 1)', 'Recall@1(r) improves significantly from n = 1,000 to 100,000',
      'certified Recall@1(0) at n = 1,000 / 10,000 / 100,000: '
      + _slash([_certified_recall(c) for c in n_curves], 3),
      '`configs/fmnist_small_gdml_ablation_n.py`', 'retrievalguard_ablations',
      '40 leave-one-out test queries, n up to 100,000'))
  alphas = ('0.0001', '0.001', '0.01', '0.1')
  alpha_curves = [read(f'fmnist_small_gdml1.0_ablation_alpha_retrievalguard_alpha_{a}') for a in alphas]
  rows.append(Row(
      'Fig. 3 right: alpha (GDML+RG, sigma 1)', 'Recall@1(r) stable under alpha',
      f'median certified radius at alpha {" / ".join(alphas)}: '
      + _slash([_median_radius(c) for c in alpha_curves], 4),
      '`configs/fmnist_small_gdml_ablation_alpha.py`', 'retrievalguard_ablations', RETRIEVALGUARD_BUDGET))
  k_curves = [read('fmnist_small_gdml_k32_smoothing_retrievalguard'),
              read('fmnist_small_gdml1.0_smoothing_retrievalguard'),
              read('fmnist_small_gdml_k512_smoothing_retrievalguard')]
  rows.append(Row(
      'Fig. 4: embedding dimension k (GDML+RG, sigma 1)', 'more robust with larger k',
      f'mean certified radius at k = 32 / 128 / 512: {_slash([_mean_radius(c) for c in k_curves], 4)}',
      '`configs/fmnist_small_gdml_ablation_k.py:32`, `:512`, `configs/fmnist_small_gdml.py:1.0`',
      'retrievalguard_ablations', RETRIEVALGUARD_BUDGET))
  bisector = read('fmnist_small_gdml0.5_smoothing_bisector')
  paper_style = read('fmnist_small_gdml0.5_smoothing_retrievalguard')
  rows.append(Row(
      'jaxcert\'s best: the bisector certificate (docs/smoothing.md Sec. 5), GDML sigma 0.5',
      f'RG on the same samples: certified Recall@1(0) {_certified_recall(paper_style):.2f}, mean radius '
      f'{_mean_radius(paper_style):.4f}',
      f'certified Recall@1(0) {_certified_recall(bisector):.2f}, mean radius {_mean_radius(bisector):.4f}',
      '`configs/fmnist_small_gdml.py:0.5`', 'retrievalguard_curves', RETRIEVALGUARD_BUDGET))
  dml = read('fmnist_small_margin_smoothing_sigma0.5_retrievalguard')
  gdml = read('fmnist_small_gdml0.5_smoothing_retrievalguard')
  headline = (f'Fashion-MNIST Small CNN, 100 queries, n = 10,000: at sigma 0.5 certified Recall@1(0) '
              f'{_certified_recall(gdml):.2f} with GDML against {_certified_recall(dml):.2f} without '
              '(RetrievalGuard\'s certificate)')
  experiments = 'sh scripts/retrievalguard_experiments.sh'
  commands = {
      'retrievalguard_curves': [f'{experiments} train', f'{experiments} curves', f'{experiments} report'],
      'retrievalguard_ablations': [f'{experiments} train', f'{experiments} ablations',
                                   f'{experiments} report'],
  }
  return Section('RetrievalGuard (Wu et al. 2022)', 'retrievalguard', rows, commands, headline)


# ---------------------------------------------------------------------------
# Panum et al. 2021, Appendix E: two Gaussians, natural vs adversarially trained.
# ---------------------------------------------------------------------------

def panum(root: pathlib.Path) -> Section:
  """Panum et al. App. E beside results/panum/synthetic.tsv (lr 1e-3) and lr1e-6/synthetic.tsv."""
  rows, headline = [], {}
  for name, lr, path in (
      ('panum', '1e-3', root / 'panum' / 'synthetic.tsv'),
      ('panum_lr1e-6', '1e-6 (the paper\'s)', root / 'panum' / 'lr1e-6' / 'synthetic.tsv')):
    for line in _read_tsv(path):
      if abs(float(line['eps']) - 0.01) > 1e-9:  # The paper reports eps = 0.01 only.
        continue
      model = line['model'].split(' (')[0]
      rows.append(Row(
          f'App. E, {model} model, eps 0.01', f'R@1 {float(line["paper benign R@1"]):.1f} benign, '
          f'{float(line["paper adversarial R@1"]):.1f} under attack',
          f'R@1 {float(line["benign R@1"]):.1f} benign, {line["adversarial R@1"]} under attack',
          '`configs/synthetic_mlp_adversarial.py`', name,
          f'25 epochs at lr {lr}, 5 attack seeds (as the paper); an MLP, not its pre-trained ResNet-50'))
      if name == 'panum':
        headline[model] = line
  headline = (f'two Gaussians, App. E, eps 0.01: the adversarially trained model keeps R@1 '
              f'{headline["robust"]["adversarial R@1"]} under attack (paper '
              f'{float(headline["robust"]["paper adversarial R@1"]):.1f}); the natural model keeps '
              f'{headline["natural"]["adversarial R@1"]} (paper '
              f'{float(headline["natural"]["paper adversarial R@1"]):.1f}: its collapse is not reproduced)')
  command = 'python -m scripts.panum_synthetic --config configs/synthetic_mlp_adversarial.py'
  commands = {
      'panum': [f'{command} --workdir runs/panum --results results/panum'],
      'panum_lr1e-6': [f'{command} --workdir runs/panum_lr1e-6 --results results/panum/lr1e-6 '
                       '--config.learning_rate=1e-6 --config.attack.eps=\'(0.01,)\''],
  }
  return Section('Panum et al. 2021', 'panum', rows, commands, headline)


# ---------------------------------------------------------------------------
# AckMetric (Huai et al.; slides): pairwise attack on a linear metric, spectral defence.
# ---------------------------------------------------------------------------

def ackmetric(root: pathlib.Path) -> Section:
  """The slides' attack and bound on MNIST 3 vs 8 (the slides' numbers are plots we do not have)."""
  results = _read_json(root / 'ackmetric' / 'results.json')
  by = {(row['model'], round(row['eps'], 6)): row for row in results['rows']}
  rows = []
  budget = '10 epochs, all 44,850 pairs of 300 test images, 20 sign-PGD steps'
  for eps in (0.07, 0.09):
    undefended, defended = by['undefended', eps], by['defended', eps]
    rows.append(Row(
        f'pairwise attack at eps {eps:g}, without and with the spectral defence', '- (plots only)',
        f'attack success {undefended["success_rate"]:.3f} undefended, '
        f'{defended["success_rate"]:.3f} defended (pair accuracy '
        f'{undefended["pair_accuracy"]:.3f} / {defended["pair_accuracy"]:.3f})',
        '`configs/mnist_linear_spectral.py`', 'ackmetric', budget))
  checks = sum(row['pairs'] for row in results['rows'])
  violations = sum(row['bound_violations'] for row in results['rows'])
  rows.append(Row(
      'the bound D(x_i + d_i, x_j + d_j) <= D + 2 d eps lambda_max(W^T W)', 'holds (proved)',
      f'{violations} violations in {checks:,} attacked pairs (both models, 5 eps)',
      '`configs/mnist_linear_spectral.py`', 'ackmetric', budget))
  undefended, defended = by['undefended', 0.07], by['defended', 0.07]
  headline = (f'linear metric on MNIST 3 vs 8: pairwise attack success at eps 0.07 '
              f'{undefended["success_rate"]:.3f} undefended, {defended["success_rate"]:.3f} with the '
              f'spectral defence; the distance bound held on all {checks:,} checks' if violations == 0 else
              f'linear metric on MNIST 3 vs 8: the distance bound failed {violations} times')
  commands = {'ackmetric': [
      'python -m scripts.ackmetric_spectral --config configs/mnist_linear_spectral.py '
      '--workdir runs/ackmetric --results results/ackmetric --config.data.name=idx '
      '--config.data.data_dir=data/mnist']}
  return Section('AckMetric (Huai et al.)', 'ackmetric', rows, commands, headline)


# ---------------------------------------------------------------------------
# jaxcert's own: the linear QA certificate against Theorem 1, certified training, benchmarks.
# ---------------------------------------------------------------------------

def certificate_comparison(root: pathlib.Path) -> Section:
  """Kakizaki et al.'s Theorem 1 against the linear QA specification on the same IBP boxes."""
  rows, ratios = [], {}
  for name, config, train_budget, radii in (
      ('embedded_small_tbt', 'configs/embedded_small_tbt.py', 'TBT, 1500 steps (the config\'s budget)',
       (0.2, 0.1)),
      ('quickstart', 'configs/quickstart.py', 'triplet, 900 steps (the config\'s budget)', (0.0001,))):
    results = _read_json(root / 'certificate_comparison' / f'{name}.json')
    by = {(row['qa_bound'], round(row['eps'], 9)): row for row in results['rows']
          if row['method'] == 'ibp' and row['slack'] == 1e-5}
    for eps in radii:
      theorem, linear = by['kakizaki', eps], by['linear', eps]
      qa = lambda row: _slash([row[f'QA@{k}'] for k in (10, 20, 40)])
      rows.append(Row(
          f'QA CR-Recall@10/20/40, `{name}`, eps {eps:g}, IBP boxes', f'Theorem 1: {qa(theorem)}',
          f'linear specification: {qa(linear)}', f'`{config}`', name,
          f'{train_budget}; 1000 x 1000 of the embedded sample, float64, slack 1e-5'))
      if name == 'embedded_small_tbt' and eps == 0.2:
        ratios = (linear['QA@40'], theorem['QA@40'])
  commands = {name: [_train(f'configs/{name}.py', f'runs/{name}'),
                     _read_json(root / 'certificate_comparison' / f'{name}.json')['command']]
              for name in ('embedded_small_tbt', 'quickstart')}
  method_rows, method_commands = certificates_by_method(root)
  commands.update(method_commands)
  headline = (f'the exact linear QA bound certifies {ratios[0] / ratios[1]:.2f}x Theorem 1\'s QA '
              f'CR-Recall@40 on the same boxes (embedded TBT model, eps 0.2: {ratios[0]:.3f} vs '
              f'{ratios[1]:.3f})')
  return Section('Certificates compared (jaxcert)', 'certificate_comparison', rows + method_rows,
                 commands, headline)


# Issue 22's table: each certified checkpoint by certificate, from scripts/certificate_comparison.py's
# files. (file name, config, training, data flags of its commands)
METHOD_CHECKPOINTS = (
    ('embedded_small_tbt_methods', 'configs/embedded_small_tbt.py',
     'Kakizaki et al.\'s TBT, 1500 steps on the embedded sample (the config\'s budget)', ''),
    ('embedded_small_certified', 'configs/embedded_small_certified.py',
     'certified triplet training, 3000 steps on the embedded sample (the config\'s budget)', ''),
    ('fmnist_small_tbt_full', 'configs/fmnist_small_tbt.py:reduced',
     'Kakizaki et al.\'s TBT, Small CNN, 30,000 steps on full Fashion-MNIST (50 epochs of the '
     'paper\'s 100: reduced)', FASHION_MNIST),
    ('mnist_small_tbt_full', 'configs/mnist_small_tbt.py:reduced',
     'Kakizaki et al.\'s TBT, Small CNN, 30,000 steps on full MNIST (50 epochs of the paper\'s '
     '100: reduced)', MNIST),
    ('fmnist_small_certified', 'configs/fmnist_small_certified.py',
     'certified triplet training, 9000 steps on full Fashion-MNIST (15 epochs: reduced)', FASHION_MNIST),
    ('mnist_small_certified', 'configs/mnist_small_certified.py',
     'certified triplet training, 9000 steps on full MNIST (15 epochs: reduced)', MNIST),
    ('fmnist_large_certified', 'configs/fmnist_large_certified.py',
     'certified triplet training, Large CNN, 1200 steps on full Fashion-MNIST (2 epochs: reduced)',
     FASHION_MNIST),
    ('mnist_large_certified', 'configs/mnist_large_certified.py',
     'certified triplet training, Large CNN, 1200 steps on full MNIST (2 epochs: reduced)', MNIST),
)
# (embedding-bound method, QA bound, label): the certificates of each checkpoint's rows.
CERTIFICATES = (('ibp', 'kakizaki', 'IBP boxes, Theorem 1 (Kakizaki et al.)'),
                ('ibp', 'linear', 'IBP boxes, linear QA'),
                ('crown_ibp', 'linear', 'CROWN-IBP boxes, linear QA'),
                ('crown', 'linear', 'CROWN boxes, linear QA'))


def certificates_by_method(root: pathlib.Path) -> tuple[list, dict]:
  """Rows: CR-Recall@1/10/20/40 under QA and CA of each checkpoint at eps 0.1 and 0.2, one line per
  certificate of `CERTIFICATES` with its time (boxes of the 2000 images + rank bounds)."""
  rows, commands = [], {}
  ks = (1, 10, 20, 40)
  for name, config, training, data in METHOD_CHECKPOINTS:
    results = _read_json(root / 'certificate_comparison' / f'{name}.json')
    by = {(row['method'], row['qa_bound'], round(row['eps'], 9)): row for row in results['rows']
          if row['slack'] == 1e-5}
    for eps in (0.1, 0.2):
      lines = []
      for method, qa_bound, label in CERTIFICATES:
        row = by.get((method, qa_bound, eps))
        lines.append(f'{label}: not run' if row is None else
                     f'{label}: QA {_slash([row[f"QA@{k}"] for k in ks])}, CA '
                     f'{_slash([row[f"CA@{k}"] for k in ks])} '
                     f'({row["bounds_s"] + row["rank_bounds_s"]:.1f} s)')
      rows.append(Row(f'CR-Recall@1/10/20/40 by certificate, `{name}`, eps {eps:g}', '-',
                      '<br>'.join(lines), f'`{config}`', name,
                      f'{training}; 1000 x 1000 test images, float64, slack 1e-5; times: boxes of '
                      'the 2000 images and rank bounds, compilation excluded, 2 shared CPU cores'))
    run = 'runs/' + name.removesuffix('_methods')
    commands[name] = [_train(config, run, *([data] if data else [])), results['command'],
                      *results.get('more_commands', [])]
  return rows, commands


def _sweep(results: dict, eps: float) -> dict:
  for key, row in results['sweep'].items():
    if abs(float(key) - eps) < 1e-9:
      return row
  raise KeyError(f'eps {eps} not in the sweep {list(results["sweep"])}')


CERTIFIED_TRAINING_RUNS = (  # (run, results file, what, config)
    ('t_dim32_ca6_3000', 'results.json',
     'jaxcert\'s best, certified triplet training (32-dim embedding, CA weight 6, 3000 steps, '
     'Shi et al.\'s initialisation), certify.py\'s default (linear QA) certificate',
     'configs/embedded_small_certified.py'),
    ('t_dim32_ca6_3000', 'results_kakizaki.json',
     'the same model, certified by Kakizaki et al.\'s Theorem 1', 'configs/embedded_small_certified.py'),
    ('baseline_tbt', 'results_kakizaki.json',
     'Kakizaki et al.\'s TBT on the same data and model, Theorem 1', 'configs/embedded_small_tbt.py'))


def certified_training(root: pathlib.Path) -> Section:
  """The best certified-training run and the TBT baseline, beside Kakizaki et al.'s Table 2 goal."""
  directory = root / 'certified_training'
  paper = (f'QA {_slash(kakizaki_report.PAPER_CR_QA["fmnist", "tbt"][1:], 2)}, CA '
           f'{_slash(kakizaki_report.PAPER_CR_CA["fmnist", "tbt"][1:], 2)} '
           '(FMNIST Large TBT, full training)')
  rows, values, commands = [], {}, {}
  for run, results_file, what, config in CERTIFIED_TRAINING_RUNS:
    results = _read_json(directory / run / results_file)
    train = _read_json(directory / run / 'train.json')
    anchor = f'{run}_{results_file.removesuffix(".json")}'
    for eps in (0.2, 0.1):
      row = _sweep(results, eps)
      qa, ca = ([row[attack][str(k)] for k in (10, 20, 40)] for attack in ('qa', 'ca'))
      rows.append(Row(
          f'{what}: CR-Recall@10/20/40 at eps {eps:g}', paper if eps == 0.2 else '-',
          f'QA {_slash(qa)}, CA {_slash(ca)} (R@1 {results["recall@1"]:.3f})', f'`{config}`', anchor,
          f'{train["steps"]} steps on the embedded sample, {train["wall_s"]} s of training under load '
          '(paper: 60,000 steps on full FMNIST, Large CNN): reduced'))
      values[anchor, eps] = qa[-1], ca[-1]
    commands[anchor] = [_train(config, f'runs/{run}'),
                        _certify(config, f'runs/{run}', *certified_as(results)),
                        f'python results/certified_training/make_tables.py collect runs/{run}']
  full_rows, full_commands = certified_training_full_data(root)
  rows += full_rows
  commands.update(full_commands)
  best = values['t_dim32_ca6_3000_results', 0.2]
  theorem_1 = values['t_dim32_ca6_3000_results_kakizaki', 0.2]
  baseline = values['baseline_tbt_results_kakizaki', 0.2]
  paper_qa = kakizaki_report.PAPER_CR_QA['fmnist', 'tbt'][-1]
  paper_ca = kakizaki_report.PAPER_CR_CA['fmnist', 'tbt'][-1]
  headline = (f'certified triplet training on the embedded sample: QA / CA CR-Recall@40 {best[0]:.3f} / '
              f'{best[1]:.3f} at eps 0.2 (QA {theorem_1[0]:.3f} by Theorem 1; TBT: {baseline[0]:.3f} / '
              f'{baseline[1]:.3f}); the paper\'s FMNIST Large TBT: {paper_qa:.2f} / {paper_ca:.2f}')
  return Section('Certified training (jaxcert)', 'certified_training', rows, commands, headline)


# Certified training on the full datasets: (run, dataset, model, the previous best run of
# results/kakizaki on that dataset, which the row quotes beside ours, the config of its commands).
CERTIFIED_FULL_DATA_RUNS = (
    ('fmnist_small_certified', 'fmnist', 'Small', 'fmnist_large_tbt_eq20',
     'configs/fmnist_small_certified.py'),
    ('fmnist_small_certified_30ep', 'fmnist', 'Small', 'fmnist_large_tbt_eq20',
     'configs/fmnist_small_certified.py:30'),
    ('mnist_small_certified', 'mnist', 'Small', 'mnist_small_tbt_full',
     'configs/mnist_small_certified.py'),
    ('mnist_small_certified_30ep', 'mnist', 'Small', 'mnist_small_tbt_full',
     'configs/mnist_small_certified.py:30'),
    ('mnist_small_certified_50ep', 'mnist', 'Small', 'mnist_small_tbt_full',
     'configs/mnist_small_certified.py:50'),
    ('fmnist_large_certified', 'fmnist', 'Large', 'fmnist_large_tbt_eq20',
     'configs/fmnist_large_certified.py'),
    ('mnist_large_certified', 'mnist', 'Large', 'mnist_large_tbt_eq20',
     'configs/mnist_large_certified.py'),
)


def certified_training_full_data(root: pathlib.Path) -> tuple[list, dict]:
  """Certified triplet training on full FMNIST / MNIST against Kakizaki et al.'s Table 2 (TBT and
  TBT+FCTB, Large CNN) and our best Kakizaki et al. run on that dataset: Recall@K and CR-Recall@K at
  eps 0.2, certify.py's default certificate (and Theorem 1 for QA)."""
  directory = root / 'certified_training'
  names = {'fmnist': 'FMNIST', 'mnist': 'MNIST'}
  rows, commands = [], {}
  for run, dataset, model, previous, config in CERTIFIED_FULL_DATA_RUNS:
    if not (directory / run / 'results.json').exists():
      continue
    results = _read_json(directory / run / 'results.json')
    theorem_1 = _read_json(directory / run / 'results_kakizaki.json')
    train = _read_json(directory / run / 'train.json')
    recall, qa, ca = _kakizaki_values(results)
    _, qa_theorem_1, _ = _kakizaki_values(theorem_1)
    before = _read_json(root / 'kakizaki' / previous / 'results.json')
    _, qa_before, ca_before = _kakizaki_values(before)
    paper = '<br>'.join(
        f'{kakizaki_report.METHOD_NAMES[method]}: R {_slash(kakizaki_report.PAPER_RECALL[dataset, method], 2)}, '
        f'QA {_slash(kakizaki_report.PAPER_CR_QA[dataset, method], 2)}, '
        f'CA {_slash(kakizaki_report.PAPER_CR_CA[dataset, method], 2)}' for method in ('tbt', 'fctb'))
    ours = (f'R {_slash(recall)}<br>QA {_slash(qa)} (Theorem 1: {_slash(qa_theorem_1)})<br>'
            f'CA {_slash(ca)}<br>before (`{previous}`, Theorem 1): QA {_slash(qa_before)}, '
            f'CA {_slash(ca_before)}')
    data = FASHION_MNIST if dataset == 'fmnist' else MNIST
    rows.append(Row(f'Tables 1-2, {names[dataset]}, certified triplet training, {model} CNN: K = 1 / '
                    '10 / 20 / 40 at eps 0.2', paper, ours, f'`{config}`', run,
                    f'{train["steps"]} steps ({train["steps"] * train["batch_size"] / 60_000:g} epochs; '
                    f'paper: 100 epochs), {train["wall_s"]} s of training on 2 shared CPU cores: '
                    'reduced'))
    commands[run] = [_train(config, f'runs/{run}', data),
                     _certify(config, f'runs/{run}', data, *certified_as(results)),
                     _certify(config, f'runs/{run}', data, *certified_as(theorem_1),
                              f'--workdir runs/{run}/certify_ibp_kakizaki'),
                     f'python results/certified_training/make_tables.py collect runs/{run}']
  return rows, commands


BENCH_ROWS = ('train step', 'IBP bounds', 'smoothing', 'PGD step')


def _markdown_rows(path: pathlib.Path) -> list[dict]:
  """The rows of the first markdown table in `path`, as {header: cell}."""
  lines = path.read_text(encoding='utf-8').splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith('| '))
  header = [cell.strip() for cell in lines[start].strip('|').split('|')]
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    rows.append(dict(zip(header, (cell.strip() for cell in line.strip('|').split('|')))))
  return rows


def bench(root: pathlib.Path) -> Section:
  """`python -m bench`: each hot path in forward passes of the same model, from results/bench/cpu.md."""
  rows, ratios = [], {}
  for line in _markdown_rows(root / 'bench' / 'cpu.md'):
    if line['hot path'] not in BENCH_ROWS:
      continue
    rows.append(Row(f'{line["hot path"]}, {line["model"]} ({line["setting"]})', '-',
                    f'{line["ratio (forwards)"]} forward passes ({line["time per item"]})', '-', 'bench',
                    'the suite\'s reduced settings, 2 CPU cores under heavy load: indicative only'))
    ratios[line['hot path'], line['model']] = line['ratio (forwards)']
  headline = (f'in forward passes of the same model (Small / Large CNN, 2 loaded CPU cores): IBP bounds '
              f'{ratios["IBP bounds", "small_cnn"]} / {ratios["IBP bounds", "large_cnn"]}, train step '
              f'{ratios["train step", "small_cnn"]} / {ratios["train step", "large_cnn"]}')
  return Section('Benchmarks (jaxcert)', 'bench', rows, {'bench': ['python -m bench --json > cpu.json']},
                 headline)


SECTIONS: tuple[Callable[[pathlib.Path], Section], ...] = (
    retrievalguard, kakizaki, panum, ackmetric, certificate_comparison, certified_training, bench)


# ---------------------------------------------------------------------------
# Rendering and the files.
# ---------------------------------------------------------------------------

def _anchor(command: str) -> str:
  return 'command-' + command.lower().replace('_', '-').replace('.', '')


def _cell(text: str) -> str:
  return text.replace('|', '\\|')


def render(section: Section) -> str:
  """The main table of `section` and the commands behind it, between the markers."""
  lines = [BEGIN, '', '| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  for row in section.rows:
    command = f'[{row.command}](#{_anchor(row.command)})'
    cells = (row.reproduces, row.paper, row.ours, row.config, command, row.budget)
    lines.append('| ' + ' | '.join(_cell(cell) for cell in cells) + ' |')
  lines += ['', 'Commands, from the repository root (each writes the results files the row reads):', '']
  if section.preamble:
    lines += ['```bash', section.preamble, '```', '']
  for key, shell in section.commands.items():
    lines += [f'<a id="{_anchor(key)}"></a>`{key}`:', '', '```bash',
              *shell, '```', '']
  lines.append(END)
  return '\n'.join(lines)


def replace_block(text: str, block: str, path: pathlib.Path) -> str:
  """`text` with the part between the markers (inclusive) replaced by `block`."""
  if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
    raise ValueError(f'{path} must hold the markers once each, in order:\n{BEGIN}\n{END}')
  return text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]


def index(sections: list[Section]) -> str:
  """results/README.md: one line per paper, its headline number and a link."""
  lines = ['# Results', '',
           'One line per paper (and per measurement of jaxcert\'s own), each at a reduced CPU budget;',
           'the README it links to has the main table: row -> config -> command -> number. Written by',
           '`python -m scripts.results_tables` from the results files. How the runs went:',
           '[NOTES.md](NOTES.md) and [kakizaki/explorations/NOTES.md](kakizaki/explorations/NOTES.md).', '',
           '| paper | headline | where |', '|---|---|---|']
  for section in sections:
    lines.append(f'| {section.title} | {_cell(section.headline)} | '
                 f'[results/{section.directory}]({section.directory}/README.md) |')
  return '\n'.join(lines) + '\n'


def expected_files(root: pathlib.Path = RESULTS) -> dict[pathlib.Path, str]:
  """{path: the text it should hold} for every file this script writes under `root`."""
  sections = [build(root) for build in SECTIONS]
  files = {root / 'README.md': index(sections),
           root / 'kakizaki' / 'tables.md': kakizaki_tables(root)}
  for section in sections:
    path = root / section.directory / 'README.md'
    files[path] = replace_block(path.read_text(encoding='utf-8'), render(section), path)
  return files


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true',
                      help='write nothing; exit 1 if a table on disk differs from what would be written')
  parser.add_argument('--results', default=str(RESULTS),
                      help='the results directory (default: the repository\'s)')
  args = parser.parse_args(argv)
  files = expected_files(pathlib.Path(args.results))
  stale = [path for path, text in files.items()
           if not path.exists() or path.read_text(encoding='utf-8') != text]
  if args.check:
    for path in stale:
      print(f'{path} differs from its data: run python -m scripts.results_tables', file=sys.stderr)
    return 1 if stale else 0
  for path in stale:
    path.write_text(files[path], encoding='utf-8')
    print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
