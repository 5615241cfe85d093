"""Kakizaki et al. Tables 1-2 (Large) beside our runs: Recall@K and CR-Recall@K (QA, CA) in markdown.

Reads `<run>/certify_ibp/results.json` (certify.py mode 'ibp') and `<run>/config.json` of every
run given as `dataset:method=RUN_DIR`, or a copy of them in a results directory (`results.json` and
`train_config.json` side by side, as in results/kakizaki/<run> and results/kakizaki/explorations/<run>;
for results from before certify.py recorded the certified step, `newest_checkpoint.json` gives the
run's newest checkpoint then), and
prints (or writes with --out) one markdown table per paper table, our value first and the paper's
in parentheses, with each run's training budget.
The paper's tables are for the Large CNN: Small-CNN runs (read from config.json) get no paper
value (its Small results are in an appendix our copy lacks). A (dataset, method) may appear more
than once (e.g. Large and Small).

  python scripts/kakizaki_report.py fmnist:triplet=runs/fmnist_large_triplet \
      fmnist:tbt=runs/fmnist_large_tbt --out results/kakizaki/tables.md
  python scripts/kakizaki_report.py fmnist:tbt=results/kakizaki/fmnist_large_tbt_eq20
"""

import argparse
import json
import os

from jaxcert import report

KS = (1, 10, 20, 40)
METHOD_NAMES = {'triplet': 'Triplet', 'cibp': 'C-IBP', 'tbt': 'TBT', 'fctb': 'TBT+FCTB'}
DATASET_NAMES = {'mnist': 'MNIST', 'fmnist': 'FMNIST'}
MODEL_NAMES = {'large_cnn': 'Large', 'small_cnn': 'Small'}

# Kakizaki et al. Table 1 (Recall@K, Large) and Table 2 (CR-Recall@K, Large; eps = 0.2), K = 1, 10, 20, 40.
PAPER_RECALL = {
    ('mnist', 'triplet'): (0.99, 1.00, 1.00, 1.00), ('mnist', 'cibp'): (0.97, 0.99, 1.00, 1.00),
    ('mnist', 'tbt'): (0.94, 0.98, 0.99, 0.99), ('mnist', 'fctb'): (0.93, 0.98, 0.98, 0.99),
    ('fmnist', 'triplet'): (0.89, 0.98, 0.99, 0.99), ('fmnist', 'cibp'): (0.75, 0.96, 0.98, 0.99),
    ('fmnist', 'tbt'): (0.62, 0.93, 0.97, 0.98), ('fmnist', 'fctb'): (0.64, 0.94, 0.97, 0.98),
}
PAPER_CR_QA = {
    ('mnist', 'triplet'): (0.00, 0.00, 0.00, 0.00), ('mnist', 'cibp'): (0.00, 0.00, 0.00, 0.01),
    ('mnist', 'tbt'): (0.03, 0.31, 0.47, 0.65), ('mnist', 'fctb'): (0.03, 0.30, 0.45, 0.64),
    ('fmnist', 'triplet'): (0.00, 0.00, 0.00, 0.00), ('fmnist', 'cibp'): (0.00, 0.01, 0.04, 0.08),
    ('fmnist', 'tbt'): (0.02, 0.20, 0.30, 0.45), ('fmnist', 'fctb'): (0.02, 0.22, 0.34, 0.44),
}
PAPER_CR_CA = {
    ('mnist', 'triplet'): (0.00, 0.00, 0.00, 0.00), ('mnist', 'cibp'): (0.00, 0.00, 0.00, 0.00),
    ('mnist', 'tbt'): (0.01, 0.42, 0.78, 0.95), ('mnist', 'fctb'): (0.02, 0.48, 0.82, 0.96),
    ('fmnist', 'triplet'): (0.00, 0.00, 0.00, 0.00), ('fmnist', 'cibp'): (0.00, 0.00, 0.00, 0.03),
    ('fmnist', 'tbt'): (0.00, 0.07, 0.24, 0.64), ('fmnist', 'fctb'): (0.00, 0.09, 0.25, 0.62),
}


def _load(run_dir: str) -> tuple[dict, dict]:
  """`(results, training config)` of a run directory or of a results directory holding their copies."""
  if os.path.exists(os.path.join(run_dir, 'certify_ibp', 'results.json')):
    paths = os.path.join(run_dir, 'certify_ibp', 'results.json'), os.path.join(run_dir, 'config.json')
  else:
    paths = os.path.join(run_dir, 'results.json'), os.path.join(run_dir, 'train_config.json')
  loaded = []
  for path in paths:
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} does not exist: {run_dir} needs certify_ibp/results.json and '
                              'config.json (a run), or results.json and train_config.json (its copy).')
    with open(path, encoding='utf-8') as f:
      loaded.append(json.load(f))
  return loaded[0], loaded[1]


def certified_step(run_dir: str, results: dict) -> str:
  """The step of the certified checkpoint: results.json's `checkpoint_step`, or, for results
  written before certify.py recorded it, the run's newest checkpoint (marked as such)."""
  if results.get('checkpoint_step') is not None:
    return str(results['checkpoint_step'])
  if os.path.isdir(os.path.join(run_dir, 'checkpoints')):
    saved = [int(name) for name in os.listdir(os.path.join(run_dir, 'checkpoints')) if name.isdigit()]
    newest = max(saved)
  elif os.path.exists(os.path.join(run_dir, 'newest_checkpoint.json')):  # read off the run, in a copy
    with open(os.path.join(run_dir, 'newest_checkpoint.json'), encoding='utf-8') as f:
      newest = json.load(f)['step']
  else:
    return 'not recorded (results.json predates checkpoint_step)'
  return f'{newest} (newest saved; results.json predates checkpoint_step)'


def _budget(run_dir: str, config: dict, results: dict) -> str:
  """Planned training (the run's `config`), the step certified, the schedule and its origin."""
  planned = (f'{config["num_steps"]} steps' if config['num_steps'] > 0
             else f'{config["num_epochs"]} epochs')
  text = (f'{planned} planned, checkpoint of step {certified_step(run_dir, results)} certified, '
          f'lr {config["learning_rate"]:g}')
  if config.get('lr_decay_epochs'):
    epochs = ', '.join(f'{e:g}' for e in config['lr_decay_epochs'])
    text += f' x{config["lr_decay_factor"]:g} at epochs {epochs}'
  if config.get('method') in ('tbt', 'cibp', 'fctb'):
    certified = config['certified']
    text += (f', eps ramp {certified["ramp_start_steps"]}-{certified["ramp_end_steps"]}, '
             f'kappa {certified["kappa"]}')
  if config.get('method') == 'tbt':
    text += (', T over all triplets (Eq. 20)' if config['loss']['mining'] == 'batch_all_mean'
             else f', T mined {config["loss"]["mining"]!r} (not Eq. 20\'s balance)')
  if config.get('grad_clip_norm'):
    text += f', gradient norm clipped at {config["grad_clip_norm"]:g}'
  if config.get('seed'):
    text += f', seed {config["seed"]}'
  if config.get('resume_from'):
    text += f', branched from {os.path.basename(os.path.normpath(config["resume_from"]))}'
  elif config.get('init_from'):
    text += f', from {os.path.basename(os.path.normpath(config["init_from"]))}'
  if config.get('reconstructed'):  # a copy written after the run, when its own config.json was lost
    text += f'; config {config["reconstructed"]}'
  return text


def _with_paper(ours: float, paper: float, is_large: bool) -> str:
  return f'{ours:.2f} ({paper:.2f})' if is_large else f'{ours:.2f}'


def tables(runs: list) -> str:
  """Markdown of both tables for `runs = [(dataset, method, run_dir), ...]`."""
  recall_rows, cr_rows, budget_rows = [], [], []
  for dataset, method, run_dir in runs:
    results, config = _load(run_dir)
    model_name = config['model']['name']
    is_large = model_name == 'large_cnn'
    name = {'dataset': DATASET_NAMES[dataset], 'model': MODEL_NAMES.get(model_name, model_name),
            'method': METHOD_NAMES[method]}
    recall_rows.append({**name, **{
        f'R@{k}': _with_paper(results[f'recall@{k}'], paper, is_large)
        for k, paper in zip(KS, PAPER_RECALL[dataset, method])}})
    cr_rows.append({**name, **{
        f'{attack.upper()}@{k}': _with_paper(results[f'cr_recall_{attack}@{k}'], paper, is_large)
        for attack, papers in (('qa', PAPER_CR_QA), ('ca', PAPER_CR_CA))
        for k, paper in zip(KS, papers[dataset, method])}})
    budget_rows.append({**name, 'run': os.path.basename(os.path.normpath(run_dir)),
                        'training': _budget(run_dir, config, results), 'eps': results['eps'],
                        # certify.py certified in float32 until it recorded the dtype (2026-12-04).
                        'certified in': results.get('rounding', {}).get('dtype', 'float32')})
  return ('Recall@K, ours (Kakizaki et al. Table 1, Large CNN, in parentheses):\n\n'
          + report.markdown_table(recall_rows)
          + '\n\nCR-Recall@K at eps = 0.2, ours (Kakizaki et al. Table 2, Large CNN, in parentheses), '
          'QA then CA:\n\n'
          + report.markdown_table(cr_rows) + '\n\nRuns:\n\n' + report.markdown_table(budget_rows)
          + '\n')


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('runs', nargs='+', help='dataset:method=RUN_DIR, e.g. fmnist:tbt=runs/x')
  parser.add_argument('--out', default=None, help='markdown file to write (default: print only)')
  args = parser.parse_args(argv)
  runs = []
  for item in args.runs:
    key, _, run_dir = item.partition('=')
    dataset, _, method = key.partition(':')
    if (dataset, method) not in PAPER_RECALL or not run_dir:
      parser.error(f'expected dataset:method=RUN_DIR with dataset in {sorted(DATASET_NAMES)} and '
                   f'method in {sorted(METHOD_NAMES)}, got {item!r}')
    runs.append((dataset, method, run_dir))
  text = tables(runs)
  print(text)
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      f.write(text)
  return text


if __name__ == '__main__':
  main()
