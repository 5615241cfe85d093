"""Tables of results/certified_training/README.md from the runs copied here.

  python results/certified_training/make_tables.py collect runs/<name> [<name> ...]
  python results/certified_training/make_tables.py tables

`collect` copies each run's certification (`certify_ibp/results.json`, `ibp.md`) and a summary
of its training (`train.json`: steps, the schedule, training wall time from the run's config.json
to its last checkpoint, i.e. with compilation, and the median images/s of its log intervals) into
results/certified_training/<name>/; `tables` writes tables.md from every such directory: Recall@K,
and CR-Recall@K under QA and CA at eps = 0.1 and 0.2 (Kakizaki et al., Eq. 25; the paper's
Theorem 1-2 bounds as certify.py computed them).
"""

import json
import os
import pathlib
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent
KS = (10, 20, 40)
PAPER = 'Kakizaki et al. Table 2, FMNIST Large TBT at eps 0.2: QA 0.20 / 0.30 / 0.45, CA 0.07 / 0.24 / 0.64'


def _read_jsonl(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def collect(run_dir: str) -> None:
  run = pathlib.Path(run_dir)
  out = HERE / run.name
  out.mkdir(exist_ok=True)
  for name in ('results.json', 'ibp.md'):
    shutil.copyfile(run / 'certify_ibp' / name, out / name)
  config = json.loads((run / 'config.json').read_text())
  records = _read_jsonl(run / 'metrics.jsonl')
  rates = sorted(r['images_per_second'] for r in records[1:])
  # Wall time: from the config (written when the run starts) to its last checkpoint.
  checkpoints = [p for p in (run / 'checkpoints').rglob('*')]
  end = max(p.stat().st_mtime for p in checkpoints)
  train = {
      'method': config['method'], 'steps': records[-1]['step'] + 1,
      'model': {k: config['model'].get(k) for k in ('name', 'batch_norm', 'ibp_init')},
      'certified': config.get('certified'), 'grad_clip_norm': config.get('grad_clip_norm'),
      'learning_rate': config['learning_rate'], 'lr_decay_epochs': config['lr_decay_epochs'],
      'wall_s': round(end - (run / 'config.json').stat().st_mtime),
      'median_images_per_second': rates[len(rates) // 2] if rates else None,
  }
  (out / 'train.json').write_text(json.dumps(train, indent=2) + '\n')
  print(f'collected {run} -> {out}')


def _sweep_row(results, eps):
  """{'qa': {K: value}, 'ca': {K: value}} at `eps` from the CR-Recall@K-over-eps sweep."""
  for key, row in results['sweep'].items():
    if abs(float(key) - eps) < 1e-9:
      return row
  raise KeyError(f'eps {eps} not in the sweep {list(results["sweep"])}')


def setting(train: dict) -> str:
  """What distinguishes a run: the method, its triplets and kappa, and Shi et al.'s parts."""
  certified = train['certified'] or {}
  parts = [train['method']]
  if train['method'] == 'certified_triplet':
    triplets = certified.get('triplets', 'all')
    if triplets == 'ranking':
      triplets += f' (exclude {certified.get("exclude_nearest", 0)})'
    parts += [f'triplets {triplets}', f'QA {certified.get("qa_bound", "linear")}']
    if certified.get('adversarial', 'none') != 'none':
      parts.append(certified['adversarial'])
  parts.append(f'kappa {certified.get("kappa")}')
  model = train['model']
  parts += [name for name, on in (('IBP init', model.get('ibp_init')),
                                  ('BatchNorm', model.get('batch_norm')),
                                  ('warm-up reg', certified.get('warmup_weight'))) if on]
  parts.append(f'clip {train["grad_clip_norm"]}' if train['grad_clip_norm'] else 'no clip')
  return ', '.join(parts)


def tables() -> str:
  lines = [f'Written by `make_tables.py tables`. Reference: {PAPER}.', '']
  header = ('| run | setting | steps | train wall s (load) | R@1 / 10 / 20 / 40 | eps | '
            'QA@10 / 20 / 40 | CA@10 / 20 / 40 |')
  lines += [header, '|---|---|---|---|---|---|---|---|']
  for run in sorted(p for p in HERE.iterdir() if (p / 'results.json').exists()):
    results = json.loads((run / 'results.json').read_text())
    train = json.loads((run / 'train.json').read_text())
    recall = ' / '.join(f'{results[f"recall@{k}"]:.3f}' for k in (1, 10, 20, 40))
    for eps in (0.1, 0.2):
      row = _sweep_row(results, eps)
      qa, ca = (' / '.join(f'{row[attack][str(k)]:.3f}' for k in KS) for attack in ('qa', 'ca'))
      lines.append(f'| `{run.name}` | {setting(train)} | {train["steps"]} | '
                   f'{train["wall_s"]} ({train["median_images_per_second"]:.0f} img/s) | '
                   f'{recall} | {eps} | {qa} | {ca} |')
  text = '\n'.join(lines) + '\n'
  (HERE / 'tables.md').write_text(text)
  return text


def main(argv):
  if len(argv) < 2 or argv[1] not in ('collect', 'tables'):
    raise SystemExit(__doc__)
  if argv[1] == 'collect':
    for run_dir in argv[2:]:
      collect(run_dir)
  else:
    print(tables())


if __name__ == '__main__':
  main(sys.argv)
