"""certify.py mode 'attack': empirical robustness under PGD, beside the certified numbers.

For every budget eps of `config.attack.eps` and every kind of `config.attack.kinds`:

  qa  ER-Recall@K against the query attack (Kakizaki et al. Eq. 23; one random other-class target each)
  ca  ER-Recall@K against the candidate attack (Kakizaki et al. Eq. 24; `num_sources` sources per query)
  nn  Panum et al. Algorithm 1 on the whole test split S: R@1 and mAP@R, benign and under attack

on the query/candidate split of `config.eval` (qa, ca: its first `config.attack.num_queries`
queries, -1 = all), repeated `config.attack.num_repeats` times with independent attack keys (the
tables give mean and standard deviation; Panum et al. averages five seeds).

Certificates. Kakizaki et al. Sec. 5.1.2: CR-Recall@K is a lower bound of ER-Recall@K. When mode 'ibp'
has run on the same checkpoint (`<checkpoint>/certify_ibp/results.json`, its 'sweep' of
CR-Recall@K by eps), every eps both modes have gets a table of ER- beside CR-Recall@K, and a
CR > ER is flagged as a violation. When its per-query file `ibp_per_query.tsv` is there too, each
query certified at K (at `config.ibp.eps`) is checked to be still retrieved correctly under the
attack: a certified query the attack breaks would prove a certificate wrong
(`certificate_violations`, expected 0).

Writes into the workdir:
  attack.md                   the tables (also printed)
  attack.tsv                  one row per (kind, eps) with every number
  attack.json                 the same rows, the IBP comparison and timings
  er_recall_vs_eps_qa.png     ER-Recall@K (QA) against eps (eps = 0: clean Recall@K), and
  er_recall_vs_eps_ca.png     CR-Recall@K from mode 'ibp' when present
  nn_vs_eps.png               (nn) R@1 and mAP@R under attack against eps
"""

from __future__ import annotations

import csv
import json
import os
import time

from collections.abc import Callable, Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jaxcert import attacks
from jaxcert import metrics
from jaxcert import report
from jaxcert import retrieval

ATTACK_KINDS = ('qa', 'ca', 'nn')
_RETRIEVAL_KINDS = ('qa', 'ca')


def check_attack_config(attack_config, num_candidates: int) -> None:
  """ValueError, naming the field and what is valid, for a malformed `config.attack`."""
  kinds = tuple(attack_config.kinds)
  if not kinds or any(kind not in ATTACK_KINDS for kind in kinds):
    raise ValueError(f'config.attack.kinds must be a non-empty subset of {ATTACK_KINDS}, '
                     f'got {kinds}.')
  eps = tuple(attack_config.eps)
  if not eps or any(not e >= 0 for e in eps):
    raise ValueError(f'config.attack.eps must be a non-empty list of budgets >= 0, got {eps}.')
  if attack_config.norm not in attacks.NORMS:
    raise ValueError(f'config.attack.norm must be one of {attacks.NORMS}, got '
                     f'{attack_config.norm!r}.')
  if attack_config.method not in attacks.ATTACK_METHODS:
    raise ValueError(f'config.attack.method must be one of {attacks.ATTACK_METHODS}, got '
                     f'{attack_config.method!r}.')
  for field in ('num_steps', 'num_sources', 'num_repeats', 'batch_size'):
    value = attack_config[field]
    if int(value) != value or value < (0 if field == 'num_steps' else 1):
      raise ValueError(f'config.attack.{field} must be an integer >= '
                       f'{0 if field == "num_steps" else 1}, got {value!r}.')
  ks = tuple(attack_config.ks)
  if not ks or any(int(k) != k or not 1 <= k <= num_candidates for k in ks):
    raise ValueError(f'config.attack.ks must be integers in [1, {num_candidates}] (the candidate '
                     f'set size), got {ks}.')
  if attack_config.step_size is not None and not attack_config.step_size >= 0:
    raise ValueError(f'config.attack.step_size must be >= 0 or None, got {attack_config.step_size}.')


# ---------------------------------------------------------------------------
# The metrics under attack: ER-Recall@K (Kakizaki et al. Eqs. 23-24), R@1 and mAP@R (Panum et al.).
# ---------------------------------------------------------------------------


def _embed_batch(embed, x) -> np.ndarray:
  return retrieval.embed_in_batches(embed, x, len(x))


def random_other_class_indices(key, query_labels, candidate_labels,
                               num: int) -> np.ndarray:
  """`num` distinct candidates of other classes per query, uniformly -> (Nq, num)."""
  query_labels = np.asarray(query_labels)
  candidate_labels = np.asarray(candidate_labels)
  available = np.sum(candidate_labels[None, :] != query_labels[:, None], 1)
  if available.min(initial=num) < num:
    raise ValueError(f'a query has only {available.min()} candidates of '
                     f'other classes; {num} are needed.')
  scores = jax.random.uniform(key, (len(query_labels), len(candidate_labels)))
  scores = jnp.where(candidate_labels[None, :] == query_labels[:, None],
                     -1., scores)
  return np.asarray(lax.top_k(scores, num)[1])


def _check_retrieval_inputs(query_images, query_labels, candidate_images,
                            candidate_labels, ks):
  if len(query_images) != len(query_labels):
    raise ValueError(f'{len(query_images)} query images but '
                     f'{len(query_labels)} labels.')
  if len(candidate_images) != len(candidate_labels):
    raise ValueError(f'{len(candidate_images)} candidate images but '
                     f'{len(candidate_labels)} labels.')
  if not ks or max(ks) > len(candidate_labels):
    raise ValueError(f'ks={tuple(ks)} must be non-empty with every K <= the '
                     f'{len(candidate_labels)} candidates.')


def evaluate_query_attack(embed: Callable, query_images, query_labels,
                          candidate_images, candidate_labels, *, eps, key,
                          ks: Sequence[int] = metrics.DEFAULT_KS, step_size=None,
                          num_steps: int = 100, norm: str = 'linf',
                          batch_size: int = 100) -> dict:
  """ER-Recall@K against QA (Kakizaki et al. Eq. 23) with Recall@K (Eq. 22) beside it.

  Each query gets one target candidate of another class, uniformly at
  random (Sec. 5.1.2), and is perturbed by `attacks.query_attack`; the perturbed
  queries retrieve from the clean candidate set.

  Returns:
    {'recall': {K: Recall@K}, 'er_recall': {K: ER-Recall@K},
     'er_hits': (Nq, len(ks)) bool, the per-query terms of ER-Recall@K,
     'adversarial_queries': (Nq, H, W, C), 'target_indices': (Nq,)}.
  """
  _check_retrieval_inputs(query_images, query_labels, candidate_images,
                          candidate_labels, ks)
  query_labels = np.asarray(query_labels)
  candidate_labels = np.asarray(candidate_labels)
  embed = retrieval.as_pytree_function(embed)
  target_key, attack_key = jax.random.split(key)
  candidate_emb = retrieval.embed_in_batches(embed, candidate_images, batch_size)
  targets = random_other_class_indices(target_key, query_labels,
                                       candidate_labels, 1)[:, 0]
  adversarial, adversarial_emb = [], []
  batches = retrieval.padded_batches(len(query_labels), batch_size)
  for batch_index, (rows, count) in enumerate(batches):
    x_adv = attacks.query_attack(
        embed, jnp.asarray(query_images[rows]), jnp.asarray(candidate_emb[targets[rows]]),
        jnp.asarray(candidate_emb), eps=eps,
        key=jax.random.fold_in(attack_key, batch_index), step_size=step_size,
        num_steps=num_steps, norm=norm)
    adversarial.append(np.asarray(x_adv)[:count])
    adversarial_emb.append(_embed_batch(embed, x_adv)[:count])
  clean_emb = retrieval.embed_in_batches(embed, query_images, batch_size)
  ranked = lambda emb: candidate_labels[np.asarray(
      retrieval.blocked_topk(emb, candidate_emb, max(ks))[1])]
  attacked_ranking = ranked(np.concatenate(adversarial_emb))
  return {
      'recall': metrics.recall_at_k(query_labels, ranked(clean_emb), ks),
      'er_recall': metrics.recall_at_k(query_labels, attacked_ranking, ks),
      'er_hits': metrics.hits_at_k(query_labels, attacked_ranking, ks),
      'adversarial_queries': np.concatenate(adversarial),
      'target_indices': targets,
  }


def evaluate_candidate_attack(embed: Callable, query_images, query_labels,
                              candidate_images, candidate_labels, *, eps, key,
                              ks: Sequence[int] = metrics.DEFAULT_KS,
                              num_sources: int = 100, step_size=None,
                              num_steps: int = 100, norm: str = 'linf',
                              batch_size: int = 100) -> dict:
  """ER-Recall@K against CA (Kakizaki et al. Eq. 24) with Recall@K (Eq. 22) beside it.

  For each query q, `num_sources` candidates of other classes C_s are drawn
  uniformly at random (Sec. 5.1.2: 100) and each is perturbed by
  `attacks.candidate_attack` towards q; q then retrieves from C minus C_s plus the
  perturbed C_s. Cost: num_queries x num_sources attacks of `num_steps`
  gradient steps each; one attack batch holds the sources of
  max(1, batch_size // num_sources) queries. Rankings sort the (Nq, N)
  distance matrix with ties to the lower index, as `jaxcert.retrieval` does.

  Returns:
    {'recall': {K: Recall@K}, 'er_recall': {K: ER-Recall@K},
     'er_hits': (Nq, len(ks)) bool, the per-query terms of ER-Recall@K,
     'source_indices': (Nq, num_sources),
     'adversarial_distances': (Nq, num_sources) squared distances from each
     query to its perturbed sources}. The perturbed images themselves
     (Nq x num_sources images) are not kept.
  """
  _check_retrieval_inputs(query_images, query_labels, candidate_images,
                          candidate_labels, ks)
  query_labels = np.asarray(query_labels)
  candidate_labels = np.asarray(candidate_labels)
  embed = retrieval.as_pytree_function(embed)
  source_key, attack_key = jax.random.split(key)
  candidate_emb = retrieval.embed_in_batches(embed, candidate_images, batch_size)
  query_emb = retrieval.embed_in_batches(embed, query_images, batch_size)
  sources = random_other_class_indices(source_key, query_labels,
                                       candidate_labels, num_sources)
  clean_distances = np.asarray(retrieval.pairwise_sq_distances(query_emb, candidate_emb))
  adversarial_distances = []
  for batch_index, (rows, count) in enumerate(retrieval.padded_batches(
      len(query_labels), max(1, batch_size // num_sources))):
    repeated_query_emb = np.repeat(query_emb[rows], num_sources, axis=0)
    x_adv = attacks.candidate_attack(
        embed, jnp.asarray(candidate_images[sources[rows].reshape(-1)]),
        jnp.asarray(repeated_query_emb),
        jnp.asarray(np.repeat(np.sqrt(clean_distances[rows]), num_sources, axis=0)),
        eps=eps, key=jax.random.fold_in(attack_key, batch_index),
        step_size=step_size, num_steps=num_steps, norm=norm)
    distances = np.sum(np.square(_embed_batch(embed, x_adv) - repeated_query_emb), -1)
    adversarial_distances.append(distances.reshape(len(rows), num_sources)[:count])
  adversarial_distances = np.concatenate(adversarial_distances)
  attacked_distances = clean_distances.copy()
  np.put_along_axis(attacked_distances, sources, adversarial_distances, axis=1)
  ranked = lambda distances: candidate_labels[
      np.argsort(distances, axis=1, kind='stable')[:, :max(ks)]]
  return {
      'recall': metrics.recall_at_k(query_labels, ranked(clean_distances), ks),
      'er_recall': metrics.recall_at_k(query_labels, ranked(attacked_distances), ks),
      'er_hits': metrics.hits_at_k(query_labels, ranked(attacked_distances), ks),
      'source_indices': sources,
      'adversarial_distances': adversarial_distances,
  }


def evaluate_nearest_neighbor_attack(embed: Callable, images, labels, *, eps,
                                     key, method: str = 'pgd',
                                     num_steps: int = 5, step_size=None,
                                     norm: str = 'linf',
                                     random_start: bool = True,
                                     batch_size: int = 256) -> dict:
  """Panum et al. Algorithm 1 over a labelled set S, with R@1 and mAP@R before and after.

  For each x_i: the anchors are A^(i) = S minus {x_i}; j = its nearest anchor
  (clean embeddings); if y_j = y_i, x_i is replaced by the attack maximising
  d_theta(z, x_j) over the ball, otherwise it is left as is (already
  misretrieved). Each perturbed x_i is then evaluated against the clean
  anchors A^(i): R@1 (Panum et al. Sec. 4.1) and mAP@R (Eq. 19,
  `jaxcert.metrics.map_at_r`). Ties go to the lower index (Panum et al. breaks
  them at random).

  Returns:
    {'recall_at_1', 'map_at_r'} (benign), {'adversarial_recall_at_1',
    'adversarial_map_at_r'}, 'attacked_fraction' (share with a same-class
    nearest neighbour), 'embeddings' and 'adversarial_embeddings' (N, k).
  """
  labels = np.asarray(labels)
  if len(images) != labels.shape[0] or labels.shape[0] < 2:
    raise ValueError('images and labels need the same length >= 2, got '
                     f'{len(images)} and {labels.shape[0]}.')
  embed = retrieval.as_pytree_function(embed)
  clean_emb = retrieval.embed_in_batches(embed, images, batch_size)
  neighbor = np.asarray(retrieval.blocked_topk(clean_emb, clean_emb, 1, exclude_self=True)[1])[:, 0]
  attacked = labels[neighbor] == labels
  adversarial = []
  for batch_index, (rows, count) in enumerate(retrieval.padded_batches(len(labels),
                                                                       batch_size)):
    x_adv = attacks.nearest_neighbor_attack(
        embed, jnp.asarray(images[rows]), jnp.asarray(clean_emb[neighbor[rows]]),
        eps=eps, key=jax.random.fold_in(key, batch_index), method=method,
        num_steps=num_steps, step_size=step_size, norm=norm,
        random_start=random_start)
    adversarial.append(_embed_batch(embed, x_adv)[:count])
  adv_emb = np.where(attacked[:, None], np.concatenate(adversarial), clean_emb)

  def recall_at_1(query_emb):
    nearest = np.asarray(retrieval.blocked_topk(query_emb, clean_emb, 1, exclude_self=True)[1])
    return metrics.recall_at_k(labels, labels[nearest], (1,))[1]

  return {
      'recall_at_1': recall_at_1(clean_emb),
      'map_at_r': metrics.map_at_r(clean_emb, labels, clean_emb, labels, exclude_self=True),
      'adversarial_recall_at_1': recall_at_1(adv_emb),
      'adversarial_map_at_r': metrics.map_at_r(adv_emb, labels, clean_emb, labels,
                                               exclude_self=True),
      'attacked_fraction': float(np.mean(attacked)),
      'embeddings': clean_emb,
      'adversarial_embeddings': adv_emb,
  }


# ---------------------------------------------------------------------------
# The mode: runs, tables, comparison with the certificates, plots.
# ---------------------------------------------------------------------------


def _mean_std(values) -> tuple[float, float]:
  values = np.asarray(values, float)
  return float(np.mean(values)), float(np.std(values))


def _attack_retrieval(inputs, kind: str, eps: float, key, num_queries: int) -> dict:
  """One QA or CA run: Recall@K, ER-Recall@K and its per-query hits."""
  settings = inputs.config.attack
  evaluate = evaluate_query_attack if kind == 'qa' else evaluate_candidate_attack
  extra = {} if kind == 'qa' else {'num_sources': int(settings.num_sources)}
  return evaluate(
      inputs.embed, inputs.queries.images[np.arange(num_queries)],
      inputs.queries.labels[:num_queries], inputs.candidates.images, inputs.candidates.labels,
      eps=eps, key=key, ks=tuple(settings.ks), step_size=settings.step_size,
      num_steps=int(settings.num_steps), norm=settings.norm, batch_size=int(settings.batch_size),
      **extra)


def _attack_nearest_neighbor(inputs, eps: float, key) -> dict:
  settings = inputs.config.attack
  test = inputs.dataset.test
  return evaluate_nearest_neighbor_attack(
      inputs.embed, test.images, np.asarray(test.labels), eps=eps, key=key,
      method=settings.method, num_steps=int(settings.num_steps), step_size=settings.step_size,
      norm=settings.norm, batch_size=int(settings.batch_size))


def _row(kind: str, eps: float, runs: list[dict], ks, seconds: float) -> dict:
  """One table row: the clean metrics of the first run, mean and std of the attacked ones."""
  row = {'kind': kind, 'eps': float(eps)}
  if kind in _RETRIEVAL_KINDS:
    row.update({f'recall@{k}': runs[0]['recall'][k] for k in ks})
    for k in ks:
      row[f'er_recall@{k}'], row[f'er_recall@{k}_std'] = _mean_std(
          [run['er_recall'][k] for run in runs])
  else:
    row.update({'recall@1': runs[0]['recall_at_1'], 'map@r': runs[0]['map_at_r'],
                'attacked_fraction': runs[0]['attacked_fraction']})
    for name in ('recall_at_1', 'map_at_r'):
      key = f'adversarial_{name.replace("_at_", "@")}'
      row[key], row[f'{key}_std'] = _mean_std([run[f'adversarial_{name}'] for run in runs])
  row['seconds'] = seconds
  return row


def read_ibp_results(checkpoint: str | None) -> dict | None:
  """CR-Recall@K of mode 'ibp' on `checkpoint`: {'sweep': {eps: {'qa'|'ca': {K: v}}},
  'eps': the radius of its per-query file, 'per_query': {'qa'|'ca': {K: (Nq,) bool}} or None};
  None when mode 'ibp' has not run there."""
  if not checkpoint:
    return None
  directory = os.path.join(checkpoint, 'certify_ibp')
  path = os.path.join(directory, 'results.json')
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    results = json.load(f)
  sweep = {float(radius): {attack: {int(k): float(v) for k, v in by_k.items()}
                           for attack, by_k in by_attack.items()}
           for radius, by_attack in results.get('sweep', {}).items()}
  per_query = None
  tsv = os.path.join(directory, 'ibp_per_query.tsv')
  if os.path.exists(tsv):
    with open(tsv, encoding='utf-8') as f:
      rows = list(csv.DictReader(f, delimiter='\t'))
    per_query = {}
    for column in rows[0] if rows else ():
      attack, _, k = column.partition('@')
      if attack in _RETRIEVAL_KINDS and k.isdigit():
        per_query.setdefault(attack, {})[int(k)] = np.array([row[column] == '1' for row in rows])
  return {'sweep': sweep, 'eps': results.get('eps'), 'per_query': per_query}


def _matching(radius: float, radii) -> float | None:
  return next((r for r in radii if abs(r - radius) <= 1e-9), None)


def compare_with_certificates(ibp: dict, rows: list[dict], hits: dict, ks,
                              num_queries: int, num_all_queries: int) -> dict:
  """ER- beside CR-Recall@K at every shared eps, and the per-query certificate check.

  CR-Recall@K is taken over the attacked queries (the first `num_queries`) from the per-query file
  where it covers that eps, else from the 'sweep', which covers all `num_all_queries` queries: then
  CR <= ER is only checked when every query was attacked (otherwise the sets differ).

  Args:
    ibp: `read_ibp_results(...)`.
    rows: the attack rows.
    hits: {(kind, eps): (Nq, len(ks)) bool} per-query ER hits of every repeat, ANDed.
    ks: the K values.
    num_queries: queries attacked.
    num_all_queries: queries of the split (those mode 'ibp' certified).

  Returns:
    {'rows': [{'eps', 'K', 'er_qa', 'cr_qa', 'er_ca', 'cr_ca', 'cr_queries', 'cr_le_er'}]
     ('cr_le_er': True, False, or None when not comparable),
     'certificate_violations': int or None (None: no per-query file at an attacked eps),
     'checked_queries': int}.
  """
  per_query_eps = None if ibp['per_query'] is None or ibp['eps'] is None else float(ibp['eps'])
  table = []
  for eps in sorted({row['eps'] for row in rows if row['kind'] in _RETRIEVAL_KINDS}):
    radius = _matching(eps, ibp['sweep'])
    on_attacked = per_query_eps is not None and _matching(eps, [per_query_eps]) is not None
    if radius is None and not on_attacked:
      continue
    by_kind = {row['kind']: row for row in rows if row['eps'] == eps}
    comparable = on_attacked or num_queries == num_all_queries
    for k in ks:
      entry = {'eps': eps, 'K': k, 'cr_queries': num_queries if on_attacked else num_all_queries,
               **_empirical_and_certified(ibp, by_kind, radius, k, num_queries, on_attacked)}
      entry['cr_le_er'] = _certified_at_most_empirical(entry) if comparable else None
      table.append(entry)
  violations, checked = (None, 0) if per_query_eps is None else _certificate_violations(
      ibp['per_query'], hits, ks, per_query_eps)
  return {'rows': table, 'certificate_violations': violations, 'checked_queries': checked}


def _empirical_and_certified(ibp: dict, by_kind: dict, radius, k: int, num_queries: int,
                             on_attacked: bool) -> dict:
  """{'er_qa', 'cr_qa', 'er_ca', 'cr_ca'} at one eps and K (None where a mode has no number).

  CR is the share of the attacked queries certified in the per-query file when it covers this
  eps (`on_attacked`), else the 'sweep' value at `radius` over all queries.
  """
  entry = {}
  for kind in _RETRIEVAL_KINDS:
    if on_attacked and k in ibp['per_query'].get(kind, {}):
      certified = float(np.mean(ibp['per_query'][kind][k][:num_queries]))
    else:
      certified = ibp['sweep'].get(radius, {}).get(kind, {}).get(k)
    entry[f'er_{kind}'] = by_kind[kind][f'er_recall@{k}'] if kind in by_kind else None
    entry[f'cr_{kind}'] = certified
  return entry


def _certified_at_most_empirical(entry: dict) -> bool:
  """CR <= ER (Kakizaki et al. Sec. 5.1.2) for every attack kind with both numbers."""
  pairs = [(entry[f'cr_{kind}'], entry[f'er_{kind}']) for kind in _RETRIEVAL_KINDS]
  return all(certified <= empirical + 1e-12 for certified, empirical in pairs
             if certified is not None and empirical is not None)


def _certificate_violations(per_query: dict, hits: dict, ks, per_query_eps: float
                            ) -> tuple[int | None, int]:
  """(certified (query, K) the attack broke, queries checked) at the per-query file's eps.

  The count is None when no attack ran at that eps (nothing to check).
  """
  violations, checked = None, 0
  for (kind, eps), attacked_hits in hits.items():
    certified = per_query.get(kind)
    if certified is None or _matching(eps, [per_query_eps]) is None:
      continue
    violations = violations or 0
    for column, k in enumerate(ks):
      if k not in certified:
        continue
      flags = certified[k][:len(attacked_hits)]
      checked = max(checked, len(flags))
      violations += int(np.sum(flags & ~attacked_hits[:len(flags), column]))
  return violations, checked


def _format(row: dict, name: str, repeats: int) -> str:
  """The mean, with its standard deviation over repeats when there are several."""
  if repeats > 1:
    return f'{row[name]:.4f} ± {row[f"{name}_std"]:.4f}'
  return f'{row[name]:.4f}'


def _tables(rows, comparison, ks, num_queries, settings) -> str:
  parts = []
  for kind, title in (('qa', 'query attack (QA, Kakizaki et al. Eq. 23)'),
                      ('ca', 'candidate attack (CA, Kakizaki et al. Eq. 24)')):
    selected = [row for row in rows if row['kind'] == kind]
    if not selected:
      continue
    table = [{'eps': f'{row["eps"]:g}', **{f'Recall@{k}': f'{row[f"recall@{k}"]:.4f}' for k in ks},
              **{f'ER-Recall@{k}': _format(row, f'er_recall@{k}', settings.num_repeats) for k in ks},
              'seconds': f'{row["seconds"]:.0f}'} for row in selected]
    extra = f', {settings.num_sources} sources per query' if kind == 'ca' else ''
    parts.append(f'ER-Recall@K under the {title}: {num_queries} queries{extra}, '
                 f'{settings.norm} PGD, {settings.num_steps} steps, '
                 f'{settings.num_repeats} repeat(s):\n\n{report.markdown_table(table)}')
  selected = [row for row in rows if row['kind'] == 'nn']
  if selected:
    table = [{'eps': f'{row["eps"]:g}', 'R@1': f'{row["recall@1"]:.4f}',
              'mAP@R': f'{row["map@r"]:.4f}',
              'adversarial R@1': _format(row, 'adversarial_recall@1', settings.num_repeats),
              'adversarial mAP@R': _format(row, 'adversarial_map@r', settings.num_repeats),
              'attacked': f'{row["attacked_fraction"]:.4f}'} for row in selected]
    parts.append(f'Panum et al. Algorithm 1 on the test split ({settings.method}, '
                 f'{settings.num_steps} steps, {settings.num_repeats} repeat(s)):\n\n'
                 f'{report.markdown_table(table)}')
  if comparison and comparison['rows']:
    table = [{'eps': f'{r["eps"]:g}', 'K': r['K'],
              **{f'{m.upper()}-Recall ({kind.upper()})': ('-' if r[f'{m}_{kind}'] is None
                                                           else f'{r[f"{m}_{kind}"]:.4f}')
                 for kind in _RETRIEVAL_KINDS for m in ('er', 'cr')},
              'CR queries': r['cr_queries'],
              'CR <= ER': {True: 'yes', False: 'VIOLATED', None: 'n/a'}[r['cr_le_er']]}
             for r in comparison['rows']]
    violations = comparison['certificate_violations']
    check = ('no per-query IBP file at an attacked eps' if violations is None else
             f'{violations} certified (query, K) broken by the attack over '
             f'{comparison["checked_queries"]} queries')
    parts.append(f'Empirical (ER, {num_queries} queries) beside certified (CR, mode ibp) '
                 f'Recall@K; per-query check: {check}. CR <= ER is checked on the same queries '
                 f'only (n/a: CR over another query set):\n\n{report.markdown_table(table)}')
  return '\n\n'.join(parts) + '\n'


def _plots(workdir, rows, ibp, ks):
  for kind in _RETRIEVAL_KINDS:
    selected = sorted((row for row in rows if row['kind'] == kind), key=lambda row: row['eps'])
    if not selected:
      continue
    radii = [0.0] + [row['eps'] for row in selected]
    curves = {f'ER-Recall@{k}': (radii, [selected[0][f'recall@{k}']]
                                 + [row[f'er_recall@{k}'] for row in selected]) for k in ks}
    if ibp and ibp['sweep']:
      sweep_radii = sorted(ibp['sweep'])
      curves.update({f'CR-Recall@{k} (ibp)': (sweep_radii,
                                               [ibp['sweep'][r][kind][k] for r in sweep_radii])
                     for k in ks if all(k in ibp['sweep'][r].get(kind, {}) for r in sweep_radii)})
    report.plot_curves(os.path.join(workdir, f'er_recall_vs_eps_{kind}.png'), curves,
                       xlabel='eps', ylabel='recall', title=f'{kind.upper()} (Kakizaki et al.)')
  selected = sorted((row for row in rows if row['kind'] == 'nn'), key=lambda row: row['eps'])
  if selected:
    radii = [0.0] + [row['eps'] for row in selected]
    report.plot_curves(os.path.join(workdir, 'nn_vs_eps.png'), {
        'R@1': (radii, [selected[0]['recall@1']] + [r['adversarial_recall@1'] for r in selected]),
        'mAP@R': (radii, [selected[0]['map@r']] + [r['adversarial_map@r'] for r in selected])},
        xlabel='eps', ylabel='metric', title='Panum et al. Algorithm 1')


def run(inputs, workdir: str) -> dict:
  """Attacks the encoder of `inputs`; writes the files of the module docstring.

  Args:
    inputs: a `jaxcert.certification.CertifyInputs`.
    workdir: output directory.

  Returns:
    {'rows': one dict per (kind, eps), 'ibp_comparison': ... or None, 'num_queries', 'ks'}.
  """
  settings = inputs.config.attack
  check_attack_config(settings, len(inputs.candidates.labels))
  ks = tuple(int(k) for k in settings.ks)
  num_available = len(inputs.queries.labels)
  num_queries = num_available if settings.num_queries < 0 else min(int(settings.num_queries),
                                                                   num_available)
  base_key = jax.random.key(int(settings.seed))
  rows, hits = [], {}
  for eps_index, eps in enumerate(float(e) for e in settings.eps):
    for kind in settings.kinds:
      start = time.perf_counter()
      runs = []
      for repeat in range(int(settings.num_repeats)):
        key = jax.random.fold_in(jax.random.fold_in(
            jax.random.fold_in(base_key, ATTACK_KINDS.index(kind)), eps_index), repeat)
        if kind == 'nn':
          runs.append(_attack_nearest_neighbor(inputs, eps, key))
        else:
          runs.append(_attack_retrieval(inputs, kind, eps, key, num_queries))
      if kind in _RETRIEVAL_KINDS:
        hits[(kind, eps)] = np.logical_and.reduce([run['er_hits'] for run in runs])
      rows.append(_row(kind, eps, runs, ks, time.perf_counter() - start))
      print(f'attack {kind} eps={eps:g}: {time.perf_counter() - start:.0f} s', flush=True)

  ibp = read_ibp_results(inputs.config.get('checkpoint'))
  comparison = (compare_with_certificates(ibp, rows, hits, ks, num_queries, num_available)
                if ibp else None)
  table = _tables(rows, comparison, ks, num_queries, settings)
  print(table)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'attack.md'), 'w', encoding='utf-8') as f:
    f.write(table)
  columns = sorted({column for row in rows for column in row},
                   key=lambda c: (c not in ('kind', 'eps'), c))
  report.write_tsv(os.path.join(workdir, 'attack.tsv'),
                   [{column: row.get(column, '') for column in columns} for row in rows], columns)
  _plots(workdir, rows, ibp, ks)
  results = {'rows': rows, 'ibp_comparison': comparison, 'num_queries': num_queries,
             'ks': list(ks)}
  report.write_json(os.path.join(workdir, 'attack.json'), results)
  return results
