"""Results people read and tools parse: markdown tables, TSV files, JSON and matplotlib PNG plots."""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np


def _format(value) -> str:
  if isinstance(value, (float, np.floating)):
    return f'{value:.4f}'
  return str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
  """A GitHub-flavoured markdown table with one line per row; floats with 4 decimals."""
  if not rows:
    raise ValueError('markdown_table needs at least one row.')
  columns = list(columns or rows[0].keys())
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(_format(row.get(c, '')) for c in columns) + ' |' for row in rows]
  return '\n'.join(lines)


def write_tsv(path: str, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> None:
  """Tab-separated values with a header line (readable by pandas, R, spreadsheets)."""
  if not rows:
    raise ValueError('write_tsv needs at least one row.')
  columns = list(columns or rows[0].keys())
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\t'.join(columns) + '\n')
    for row in rows:
      f.write('\t'.join(_format(row[c]) if isinstance(row[c], float) else str(row[c]) for c in columns) + '\n')


def write_table(stem: str, rows: Sequence[Mapping]) -> str:
  """Writes `rows` as `<stem>.md` (markdown) and `<stem>.tsv`; returns the markdown table."""
  table = markdown_table(rows)
  os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
  with open(f'{stem}.md', 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  write_tsv(f'{stem}.tsv', rows)
  return table


def write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, default=_json_default)


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f'Not JSON serialisable: {type(value)}')


def _pyplot():
  """matplotlib.pyplot on the non-interactive Agg backend (imported on first use: plots are optional)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save_figure(plt, fig, path: str) -> None:
  """Lays out `fig`, writes it to `path` (directories created) and closes it."""
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


def plot_curves(path: str, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                xlabel: str, ylabel: str, title: str = '', ylim: tuple[float, float] | None = (0.0, 1.0),
                marker: str = 'o') -> None:
  """One PNG with a line per curve: `curves[name] = (xs, ys)`."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
  for name, (xs, ys) in curves.items():
    ax.plot(xs, ys, marker=marker, markersize=3, label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  _save_figure(plt, fig, path)


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSON-lines file (training's metrics.jsonl), one dict per line.

  A last line without its newline that does not parse is a write cut short (a run killed while
  logging) and is left out; any other line that does not parse raises ValueError naming it.
  """
  with open(path, encoding='utf-8') as f:
    lines = f.readlines()
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      if number == len(lines) and not line.endswith('\n'):
        break
      raise ValueError(f'{path}, line {number}, is not a JSON record: {error}') from error
  return records


def plot_training_curves(path: str, runs: Mapping[str, Sequence[Mapping]], *,
                         skip: Sequence[str] = ('step', 'images_per_second')) -> list[str]:
  """One PNG, a panel per logged metric against the step, a line per run.

  `runs[name]` holds a run's metrics.jsonl records. A panel whose positive values span more
  than a factor of 100 (gradient norms and interval regularisers early in certified training)
  has a log axis. Returns the metric names plotted.
  """
  plt = _pyplot()
  keys = sorted({key for records in runs.values() for record in records for key in record
                 if key not in skip and isinstance(record[key], (int, float))})
  if not keys:
    raise ValueError('No metrics to plot: the runs logged no numeric values besides the step.')
  columns = min(3, len(keys))
  rows = -(-len(keys) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), dpi=110,
                           squeeze=False)
  for ax, key in zip(axes.flat, keys):
    positive = []
    for name, records in runs.items():
      points = [(r['step'], r[key]) for r in records if key in r]
      ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1, label=name)
      positive += [p[1] for p in points if p[1] > 0]
    if positive and max(positive) > 100 * min(positive):
      ax.set_yscale('log')
    ax.set_title(key, fontsize=9)
    ax.set_xlabel('step', fontsize=8)
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(keys):]:
    ax.axis('off')
  if len(runs) > 1:
    axes.flat[0].legend(fontsize=7)
  _save_figure(plt, fig, path)
  return keys


def format_results_table(results: dict) -> str:
  """A markdown table: one row per embedding, one column per metric."""
  columns = list(next(iter(results.values())))
  lines = ['| embedding | ' + ' | '.join(columns) + ' |', '|---|' + '---|' * len(columns)]
  for name, row in results.items():
    lines.append(f'| {name} | ' + ' | '.join(f'{row[c]:.4f}' for c in columns) + ' |')
  return '\n'.join(lines)


class JsonLinesWriter:
  """Appends one JSON object per line (metrics.jsonl in the workdir).

  Records of steps at or after `start_step` are dropped first: they were logged after the
  checkpoint a resumed run restarts from (or by an earlier run, when none is left), and this run
  logs those steps again.
  """

  def __init__(self, path: str, start_step: int):
    earlier = read_jsonl(path) if os.path.exists(path) else []
    self._file = open(path, 'w', encoding='utf-8')
    for record in earlier:
      if record['step'] < start_step:
        self.write(record)

  def write(self, record: dict) -> None:
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def close(self) -> None:
    self._file.close()
