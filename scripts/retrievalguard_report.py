"""RetrievalGuard (Wu et al. 2022) on Fashion-MNIST: combined plots and tables from the certify runs.

Reads the run directories that scripts/retrievalguard_experiments.sh writes (under --runs) and writes to
--out: PNG plots of certified Recall@1(r) (DML vs GDML per sigma, paper Fig. 2; RetrievalGuard vs
the bisector certificate; the n, alpha and k ablations, Figs. 3-4), `tables.md` with every number
and the paper's qualitative findings checked on them, and the per-query TSVs it used
(`tsv/<run>_<curve>.tsv`). Runs that are missing are listed as missing, not invented.

  python scripts/retrievalguard_report.py --runs runs/retrievalguard --out results/retrievalguard
"""

import argparse
import csv
import json
import os
import shutil

import numpy as np

from jaxcert import report
from jaxcert import smoothing

SIGMAS = ('0.1', '0.25', '0.5', '1.0')
CERTIFICATES = smoothing.CERTIFICATES
SHORT = {'retrievalguard': 'RG', 'bisector': 'bisector'}
TABLE_RADII = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
_PLOT_POINTS = 400


def _read_tsv(path):
  with open(path, encoding='utf-8') as f:
    rows = list(csv.DictReader(f, delimiter='\t'))
  return (np.array([float(r['radius']) for r in rows]),
          np.array([r['correct'] == '1' for r in rows]))


class Runs:
  """The certify runs under `root`, read on demand; missing ones are recorded."""

  def __init__(self, root: str, out: str):
    self.root, self.out, self.missing, self.used = root, out, [], []

  def directory(self, model: str, sigma: str, kind: str = 'smoothing') -> str:
    if model == 'DML':
      return os.path.join(self.root, 'fmnist_small_margin', f'smoothing_sigma{sigma}')
    if model.startswith('GDML k='):
      return os.path.join(self.root, f'fmnist_small_gdml_k{model[7:]}', kind)
    return os.path.join(self.root, f'fmnist_small_gdml{sigma}', kind)

  def curve(self, directory: str, stem: str):
    """(radius, correct) of `directory/smoothing_<stem>.tsv`, or None (recorded as missing)."""
    path = os.path.join(directory, f'smoothing_{stem}.tsv')
    if not os.path.exists(path):
      self.missing.append(path)
      return None
    run = os.path.relpath(directory, self.root).replace(os.sep, '_')
    target = os.path.join(self.out, 'tsv', f'{run}_{stem}.tsv')
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(path, target)
    self.used.append(path)
    return _read_tsv(path)

  def summary(self, directory: str) -> dict | None:
    path = os.path.join(directory, 'results.json')
    if not os.path.exists(path):
      return None
    with open(path, encoding='utf-8') as f:
      return json.load(f)


def _recall(curve, radii=TABLE_RADII):
  return smoothing.certified_recall_at_1(curve[0], curve[1], radii)


def _area(curve) -> float:
  """Area under Recall@1(r) over r >= 0 = the mean certified radius (0 if abstained or wrong)."""
  radius, correct = curve
  return float(np.mean(np.where(correct & (radius >= 0), radius, 0.0)))


def _row(name: str, curve, summary: dict | None, curve_key: str) -> dict:
  radius, correct = curve
  row = {'curve': name, 'queries': len(radius)}
  if summary is not None:
    row['R@1 h'] = summary['base_recall@1']
    row['R@1 g_hat'] = summary['curves'][curve_key]['recall@1_smoothed']
  row['rejected'] = float(np.mean(correct & (radius < 0)))
  certified = correct & (radius >= 0)
  row['median r'] = float(np.median(radius[certified])) if certified.any() else -1.0
  row.update({f'r={r:g}': v for r, v in zip(TABLE_RADII, _recall(curve))})
  row['area'] = _area(curve)
  return row


def _plot(path, curves: dict, title: str) -> None:
  curves = {name: c for name, c in curves.items() if c is not None}
  if not curves:
    return
  largest = max([float(np.max(c[0])) for c in curves.values()] + [1e-3])
  grid = np.linspace(0.0, 1.05 * largest, _PLOT_POINTS)
  report.plot_curves(path, {name: (grid, smoothing.certified_recall_at_1(c[0], c[1], grid))
                            for name, c in curves.items()},
                     xlabel='radius r (L2, pixels in [0, 1])', ylabel='certified Recall@1(r)',
                     title=title, marker='')


def _sigma_section(runs: Runs, lines: list) -> dict:
  """Paper Fig. 2: DML vs GDML at each sigma, and RetrievalGuard vs bisector."""
  curves, rows = {}, []
  for sigma in SIGMAS:
    for model in ('DML', 'GDML'):
      directory = runs.directory(model, sigma)
      summary = runs.summary(directory)
      for certificate in CERTIFICATES:
        curve = runs.curve(directory, certificate)
        curves[(model, sigma, certificate)] = curve
        if curve is not None:
          rows.append(_row(f'{model} sigma={sigma} {SHORT[certificate]}', curve, summary,
                           certificate))
  _plot(os.path.join(runs.out, 'dml_vs_gdml_retrievalguard.png'),
        {f'{m} sigma={s}': curves[(m, s, 'retrievalguard')] for s in SIGMAS for m in ('DML', 'GDML')},
        'Fashion-MNIST, Small CNN: DML vs GDML (RetrievalGuard)')
  for model in ('DML', 'GDML'):
    _plot(os.path.join(runs.out, f'{model.lower()}_sigma.png'),
          {f'sigma={s} {SHORT[c]}': curves[(model, s, c)] for s in SIGMAS for c in CERTIFICATES},
          f'Fashion-MNIST, Small CNN, {model}: RetrievalGuard vs bisector')
  if rows:
    lines += ['## Certified Recall@1(r), DML vs GDML, four sigma (paper Fig. 2)', '',
              report.markdown_table(rows), '']
  return curves


def _findings(curves: dict, lines: list) -> None:
  """The paper's qualitative findings, checked on the sigma curves."""
  lines += ['## Findings checked', '']
  for sigma in SIGMAS:
    dml, gdml = curves.get(('DML', sigma, 'retrievalguard')), curves.get(('GDML', sigma,
                                                                          'retrievalguard'))
    if dml is None or gdml is None:
      continue
    verdict = 'GDML > DML' if _area(gdml) > _area(dml) else 'GDML <= DML'
    lines.append(f'* sigma = {sigma}: certified Recall@1(0) DML {_recall(dml)[0]:.3f}, GDML '
                 f'{_recall(gdml)[0]:.3f}; mean certified radius (area) DML {_area(dml):.4f}, '
                 f'GDML {_area(gdml):.4f}: {verdict}.')
  gains = []
  for key, curve in curves.items():
    if key[2] != 'bisector' or curve is None:
      continue
    paper = curves.get(key[:2] + ('retrievalguard',))
    if paper is None:
      continue
    both = (paper[0] > 0) & (curve[0] > 0)
    ratio = np.median(curve[0][both] / paper[0][both]) if both.any() else float('nan')
    gains.append(f'{key[0]} sigma={key[1]}: bisector >= RG on {np.sum(curve[0] >= paper[0])}/'
                 f'{len(curve[0])} queries, certified {np.sum(curve[0] >= 0)} vs '
                 f'{np.sum(paper[0] >= 0)}, median radius ratio {ratio:.3f}')
  if gains:
    lines += ['* The bisector certificate on the same estimates: ' + '; '.join(gains) + '.']
  lines.append('')


def _ablation_section(runs: Runs, lines: list, kind: str, values, label: str, figure: str):
  directory = runs.directory('GDML', '1.0', kind)
  summary = runs.summary(directory)
  rows, curves = [], {}
  for value in values:
    for certificate in CERTIFICATES:
      key = f'{certificate} {label}={value}'
      curve = runs.curve(directory, f'{certificate}_{label}_{value}')
      if curve is None:
        continue
      curves[f'{label}={value} {SHORT[certificate]}'] = curve
      rows.append(_row(f'{label}={value} {SHORT[certificate]}', curve, summary, key))
  _plot(os.path.join(runs.out, figure), curves, f'GDML sigma=1: ablation of {label}')
  if rows:
    lines += [f'## Ablation of {label} (GDML, sigma = 1; paper Sec. 4.4.2)', '',
              report.markdown_table(rows), '']
  return curves


def _k_section(runs: Runs, lines: list, num_samples: int, alpha: float) -> None:
  rows, curves = [], {}
  for k in ('32', '128', '512'):
    directory = (runs.directory('GDML', '1.0') if k == '128' else runs.directory(f'GDML k={k}', ''))
    summary = runs.summary(directory)
    for certificate in CERTIFICATES:
      curve = runs.curve(directory, certificate)
      if curve is None:
        continue
      curves[f'k={k} {SHORT[certificate]}'] = curve
      row = _row(f'k={k} {SHORT[certificate]}', curve, summary, certificate)
      row['eps (Lemma 3.6)'] = smoothing.paper_concentration_radius(num_samples, int(k), alpha / 4)
      rows.append(row)
  _plot(os.path.join(runs.out, 'ablation_k.png'), curves, 'GDML sigma=1: ablation of k')
  epsilon = {k: smoothing.paper_concentration_radius(num_samples, k, alpha / 4)
             for k in (1, 8, 32, 128, 512, 2048)}
  lines += ['## Ablation of the embedding dimension k (GDML, sigma = 1; paper Fig. 4)', '',
            f'Lemma 3.6 slack at n = {num_samples}, alpha = {alpha}: ' + ', '.join(
                f'k={k}: {e:.4f}' for k, e in epsilon.items())
            + f' (k = 2048 vs 1: x{epsilon[2048] / epsilon[1]:.2f}; sqrt(ln((k + 1) 4 / alpha)) '
            f'growth).', '']
  if rows:
    lines += [report.markdown_table(rows), '']


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--runs', default='runs/retrievalguard')
  parser.add_argument('--out', default='results/retrievalguard')
  parser.add_argument('--curve_samples', type=int, default=10_000,
                      help='n of the sigma and k curves (for the epsilon column)')
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  runs = Runs(args.runs, args.out)
  lines = ['# RetrievalGuard on Fashion-MNIST: tables (scripts/retrievalguard_report.py)', '',
           'Columns: R@1 h = Recall@1 of the base embedding on the same queries; R@1 g_hat = of '
           'the smoothed estimate; rejected = correct under g_hat but abstained (paper Fig. 3 '
           'left); median r over certified queries; r=... certified Recall@1(r); area = '
           'integral of Recall@1(r) over r >= 0, i.e. the mean certified radius (0 for an '
           'abstained or wrong query).', '']
  curves = _sigma_section(runs, lines)
  _findings(curves, lines)
  n_curves = _ablation_section(runs, lines, 'ablation_n', (1000, 10000, 100000), 'n',
                               'ablation_n.png')
  if n_curves:
    medians = {name: np.median(c[0][c[1] & (c[0] >= 0)]) if np.any(c[1] & (c[0] >= 0)) else -1
               for name, c in n_curves.items()}
    lines += ['Median certified radius by n: ' + ', '.join(
        f'{name}: {value:.4f}' for name, value in medians.items()), '']
  _ablation_section(runs, lines, 'ablation_alpha', ('0.0001', '0.001', '0.01', '0.1'), 'alpha',
                    'ablation_alpha.png')
  _k_section(runs, lines, args.curve_samples, 0.01)
  if runs.missing:
    lines += ['## Missing runs', ''] + [f'* {path}' for path in runs.missing] + ['']
  with open(os.path.join(args.out, 'tables.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines))
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
