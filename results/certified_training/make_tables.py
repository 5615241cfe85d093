"""Tables of results/certified_training/README.md from the runs copied here.

  python results/certified_training/make_tables.py collect runs/<name> [<name> ...]
  python results/certified_training/make_tables.py tables

`collect` copies each run's certification by certify.py's default certificate
(`<run>/certify_ibp/results.json`, `ibp.md`) and, where the run has one, by Kakizaki et al.'s
Theorem 1 for QA (`<run>/certify_ibp_kakizaki/`, certify.py `--config.ibp.qa_bound=kakizaki
--workdir runs/<name>/certify_ibp_kakizaki`, copied as `results_kakizaki.json`, `ibp_kakizaki.md`),
and a summary of its training (`train.json`: steps, the schedule and settings, training wall time
from the run's config.json to its last checkpoint, i.e. with compilation, and the median images/s
of its log intervals) into results/certified_training/<name>/; `tables` writes tables.md from every
such directory: Recall@K, and CR-Recall@K under QA and CA at eps = 0.1 and 0.2 (Kakizaki et al.,
Eq. 25), one row per run and certificate. Runs collected before certify.py's linear QA bound
existed hold only a Theorem 1 certification (their results.json names no `certified_by`).
"""

import json
import pathlib
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent
KS = (10, 20, 40)
PAPER = 'Kakizaki et al. Table 2, FMNIST Large TBT at eps 0.2: QA 0.20 / 0.30 / 0.45, CA 0.07 / 0.24 / 0.64'
# certify.py's certifications of a run: (its directory in the run, the suffix of the copies here).
CERTIFICATIONS = (('certify_ibp', ''), ('certify_ibp_kakizaki', '_kakizaki'))
# The settings of configs/embedded_small_certified.py before issue 23's second round; a row's
# setting names the fields where its run differs from these (besides method, triplets, kappa).
REFERENCE = {'eps': 0.2, 'ramp': '100-800', 'margin': 1.0, 'qa_weight': 1.0, 'ca_weight': 1.0,
             'tbt_weight': 0.0, 'learning_rate': 0.001, 'lr_decay_epochs': [17], 'embedding_dim': 128,
             'batch_size': 100, 'm_per_class': 10}


def _read_jsonl(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def collect(run_dir: str) -> None:
  run = pathlib.Path(run_dir)
  out = HERE / run.name
  out.mkdir(exist_ok=True)
  for directory, suffix in CERTIFICATIONS:
    if (run / directory).is_dir():
      shutil.copyfile(run / directory / 'results.json', out / f'results{suffix}.json')
      shutil.copyfile(run / directory / 'ibp.md', out / f'ibp{suffix}.md')
  config = json.loads((run / 'config.json').read_text())
  records = _read_jsonl(run / 'metrics.jsonl')
  rates = sorted(r['images_per_second'] for r in records[1:])
  # Wall time: from the config (written when the run starts) to its last checkpoint.
  checkpoints = [p for p in (run / 'checkpoints').rglob('*')]
  end = max(p.stat().st_mtime for p in checkpoints)
  train = {
      'method': config['method'], 'steps': records[-1]['step'] + 1,
      'model': {k: config['model'].get(k) for k in ('name', 'batch_norm', 'ibp_init',
                                                    'embedding_dim')},
      'certified': config.get('certified'), 'grad_clip_norm': config.get('grad_clip_norm'),
      'learning_rate': config['learning_rate'], 'lr_decay_epochs': config['lr_decay_epochs'],
      'batch_size': config['batch_size'], 'm_per_class': config['m_per_class'],
      'seed': config.get('seed', 0),
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


def _differences(train: dict) -> list[str]:
  """The fields of `REFERENCE` where the run's setting differs, as 'name value'."""
  certified = train['certified'] or {}
  values = {name: certified.get(name, REFERENCE[name])
            for name in ('eps', 'margin', 'qa_weight', 'ca_weight', 'tbt_weight')}
  values['ramp'] = f'{certified.get("ramp_start_steps")}-{certified.get("ramp_end_steps")}'
  values['learning_rate'] = train['learning_rate']
  values['lr_decay_epochs'] = list(train['lr_decay_epochs'])
  values['embedding_dim'] = train['model'].get('embedding_dim') or REFERENCE['embedding_dim']
  for name in ('batch_size', 'm_per_class'):
    values[name] = train.get(name, REFERENCE[name])
  names = {'eps': 'train eps', 'learning_rate': 'lr', 'lr_decay_epochs': 'lr x0.1 at epochs',
           'embedding_dim': 'dim'}
  return [f'{names.get(name, name)} {value}' for name, value in values.items()
          if value != REFERENCE[name]]


def setting(train: dict) -> str:
  """What distinguishes a run: the method, its triplets and kappa, Shi et al.'s parts, and the
  fields where it differs from `REFERENCE`."""
  certified = train['certified'] or {}
  parts = [train['method']]
  if train['method'] == 'certified_triplet':
    triplets = certified.get('triplets', 'all')
    if triplets == 'ranking':
      triplets += f' (exclude {certified.get("exclude_nearest", 0)})'
    parts += [f'triplets {triplets}', f'QA {certified.get("qa_bound", "linear")}']
    if certified.get('allowed_violations'):
      parts.append(f'allowed violations {certified["allowed_violations"]}')
    if certified.get('crown_ibp_rows'):
      parts.append(f'CROWN-IBP QA rows {certified["crown_ibp_rows"]} (beta '
                   f'{certified["crown_ibp_beta_start"]} -> {certified["crown_ibp_beta_end"]})')
    adversarial = certified.get('adversarial', 'none')
    if adversarial != 'none':
      share = (f'alpha {certified["mtl_alpha"]}' if adversarial == 'mtl_ibp'
               else f'lambda {certified["sabr_lambda"]}')
      parts.append(f'{adversarial} ({certified["pgd_steps"]} PGD steps, {share})')
  parts.append(f'kappa {certified.get("kappa")}')
  model = train['model']
  parts += [name for name, on in (('IBP init', model.get('ibp_init')),
                                  ('BatchNorm', model.get('batch_norm')),
                                  ('warm-up reg', certified.get('warmup_weight'))) if on]
  parts.append(f'clip {train["grad_clip_norm"]}' if train['grad_clip_norm'] else 'no clip')
  if train['method'] != 'tbt':
    parts += _differences(train)
  if train.get('seed', 0):  # runs collected before the seed was recorded used seed 0
    parts.append(f'seed {train["seed"]}')
  return ', '.join(parts)


def _qa_certificate(results: dict) -> str:
  qa_bound = (results.get('certified_by') or {}).get('qa_bound', 'kakizaki')
  return {'linear': 'linear', 'kakizaki': 'Theorem 1'}.get(qa_bound, qa_bound)


# Issue 23's ablation, what each part of the certified objective adds on the embedded sample:
# (the part, the run with it, the run it is compared with, the certificate suffix of both
# certifications ('' certify.py's default, '_kakizaki' Theorem 1 for QA), what else differs).
ABLATION = (
    ('1: certified triplet loss (QA and CA hinges over the boxes) instead of TBT\'s regulariser',
     'c_B_plain', 'baseline_tbt', '_kakizaki', '1200 against 1500 steps; kappa 0.5 both'),
    ("2: Shi et al. 2021's IBP initialisation, BatchNorm and warm-up regularisers",
     'c_A', 'c_B_plain', '_kakizaki', 'same steps'),
    ("(jaxcert's) ranking triplets: the nearest positive against every other point but the 3 nearest",
     'c_D_ranking', 'c_A', '_kakizaki', 'kappa 0.3 against 0.5'),
    ('3: MTL-IBP (De Palma et al. 2024; QA hinge at a 2-step PGD point mixed 1:1 with its bound)',
     't_mtl_ibp_pgd2_2000', 't_dim32_ca6_3000', '', '2000 against 3000 steps at 1.7-2.2x the step (about 1.1-1.5x the time)'),
    ('3: SABR (Mueller et al. 2023; boxes of 0.4 eps around a 2-step PGD point)',
     't_sabr_pgd2_2000', 't_dim32_ca6_3000', '', '2000 against 3000 steps at 1.0-1.3x the step (about 0.7-0.9x the time)'),
    ('4: CROWN-IBP (Zhang et al. 2020; 2 QA rows per anchor through the encoder, beta 1 -> 0)',
     'crown_ibp2_beta10', 't_dim32_ca6_3000_rerun', '', 'same steps, 4.3x the step; paired rerun'),
    ('4: CROWN-IBP, beta 1 -> 1', 'crown_ibp2_beta11', 't_dim32_ca6_3000_rerun', '',
     'same steps, 4.3x the step; paired rerun'),
)


def _at_40(run: str, suffix: str, eps: float = 0.2) -> tuple[float, float]:
  row = _sweep_row(json.loads((HERE / run / f'results{suffix}.json').read_text()), eps)
  return row['qa']['40'], row['ca']['40']


def ablation() -> list[str]:
  """The rows of `ABLATION`: QA / CA CR-Recall@40 at eps 0.2 with the part and without it."""
  lines = ['', '## What each part adds (issue 23\'s ablation, embedded sample, eps 0.2)', '',
           '| part | run | compared with | QA cert | QA@40 with / without | CA@40 with / without | '
           'also differs |', '|---|---|---|---|---|---|---|']
  for part, run, reference, suffix, note in ABLATION:
    (qa, ca), (qa0, ca0) = _at_40(run, suffix), _at_40(reference, suffix)
    certificate = 'Theorem 1' if suffix else 'linear'
    lines.append(f'| {part} | `{run}` | `{reference}` | {certificate} | {qa:.3f} / {qa0:.3f} '
                 f'({qa - qa0:+.3f}) | {ca:.3f} / {ca0:.3f} ({ca - ca0:+.3f}) | {note} |')
  return lines


def tables() -> str:
  lines = [f'Written by `make_tables.py tables`. Reference: {PAPER}.',
           '"QA cert": the QA certificate (linear: certify.py\'s default, exact over the query\'s '
           'embedding box; Theorem 1: Kakizaki et al.\'s); CA is always Theorem 2.', '']
  header = ('| run | setting | steps | train wall s (img/s) | R@1 / 10 / 20 / 40 | QA cert | eps | '
            'QA@10 / 20 / 40 | CA@10 / 20 / 40 |')
  lines += [header, '|---|---|---|---|---|---|---|---|---|']
  for run in sorted(p for p in HERE.iterdir() if (p / 'train.json').exists()):
    train = json.loads((run / 'train.json').read_text())
    for _, suffix in CERTIFICATIONS:
      path = run / f'results{suffix}.json'
      if not path.exists():
        continue
      results = json.loads(path.read_text())
      recall = ' / '.join(f'{results[f"recall@{k}"]:.3f}' for k in (1, 10, 20, 40))
      for eps in (0.1, 0.2):
        row = _sweep_row(results, eps)
        qa, ca = (' / '.join(f'{row[attack][str(k)]:.3f}' for k in KS) for attack in ('qa', 'ca'))
        lines.append(f'| `{run.name}` | {setting(train)} | {train["steps"]} | '
                     f'{train["wall_s"]} ({train["median_images_per_second"]:.0f}) | '
                     f'{recall} | {_qa_certificate(results)} | {eps} | {qa} | {ca} |')
  text = '\n'.join(lines + ablation()) + '\n'
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
