"""certify.py mode 'smoothing': certified 1-NN retrieval by Gaussian smoothing (RetrievalGuard).

RetrievalGuard (Wu et al., ICML 2022, Algorithm 1;
derivations in docs/smoothing.md) and the bisector certificate, on the test split of
`config.eval`:
  protocol 'leave_one_out' (default; RetrievalGuard follows Roth et al.: every test image queries the
    others): the candidate set C is the gallery, and each of its first `num_queries` images is a
    query against the rest of C. One smoothing per image serves it as query and gallery item.
  protocol 'split' (Kakizaki et al. Sec. 5.1.1): the first `num_queries` images of the query set Q
    against C.
Every image is smoothed with `num_select` selection samples and `num_samples` estimation samples
(`jaxcert.smoothing.smooth_select_and_estimate`); `jaxcert.smoothing.certify` gives each query its
retrieved item, margin lower bound and radius under the certificate(s) asked for.

Files written to `workdir` (one *curve* per certificate and ablation value):
  smoothing_<curve>.tsv   one line per query in the style of Cohen et al.'s `certify.py`: index (in
                          the test split), label, retrieved_label, margin_lower_bound, radius
                          (-1 = abstain), correct, seconds (smoothing wall time of the query)
  recall_at_1_r.md/.tsv   certified Recall@1(r) at `config.smoothing.radii`, one row per curve,
                          with the base model's Recall@1, the smoothed model's and the rejected ratio
  recall_at_1_r.png       Recall@1(r) against r for every curve (RetrievalGuard, Figs. 2-4)
  smoothed_n<n>.npz       the selection and estimation smoothings (means, max norms, ...), labels
                          and test-split indices: `estimates_from=<that workdir>` certifies them
                          again (other alpha, certificate) without sampling, after checking they
                          are of the same images, checkpoint and smoothing settings;
                          scripts/retrievalguard_pgd_check.py attacks the smoothed model with them
The returned summary (certification.run writes it to results.json) holds the same numbers.

Ablations (RetrievalGuard, Sec. 4.4.2): `ablation='num_samples'` smooths once per value of
`ablation_values`; `ablation='alpha'` certifies one smoothing at each alpha.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import numpy as np
import tqdm

from jaxcert import data
from jaxcert import metrics
from jaxcert import report
from jaxcert import retrieval
from jaxcert import smoothing

CERTIFICATE_CHOICES = smoothing.CERTIFICATES + ('both',)
ABLATIONS = ('', 'num_samples', 'alpha')
PROTOCOLS = ('split', 'leave_one_out')
TSV_COLUMNS = ('index', 'label', 'retrieved_label', 'margin_lower_bound', 'radius', 'correct',
               'seconds')
_PLOT_POINTS = 200


def _certificates(name: str) -> tuple[str, ...]:
  if name not in CERTIFICATE_CHOICES:
    raise ValueError(f'config.smoothing.certificate={name!r} is not one of {CERTIFICATE_CHOICES}.')
  return smoothing.CERTIFICATES if name == 'both' else (name,)


def _sweep(settings) -> tuple[list[int], list[float]]:
  """(sample counts to smooth with, alphas to certify at) for the ablation asked for."""
  if settings.ablation not in ABLATIONS:
    raise ValueError(f'config.smoothing.ablation={settings.ablation!r} is not one of {ABLATIONS}.')
  values = list(settings.ablation_values)
  if settings.ablation and not values:
    raise ValueError(f'config.smoothing.ablation={settings.ablation!r} needs ablation_values, '
                     f'e.g. (1000, 10000, 100000) for num_samples or (0.001, 0.01, 0.1) for alpha.')
  if settings.ablation == 'num_samples':
    return [int(n) for n in values], [settings.alpha]
  if settings.ablation == 'alpha':
    return [settings.num_samples], [float(a) for a in values]
  return [settings.num_samples], [settings.alpha]


def _curve_name(certificate: str, settings, num_samples: int, alpha: float) -> str:
  if settings.ablation == 'num_samples':
    return f'{certificate} n={num_samples}'
  if settings.ablation == 'alpha':
    return f'{certificate} alpha={alpha:g}'
  return certificate


def _file_stem(curve: str) -> str:
  return 'smoothing_' + re.sub(r'[^A-Za-z0-9.]+', '_', curve).strip('_')


class _Progress:
  """A tqdm bar over smoothed images that shows Monte-Carlo samples per second."""

  def __init__(self, total_images: int, enabled: bool):
    self._bar = tqdm.tqdm(total=total_images, desc='smoothing', unit='img', dynamic_ncols=True,
                          disable=not enabled)
    self._samples = 0
    self._start = time.perf_counter()

  def __call__(self, num_inputs: int, samples_per_input: int) -> None:
    self._samples += num_inputs * samples_per_input
    elapsed = max(time.perf_counter() - self._start, 1e-9)
    self._bar.set_postfix(samples_s=f'{self._samples / elapsed:.0f}')
    self._bar.update(num_inputs)

  @property
  def samples_per_second(self) -> float:
    return self._samples / max(time.perf_counter() - self._start, 1e-9)

  def close(self) -> None:
    self._bar.close()


class _QueriesAndGallery(NamedTuple):
  """What is certified: query rows, the gallery, and where each query sits in the gallery."""
  query_images: Any
  query_labels: np.ndarray
  query_index: np.ndarray          # index of each query in the test split (the TSV's 'index')
  gallery_images: Any
  gallery_labels: np.ndarray
  gallery_index: np.ndarray        # index of each gallery item in the test split
  query_gallery_index: np.ndarray | None  # leave_one_out: query i is gallery item i


def _queries_and_gallery(inputs, settings) -> _QueriesAndGallery:
  """The query rows and gallery of `settings.protocol` (see the module docstring)."""
  if settings.protocol not in PROTOCOLS:
    raise ValueError(f'config.smoothing.protocol={settings.protocol!r} is not one of {PROTOCOLS}.')
  if settings.num_queries != -1 and int(settings.num_queries) < 1:
    raise ValueError(f'config.smoothing.num_queries must be >= 1 or -1 (all), got '
                     f'{settings.num_queries}.')
  config = inputs.config
  query_split, candidate_split = data.query_candidate_split(
      len(inputs.dataset.test.labels), num_queries=config.eval.num_queries,
      num_candidates=config.eval.num_candidates, seed=config.eval.split_seed)
  gallery_labels = np.asarray(inputs.candidates.labels)
  if settings.protocol == 'leave_one_out':
    source, split_index = inputs.candidates, candidate_split
  else:
    source, split_index = inputs.queries, query_split
  num_queries = len(source.labels)
  if settings.num_queries != -1:
    num_queries = min(num_queries, int(settings.num_queries))
  return _QueriesAndGallery(
      source.images[:num_queries], np.asarray(source.labels[:num_queries]),
      split_index[:num_queries], inputs.candidates.images, gallery_labels, candidate_split,
      np.arange(num_queries) if settings.protocol == 'leave_one_out' else None)


def _base_recall_at_1(embed, sets: _QueriesAndGallery, batch_size: int) -> float:
  """Recall@1 of the base embedding h on the same queries and gallery (no smoothing)."""
  gallery = retrieval.embed_in_batches(embed, sets.gallery_images, batch_size)
  if sets.query_gallery_index is None:
    _, index = retrieval.blocked_topk(
        retrieval.embed_in_batches(embed, sets.query_images, batch_size), gallery, 1)
  else:
    _, index = retrieval.blocked_topk(gallery, gallery, 1, exclude_self=True)
    index = index[sets.query_gallery_index]
  retrieved = sets.gallery_labels[np.asarray(index)]
  return metrics.recall_at_k(sets.query_labels, retrieved, (1,))[1]


def run(inputs, workdir: str) -> dict:
  """Certifies `inputs` (a `jaxcert.certification.CertifyInputs`) by smoothing; see module doc.

  Returns:
    {'settings', 'base_recall@1', 'num_queries', 'num_gallery', 'samples_per_second',
     'curves': {curve: {'num_samples', 'alpha', 'certificate', 'recall@1_smoothed', 'certified',
     'rejected', 'median_radius', 'recall@1(r)': {r: value}}}}.
  """
  config = inputs.config
  settings = config.smoothing
  os.makedirs(workdir, exist_ok=True)
  certificates = _certificates(settings.certificate)
  sample_counts, alphas = _sweep(settings)
  sets = _queries_and_gallery(inputs, settings)
  num_queries, num_gallery = len(sets.query_labels), len(sets.gallery_labels)
  if not config.model.get('l2_normalize', False):
    logging.warning('The encoder is not L2-normalised; bound_mode=%r changes its embeddings to '
                    'enforce ||h|| <= F=%g (Lemmas 3.3, 3.6).', settings.bound_mode, settings.F)
  embed = smoothing.bounded_embedding(inputs.embed, settings.F, settings.bound_mode)
  embedding_dim = jax.eval_shape(embed, sets.query_images[:1]).shape[-1]
  _check_before_smoothing(settings, certificates, sample_counts, alphas, embedding_dim)
  base_recall = _base_recall_at_1(inputs.embed, sets, config.eval.batch_size)

  key = jax.random.key(settings.seed)
  # What identifies a smoothing (checked when `estimates_from` reuses one).
  metadata = {'checkpoint': str(config.checkpoint), 'sigma': float(settings.sigma),
              'F': float(settings.F), 'bound_mode': settings.bound_mode,
              'num_select': int(settings.num_select), 'chunk_size': int(settings.chunk_size),
              'seed': int(settings.seed), 'protocol': settings.protocol}
  smoothed_per_n = num_gallery + (num_queries if sets.query_gallery_index is None else 0)
  progress = _Progress(2 * len(sample_counts) * smoothed_per_n, config.get('progress_bar', True))
  curves, results = {}, {}
  smoothing_options = dict(sigma=settings.sigma, num_select=settings.num_select,
                           chunk_size=settings.chunk_size, batch_size=settings.batch_size,
                           F=settings.F, on_batch=progress)
  try:
    for num_samples in sample_counts:
      if settings.estimates_from:
        smoothed = _load_estimates(settings.estimates_from, num_samples, sets, metadata)
      else:
        smoothed = _smooth(embed, key, sets, num_samples, smoothing_options)
        _save_estimates(os.path.join(workdir, f'smoothed_n{num_samples}.npz'), smoothed, sets,
                        metadata)
      gallery_select, gallery_estimate = smoothed['gallery_select'], smoothed['gallery_estimate']
      if sets.query_gallery_index is None:
        query_select, query_estimate = smoothed['query_select'], smoothed['query_estimate']
      else:  # One smoothing per image serves it as a query and as a gallery item (docs Sec. 3).
        query_select, query_estimate = (s.take(sets.query_gallery_index)
                                        for s in (gallery_select, gallery_estimate))
      query_seconds = query_select.seconds + query_estimate.seconds
      for alpha in alphas:
        for certificate in certificates:
          result = smoothing.certify(
              query_select, query_estimate, sets.query_labels, gallery_select, gallery_estimate,
              sets.gallery_labels, alpha=alpha, certificate=certificate,
              num_negative_pairs=settings.num_negative_pairs,
              query_gallery_index=sets.query_gallery_index)
          curve = _curve_name(certificate, settings, num_samples, alpha)
          _write_query_tsv(os.path.join(workdir, _file_stem(curve) + '.tsv'), sets.query_index,
                           sets.query_labels, sets.gallery_labels, result, query_seconds)
          curves[curve] = _summary(result, certificate, num_samples, alpha, settings.radii)
          results[curve] = result
  finally:
    progress.close()

  rows = [_table_row(curve, summary, base_recall) for curve, summary in curves.items()]
  report.write_tsv(os.path.join(workdir, 'recall_at_1_r.tsv'), rows)
  table = report.markdown_table(rows)
  title = (f'sigma={settings.sigma:g}, {num_queries} queries x {num_gallery} gallery '
           f'({settings.protocol}), k={embedding_dim}')
  with open(os.path.join(workdir, 'recall_at_1_r.md'), 'w', encoding='utf-8') as f:
    f.write(f'Certified Recall@1(r) by Gaussian smoothing ({title}; n_select = '
            f'{settings.num_select}):\n\n{table}\n')
  _plot(os.path.join(workdir, 'recall_at_1_r.png'), results, title)
  print(table)
  return {'settings': settings.to_dict(), 'base_recall@1': base_recall,
          'num_queries': num_queries, 'num_gallery': num_gallery,
          'samples_per_second': progress.samples_per_second, 'curves': curves}


def _smooth(embed, key, sets: _QueriesAndGallery, num_samples: int, options: dict) -> dict:
  """Selection and estimation smoothings of the gallery (and, for 'split', of the queries)."""
  smoothed = dict(zip(('gallery_select', 'gallery_estimate'), smoothing.smooth_select_and_estimate(
      embed, jax.random.fold_in(key, 0), sets.gallery_images, num_samples=num_samples,
      **options)))
  if sets.query_gallery_index is None:
    smoothed.update(zip(('query_select', 'query_estimate'), smoothing.smooth_select_and_estimate(
        embed, jax.random.fold_in(key, 1), sets.query_images, num_samples=num_samples,
        **options)))
  return smoothed


_STORED_FIELDS = ('mean', 'max_norm', 'seconds', 'num_samples', 'sigma', 'F', 'rounding_allowance')


def _save_estimates(path: str, smoothed: dict, sets: _QueriesAndGallery, metadata: dict) -> None:
  """smoothed_n<n>.npz: every SmoothedEmbeddings field, the images' indices and labels."""
  arrays = {f'{name}_{field}': getattr(value, field) for name, value in smoothed.items()
            for field in _STORED_FIELDS}
  arrays.update({f'meta_{key}': value for key, value in metadata.items()})
  query_gallery_index = (np.full(len(sets.query_labels), -1) if sets.query_gallery_index is None
                         else sets.query_gallery_index)
  np.savez(path, query_index=sets.query_index, query_labels=sets.query_labels,
           gallery_index=sets.gallery_index, gallery_labels=sets.gallery_labels,
           query_gallery_index=query_gallery_index, **arrays)


def _load_estimates(directory: str, num_samples: int, sets: _QueriesAndGallery,
                    metadata: dict) -> dict:
  """The smoothings a previous run saved in `directory`, after checking they are of these sets."""
  path = os.path.join(directory, f'smoothed_n{num_samples}.npz')
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.smoothing.estimates_from: no {path}; certify with '
                            f'num_samples={num_samples} once without estimates_from first.')
  stored = np.load(path)
  mismatched = [key for key, value in metadata.items() if stored[f'meta_{key}'].item() != value]
  for key in ('query_index', 'gallery_index', 'query_labels', 'gallery_labels'):
    if not np.array_equal(stored[key], getattr(sets, key)):
      mismatched.append(key)
  if mismatched:
    raise ValueError(f'config.smoothing.estimates_from={directory!r} holds estimates of another '
                     f'setting (differs in {mismatched}); use the same config.eval, smoothing and '
                     f'checkpoint, or drop estimates_from.')
  names = sorted({key.rsplit('_', 1)[0] for key in stored.files if key.endswith('_mean')})
  return {name: smoothing.SmoothedEmbeddings(
      stored[f'{name}_mean'], stored[f'{name}_max_norm'], int(stored[f'{name}_num_samples']),
      float(stored[f'{name}_sigma']), float(stored[f'{name}_F']),
      float(stored[f'{name}_rounding_allowance']), stored[f'{name}_seconds']) for name in names}


def _check_before_smoothing(settings, certificates, sample_counts, alphas, embedding_dim) -> None:
  """Raises the errors `smooth` and `certify` would raise, before any sampling is spent."""
  smoothing.smooth(lambda x: x, sigma=settings.sigma, num_samples=max(sample_counts),
                   chunk_size=settings.chunk_size, F=settings.F)
  for certificate in certificates:
    for alpha in alphas:
      minimum = smoothing.minimum_num_samples(
          certificate, alpha=alpha, embedding_dim=embedding_dim, F=settings.F,
          num_negative_pairs=settings.num_negative_pairs)
      if min(sample_counts) < minimum:
        raise ValueError(
            f'config.smoothing.num_samples={min(sample_counts)} is too small: with alpha={alpha}, '
            f'k={embedding_dim}, F={settings.F} the {certificate!r} bound is negative for every '
            f'query. Use num_samples >= {minimum} (the paper: 100,000).')


def _write_query_tsv(path, query_index, query_labels, gallery_labels, result, seconds) -> None:
  rows = [{'index': int(index), 'label': int(label),
           'retrieved_label': int(gallery_labels[retrieved]),
           'margin_lower_bound': float(bound), 'radius': float(radius), 'correct': int(correct),
           'seconds': float(second)}
          for index, label, retrieved, bound, radius, correct, second in zip(
              query_index, query_labels, result.retrieved_index, result.margin_lower_bound,
              result.radius, result.correct, seconds)]
  report.write_tsv(path, rows, TSV_COLUMNS)


def _summary(result, certificate, num_samples, alpha, radii) -> dict:
  certified = (result.radius >= 0) & result.correct
  recall = smoothing.certified_recall_at_1(result.radius, result.correct, radii)
  return {
      'certificate': certificate, 'num_samples': num_samples, 'alpha': alpha,
      'recall@1_smoothed': float(np.mean(result.correct)),
      'certified': float(np.mean(certified)),
      # RetrievalGuard Fig. 3 (left): retrieved correctly by g_hat, yet the bound abstains.
      'rejected': float(np.mean(result.correct & (result.radius < 0))),
      'median_radius': float(np.median(result.radius[certified])) if certified.any() else -1.0,
      'recall@1(r)': {float(r): float(v) for r, v in zip(radii, recall)},
  }


def _table_row(curve: str, summary: dict, base_recall: float) -> dict:
  row = {'curve': curve, 'n': summary['num_samples'], 'alpha': f'{summary["alpha"]:g}',
         'R@1 h': base_recall, 'R@1 g_hat': summary['recall@1_smoothed'],
         'rejected': summary['rejected'], 'median r': summary['median_radius']}
  row.update({f'r={r:g}': value for r, value in summary['recall@1(r)'].items()})
  return row


def _plot(path: str, results: dict, title: str) -> None:
  finite = [r.radius[np.isfinite(r.radius)] for r in results.values()]
  largest = max([float(np.max(f)) for f in finite if f.size] + [0.0])
  grid = np.linspace(0.0, max(largest, 1e-3) * 1.05, _PLOT_POINTS)
  curves = {name: (grid, smoothing.certified_recall_at_1(r.radius, r.correct, grid))
            for name, r in results.items()}
  report.plot_curves(path, curves, xlabel='radius r (L2, pixels in [0, 1])',
                     ylabel='certified Recall@1(r)', title=title, marker='')
