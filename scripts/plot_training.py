"""Training curves of one or more runs in one PNG: a panel per logged metric, a line per run.

Reads `<run>/metrics.jsonl`, so it also plots runs still training or stopped by an error
(`train.py` writes `<workdir>/training_curves.png` itself when a run finishes).

  python scripts/plot_training.py runs/fmnist_large_tbt_clip_ramp2000 \
      runs/fmnist_large_tbt_collapsed_at350 --out results/kakizaki/explorations/large_tbt_training.png
"""

import argparse
import os

from jaxcert import report


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('runs', nargs='+', help='training workdirs (each holding metrics.jsonl)')
  parser.add_argument('--out', required=True, help='PNG to write')
  parser.add_argument('--metrics', default='', help='comma-separated metric names (default: all logged)')
  args = parser.parse_args()
  runs = {}
  for run in args.runs:
    path = os.path.join(run, 'metrics.jsonl')
    if not os.path.exists(path):
      parser.error(f'{path} does not exist: is {run} a train.py workdir?')
    records = report.read_jsonl(path)
    if args.metrics:
      wanted = {'step', *args.metrics.split(',')}
      records = [{k: v for k, v in r.items() if k in wanted} for r in records]
    name = os.path.basename(os.path.normpath(run))
    runs[name if name not in runs else f'{run} ({len(runs) + 1})'] = records
  keys = report.plot_training_curves(args.out, runs)
  print(f'Wrote {args.out}: {", ".join(keys)} for {len(runs)} run(s).')


if __name__ == '__main__':
  main()
