"""Certified numbers under the rigorous float32 against float64, on trained checkpoints.

For each checkpoint, runs `certify.py` (mode ibp) twice, with `--config.ibp.dtype=float32` (outward-
rounded bounds of the real-valued encoder, distance slack 0, docs/rigorous_float32.md) and
`--config.ibp.dtype=float64` (round-to-nearest, slack 1e-5), one certification at a time, and
writes results/rigorous_float32/README.md: every Recall@K and CR-Recall@K cell (QA and CA, every
eps of the sweep) side by side, the cells that differ and by how much, and the eps = 0 box radii.

  python scripts/rigorous_float32_table.py --checkpoint_root runs
  python scripts/rigorous_float32_table.py --checkpoint_root runs --names quickstart --reuse

`--checkpoint_root` holds one trained checkpoint directory per name (e.g. runs/quickstart from
`python train.py --config configs/quickstart.py --workdir runs/quickstart`). The runs go to
`--workdir/<name>_<dtype>` (certify.py's results.json and ibp.md there); `--reuse` skips a run
whose results.json exists, `--table_only` only rewrites the table from existing runs.
"""

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

# Checkpoint name -> (training config, eps sweep override or None for the config's own).
# The triplet-trained quickstart encoder certifies nothing beyond small radii: its sweep adds them.
CHECKPOINTS = {
    'embedded_small_tbt': ('configs/embedded_small_tbt.py', None),
    'embedded_small_certified': ('configs/embedded_small_certified.py', None),
    'quickstart': ('configs/quickstart.py', (0.0, 0.001, 0.002, 0.005, 0.01, 0.05)),
}
DTYPES = ('float32', 'float64')
REPO = pathlib.Path(__file__).resolve().parent.parent


def certify_command(name: str, checkpoint_root: str, dtype: str, workdir: str) -> list[str]:
  """The certify.py command line of one run."""
  config, sweep = CHECKPOINTS[name]
  command = [sys.executable, 'certify.py', '--config', config,
             f'--config.checkpoint={os.path.join(checkpoint_root, name)}',
             '--config.certify.mode=ibp', f'--config.ibp.dtype={dtype}',
             f'--workdir={os.path.join(workdir, f"{name}_{dtype}")}']
  if sweep is not None:
    command.append(f'--config.ibp.eps_sweep=({",".join(str(eps) for eps in sweep)},)')
  return command


def load_average() -> str:
  return ' '.join(f'{load:.1f}' for load in os.getloadavg())


RUN_LOG = 'table_run.json'  # beside each run's results.json: its command, seconds and load


def run_all(names, dtypes, checkpoint_root: str, workdir: str, reuse: bool) -> None:
  """Runs every (name, dtype) certification in turn, one at a time."""
  for name in names:
    for dtype in dtypes:
      run = f'{name}_{dtype}'
      if reuse and (pathlib.Path(workdir) / run / 'results.json').exists():
        continue
      command = certify_command(name, checkpoint_root, dtype, workdir)
      load_before = load_average()
      start = time.perf_counter()
      print(f'[{run}] {" ".join(command[1:])}  (load {load_before})', flush=True)
      subprocess.run(command, check=True, cwd=REPO)
      (pathlib.Path(workdir) / run / RUN_LOG).write_text(json.dumps(
          {'s': time.perf_counter() - start, 'load': f'{load_before} -> {load_average()}'}))


def cells(results: dict) -> dict[str, float]:
  """'Recall@K', 'eps E, QA@K', 'eps E, CA@K' -> value, in the order of the tables."""
  table = {f'Recall@{k}': results[f'recall@{k}'] for k in results['ks']}
  for eps, by_attack in results['sweep'].items():
    for attack in ('qa', 'ca'):
      for k, value in by_attack[attack].items():
        table[f'eps {eps}, {attack.upper()}@{k}'] = value
  return table


def _format_eps(eps: str) -> str:
  return f'{float(eps):g}'


def checkpoint_section(name: str, rigorous: dict, float64: dict, num_queries: int) -> list[str]:
  """Markdown: the sweep side by side, then the cells that differ."""
  ks = rigorous['ks']
  lines = [f'## {name}', '',
           f'Training config `{CHECKPOINTS[name][0]}`, checkpoint step {rigorous["checkpoint_step"]}; '
           f'{num_queries} queries. Rigorous float32: {rigorous["rounding"]["dtype"]}, distance '
           f'slack {rigorous["rounding"]["distance_slack"]}; float64: slack '
           f'{float64["rounding"]["distance_slack"]}. Each cell: rigorous float32 / float64.', '',
           '| eps | ' + ' | '.join(f'QA@{k}' for k in ks) + ' | '
           + ' | '.join(f'CA@{k}' for k in ks) + ' |',
           '|---|' + '---|' * (2 * len(ks))]
  lines.append('| Recall@K | ' + ' | '.join(
      f'{rigorous[f"recall@{k}"]:.3f} / {float64[f"recall@{k}"]:.3f}' for k in ks)
      + ' | ' + ' | '.join('' for _ in ks) + ' |')
  for eps in rigorous['sweep']:
    row = []
    for attack in ('qa', 'ca'):
      for k in ks:
        row.append(f'{rigorous["sweep"][eps][attack][str(k)]:.3f} / '
                   f'{float64["sweep"][eps][attack][str(k)]:.3f}')
    lines.append(f'| {_format_eps(eps)} | ' + ' | '.join(row) + ' |')
  ours, theirs = cells(rigorous), cells(float64)
  differing = [(cell, ours[cell], theirs[cell]) for cell in ours if ours[cell] != theirs[cell]]
  lines += ['', f'{len(ours) - len(differing)} of {len(ours)} cells are equal.']
  if differing:
    lines += ['', '| cell | rigorous float32 | float64 | difference | queries |', '|---|---|---|---|---|']
    lines += [f'| {cell} | {a:.3f} | {b:.3f} | {a - b:+.3f} | {round((a - b) * num_queries):+d} |'
              for cell, a, b in differing]
  radius = rigorous['box_radius'].get('0.0')
  if radius is not None:
    lines += ['', 'Rigorous float32 box radius ||(upper - lower) / 2|| at eps = 0 (the rounding bounds '
              f'alone): query median {radius["query"]["50"]:.2g}, p99 {radius["query"]["99"]:.2g}; '
              f'candidate median {radius["candidate"]["50"]:.2g}; median distance from a query to '
              f'its nearest candidate {rigorous["nearest_distance_median"]:.2g}.']
  lines += ['', 'Seconds (rigorous float32 / float64): bounds '
            f'{sum(rigorous["timing_s"]["bounds"].values()):.1f} / '
            f'{sum(float64["timing_s"]["bounds"].values()):.1f}, verification '
            f'{sum(rigorous["timing_s"]["verify"].values()):.1f} / '
            f'{sum(float64["timing_s"]["verify"].values()):.1f} over the sweep.', '']
  return lines


def write_table(names, workdir: str, out: str, checkpoint_root: str) -> str:
  """Writes `out`/README.md from the runs in `workdir`; returns its text."""
  import jax  # pylint: disable=import-outside-toplevel
  sections = []
  for name in names:
    loaded = {}
    for dtype in DTYPES:
      path = pathlib.Path(workdir) / f'{name}_{dtype}' / 'results.json'
      if not path.exists():
        print(f'missing {path}: {name} left out of the table', flush=True)
        break
      loaded[dtype] = json.loads(path.read_text())
    else:
      config = json.loads((pathlib.Path(workdir) / f'{name}_float32' / 'config.json').read_text())
      sections += checkpoint_section(name, loaded['float32'], loaded['float64'],
                                     config['eval']['num_queries'])
  log = {}
  for name in names:
    for dtype in DTYPES:
      path = pathlib.Path(workdir) / f'{name}_{dtype}' / RUN_LOG
      if path.exists():
        log[f'{name}_{dtype}'] = json.loads(path.read_text())
  # The checkpoint root is machine-specific: the table names it as a placeholder.
  del checkpoint_root
  commands = [' '.join(['python'] + certify_command(name, '<checkpoint_root>', dtype, workdir)[1:])
              for name in names for dtype in DTYPES]
  text = '\n'.join([
      '# Rigorous float32 against float64: certified numbers', '',
      'Written by `python scripts/rigorous_float32_table.py` '
      f'({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, jax {jax.__version__}, '
      f'{jax.default_backend()}, `--checkpoint_root` holding the trained checkpoints); the runs, '
      'one at a time:', '',
      *[f'    {command}' for command in commands], '',
      'Full budgets (the configs\' 1000 queries x 1000 candidates). Rigorous float32 is certify.py\'s '
      '`--config.ibp.dtype=float32`: outward-rounded interval bounds of the real-valued encoder, '
      'distance slack 0 (docs/rigorous_float32.md); float64 rounds to nearest with slack 1e-5 '
      '(docs/bounds.md §10). Recall@K is from each run\'s own embeddings (float32 for the rigorous '
      'run, float64 for the other). "queries" is the difference in certified queries. The config\'s '
      'own eps (`config.ibp.eps`) is always certified too. Why the cells differ: '
      'docs/rigorous_float32.md §9.', '',
      *sections,
      *(['Wall time of each run (2 shared CPU cores; load average before -> after): '
         + '; '.join(f'{run} {entry["s"]:.0f} s (load {entry["load"]})'
                     for run, entry in log.items()) + '.', ''] if log else [])])
  pathlib.Path(out).mkdir(parents=True, exist_ok=True)
  (pathlib.Path(out) / 'README.md').write_text(text)
  return text


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint_root', default='runs',
                      help='directory holding one checkpoint directory per name')
  parser.add_argument('--names', default=','.join(CHECKPOINTS),
                      help=f'comma-separated checkpoint names from {list(CHECKPOINTS)}')
  parser.add_argument('--workdir', default='runs/rigorous_float32')
  parser.add_argument('--out', default='results/rigorous_float32')
  parser.add_argument('--dtypes', default=','.join(DTYPES),
                      help=f'comma-separated dtypes to run, from {DTYPES} (the table needs both)')
  parser.add_argument('--reuse', action='store_true', help='skip runs whose results.json exists')
  parser.add_argument('--table_only', action='store_true', help='only rewrite the table')
  args = parser.parse_args(argv)
  names = [name for name in args.names.split(',') if name]
  unknown = [name for name in names if name not in CHECKPOINTS]
  if unknown:
    parser.error(f'unknown checkpoint names {unknown}; valid: {list(CHECKPOINTS)}')
  dtypes = [dtype for dtype in args.dtypes.split(',') if dtype]
  if not dtypes or any(dtype not in DTYPES for dtype in dtypes):
    parser.error(f'--dtypes must name some of {DTYPES}, got {args.dtypes!r}')
  if not args.table_only:
    run_all(names, dtypes, args.checkpoint_root, args.workdir, args.reuse)
  print(write_table(names, args.workdir, args.out, args.checkpoint_root))


if __name__ == '__main__':
  main()
