"""PGD on the smoothed model of a trained encoder at its certified radii (RetrievalGuard acceptance (2)).

Reads a `certify.py --config.certify.mode=smoothing` run (its config.json, per-query TSV and
smoothed_n<n>.npz), restores the encoder, and attacks up to --max_queries certified queries of each
certificate with `jaxcert.attacks.attack_smoothed_retrieval` (L2 PGD on the common-noise estimate
of g, i.e. the expectation over noise) at their certified radius and, for power, at
--power_factor times it. Each attacked input is smoothed again with --eval_samples independent
samples; its 1-NN counts as changed when the re-estimated margin d(x + delta; g_hat) is below
-tolerance, tolerance = 2 (eps_eval + eps_gallery) at failure probability 1e-3 each (McDiarmid,
`smoothing.vector_concentration_radius`): below it the true margin is negative with high
probability. Writes a markdown report.

  python scripts/retrievalguard_pgd_check.py --certify_dir runs/fmnist_small_gdml0.5/smoothing \
      --out results/retrievalguard/pgd_check.md
"""

import argparse
import csv
import json
import os
import time

import jax
import ml_collections
import numpy as np

from jaxcert import attacks
from jaxcert import certification
from jaxcert import smoothing

_BETA = 1e-3


def _read_tsv(path):
  with open(path, encoding='utf-8') as f:
    return list(csv.DictReader(f, delimiter='\t'))


def _margins(embed, evaluator, key, images, labels, radius, stored, rows, args, sigma):
  """Re-estimated margins of the attacked queries `rows` at `radius` (attacked in batches)."""
  attacked = []
  for start in range(0, len(rows), args.batch_size):
    batch = rows[start:start + args.batch_size]
    attacked.append(np.asarray(attacks.attack_smoothed_retrieval(
        embed, jax.random.fold_in(key, start), images[batch], labels[batch],
        stored['gallery_estimate_mean'], stored['gallery_labels'], radius[batch], sigma=sigma,
        num_noise=args.num_noise, num_steps=args.num_steps, num_restarts=args.num_restarts,
        query_gallery_index=stored['query_gallery_index'][batch])))
  estimate = smoothing.smooth_dataset(evaluator, jax.random.fold_in(key, 10 ** 6),
                                      np.concatenate(attacked), batch_size=args.batch_size)
  masks = attacks.retrieval_masks(labels[rows], stored['gallery_labels'],
                                    stored['query_gallery_index'][rows])
  return attacks.plug_in_margin(estimate.mean, stored['gallery_estimate_mean'], *masks)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--certify_dir', required=True, help='workdir of a smoothing certify run')
  parser.add_argument('--out', required=True, help='markdown report to write')
  parser.add_argument('--max_queries', type=int, default=20, help='per certificate')
  parser.add_argument('--num_noise', type=int, default=256, help='noise samples of g_m')
  parser.add_argument('--num_steps', type=int, default=50)
  parser.add_argument('--num_restarts', type=int, default=2)
  parser.add_argument('--power_factor', type=float, default=3.0)
  parser.add_argument('--eval_samples', type=int, default=10_000)
  parser.add_argument('--batch_size', type=int, default=10)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  started = time.perf_counter()

  with open(os.path.join(args.certify_dir, 'config.json'), encoding='utf-8') as f:
    config = ml_collections.ConfigDict(json.load(f))
  settings = config.smoothing
  inputs = certification.load_inputs(config)
  embed = smoothing.bounded_embedding(inputs.embed, settings.F, settings.bound_mode)
  stored = dict(np.load(os.path.join(args.certify_dir, f'smoothed_n{settings.num_samples}.npz')))
  images = np.asarray(inputs.dataset.test.images[stored['query_index']], np.float32)
  labels = stored['query_labels']
  evaluator = smoothing.smooth(embed, sigma=settings.sigma, num_samples=args.eval_samples,
                               chunk_size=settings.chunk_size, F=settings.F)
  embedding_dim = stored['gallery_estimate_mean'].shape[1]
  tolerance = 2 * (smoothing.vector_concentration_radius(args.eval_samples, _BETA, F=settings.F,
                                                         embedding_dim=embedding_dim)
                   + smoothing.vector_concentration_radius(settings.num_samples, _BETA,
                                                           F=settings.F,
                                                           embedding_dim=embedding_dim))
  key = jax.random.key(args.seed)
  lines, summary = [], []
  for certificate in smoothing.CERTIFICATES:
    path = os.path.join(args.certify_dir, f'smoothing_{certificate}.tsv')
    if not os.path.exists(path):
      continue
    radius = np.array([float(r['radius']) for r in _read_tsv(path)])
    rows = np.flatnonzero(radius > 0)[:args.max_queries]
    if rows.size == 0:
      summary.append(f'| {certificate} | 0 | - | - | - |')
      continue
    at_radius = _margins(embed, evaluator, key, images, labels, radius, stored, rows, args,
                         settings.sigma)
    beyond = _margins(embed, evaluator, key, images, labels, args.power_factor * radius, stored,
                      rows, args, settings.sigma)
    summary.append(f'| {certificate} | {rows.size} | {int(np.sum(at_radius < -tolerance))} | '
                   f'{int(np.sum(at_radius < 0))} | {int(np.sum(beyond < -tolerance))} |')
    for row, margin_r, margin_far in zip(rows, at_radius, beyond):
      lines.append(f'| {certificate} | {int(stored["query_index"][row])} | {radius[row]:.4f} | '
                   f'{margin_r:.4f} | {margin_far:.4f} |')
  seconds = time.perf_counter() - started
  report = [
      f'# PGD on the smoothed model at the certified radius ({args.certify_dir})', '',
      f'sigma = {settings.sigma}, certification n = {settings.num_samples}, alpha = '
      f'{settings.alpha}; attack: L2 PGD, {args.num_steps} steps of radius/10, '
      f'{args.num_restarts} restarts, each on the mean of {args.num_noise} fresh noise samples '
      f'(EOT); re-estimate with {args.eval_samples} independent samples; tolerance = '
      f'{tolerance:.4f}. {seconds:.0f} s.', '',
      f'| certificate | attacked | changed (margin < -tol) | estimate < 0 | changed at '
      f'{args.power_factor:g} x radius |', '|---|---|---|---|---|', *summary, '',
      '| certificate | query (test index) | radius | margin at radius | margin at '
      f'{args.power_factor:g} x radius |', '|---|---|---|---|---|', *lines, '']
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w', encoding='utf-8') as f:
    f.write('\n'.join(report))
  print('\n'.join(report))


if __name__ == '__main__':
  main()
