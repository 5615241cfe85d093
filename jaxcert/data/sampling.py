"""Index samplers: query/candidate splits (and the sets they select), training batches, triplets, class-balanced subsets.

Every sampler is a pure function of its integer seed (and step), so a training run that restarts
from a checkpoint at step s draws exactly the batches an uninterrupted run would have drawn. They
run on the host with numpy: `np.random.default_rng([seed, step])` seeds a generator from the pair
through numpy's SeedSequence, the host-side counterpart of `jax.random.fold_in(key, step)`.
"""

from __future__ import annotations

import numpy as np

from jaxcert.data import core


def _rng(*entropy: int) -> np.random.Generator:
  for value in entropy:
    if int(value) < 0:
      raise ValueError(f'Seeds and steps must be non-negative integers, got {entropy}.')
  return np.random.default_rng([int(v) for v in entropy])


def query_candidate_split(num_test: int, num_queries: int = 1000, num_candidates: int = 1000,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Disjoint random query and candidate sets drawn from the test set without duplication.

  Kakizaki et al. Sec. 5.1.1: "We randomly select Q and C without duplication from the
  test set so that |Q| = 1000 and |C| = 1000."

  Args:
    num_test: size of the test split.
    num_queries: |Q|.
    num_candidates: |C|.
    seed: the split's seed.

  Returns:
    `(query_idx, candidate_idx)`: sorted int64 index arrays into the test split, with no index in
    both and none repeated.

  Raises:
    ValueError: if `num_queries + num_candidates > num_test` or a size is not positive.
  """
  if num_queries <= 0 or num_candidates <= 0:
    raise ValueError(f'num_queries and num_candidates must be positive, got {num_queries}, {num_candidates}.')
  if num_queries + num_candidates > num_test:
    raise ValueError(f'num_queries + num_candidates = {num_queries + num_candidates} exceeds the '
                     f'{num_test} test images; lower config.eval.num_queries or num_candidates.')
  order = _rng(seed).permutation(num_test)
  query_idx = np.sort(order[:num_queries])
  candidate_idx = np.sort(order[num_queries:num_queries + num_candidates])
  return query_idx, candidate_idx


def query_candidate_sets(config, dataset: core.Dataset):
  """The query and candidate sets of Kakizaki et al. Sec. 5.1.1: disjoint random subsets of the test
  split, of sizes `config.eval.num_queries` and `config.eval.num_candidates`, drawn with
  `config.eval.split_seed` (`query_candidate_split`).

  Returns:
    `((query_images, query_labels), (candidate_images, candidate_labels))`.
  """
  query_idx, candidate_idx = query_candidate_split(
      len(dataset.test.labels), num_queries=config.eval.num_queries,
      num_candidates=config.eval.num_candidates, seed=config.eval.split_seed)
  test = dataset.test
  labels = np.asarray(test.labels)
  return ((test.images[query_idx], labels[query_idx]),
          (test.images[candidate_idx], labels[candidate_idx]))


def _class_groups(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Example indices grouped by class.

  Returns:
    `(classes, order, starts, counts)`: the examples of `classes[c]` are
    `order[starts[c]:starts[c] + counts[c]]`.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must have shape (N,), got {labels.shape}.')
  order = np.argsort(labels, kind='stable')
  classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
  return classes, order, starts, counts


def m_per_class_batch(labels, *, batch_size: int, m: int, seed: int, step: int) -> np.ndarray:
  """Indices of a class-balanced batch: `batch_size // m` classes with `m` examples each.

  Classes are drawn uniformly without replacement among those with at least `m` examples, and
  the `m` examples of each without replacement (the usual m-per-class sampler of metric learning,
  e.g. m = 2 for CUB/CARS/SOP in RetrievalGuard). Classes with fewer than `m` examples are never drawn.

  Args:
    labels: (N,) integer labels of the training split.
    batch_size: examples per batch; a multiple of `m`.
    m: examples per class.
    seed: the run's seed.
    step: the training step; the batch is a pure function of `(seed, step)`.

  Returns:
    (batch_size,) int64 indices, grouped by class (the m examples of a class are adjacent).

  Raises:
    ValueError: if `batch_size % m != 0`, or fewer than `batch_size // m` classes have `m` examples.
  """
  if m <= 0 or batch_size <= 0 or batch_size % m:
    raise ValueError(f'batch_size ({batch_size}) must be a positive multiple of m ({m}); change '
                     f'config.batch_size or config.m_per_class.')
  classes, order, starts, counts = _class_groups(labels)
  eligible = np.flatnonzero(counts >= m)
  num_classes = batch_size // m
  if len(eligible) < num_classes:
    raise ValueError(f'A batch of {batch_size} with m={m} needs {num_classes} classes with at least {m} '
                     f'examples each; the labels have {len(eligible)} such classes (of {len(classes)}). '
                     f'Lower config.batch_size or config.m_per_class, or use config.sampler="epoch".')
  rng = _rng(seed, step)
  chosen = rng.choice(eligible, size=num_classes, replace=False)
  picks = [order[starts[c] + rng.choice(counts[c], size=m, replace=False)] for c in chosen]
  return np.concatenate(picks).astype(np.int64)


def epoch_batch(num_examples: int, *, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Indices of batch `step` of shuffled epochs over `num_examples` examples.

  Epoch `e = step // ceil(N / B)` visits the permutation drawn from `(seed, e)` in order; its last
  batch wraps around to the start of the same permutation so that every batch has `batch_size`
  examples (one compiled shape) and every example appears at least once per epoch.

  Args:
    num_examples: N, the size of the training split.
    batch_size: B, at most N.
    seed: the run's seed.
    step: the training step; the batch is a pure function of `(seed, step)`.

  Returns:
    (batch_size,) int64 indices, without repeats.
  """
  if not 0 < batch_size <= num_examples:
    raise ValueError(f'batch_size must be in [1, {num_examples}] (the number of training examples), '
                     f'got {batch_size}.')
  steps_per_epoch = -(-num_examples // batch_size)
  epoch, position = divmod(int(step), steps_per_epoch)
  permutation = _rng(seed, epoch).permutation(num_examples)
  return permutation[(position * batch_size + np.arange(batch_size)) % num_examples].astype(np.int64)


def sample_triplets(labels, num: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Random (anchor, positive, negative) index triplets.

  The anchor is uniform over examples whose class has at least two examples, the positive uniform
  over the other examples of the anchor's class, the negative uniform over all examples of other
  classes (the triplets T(a, p, n) of Kakizaki et al. Eq. 20).

  Args:
    labels: (N,) integer labels.
    num: number of triplets.
    seed: seed of the draw.

  Returns:
    `(anchor, positive, negative)`: (num,) int64 arrays with `labels[anchor] == labels[positive]`,
    `anchor != positive` and `labels[anchor] != labels[negative]`.

  Raises:
    ValueError: if no class has two examples or there is only one class.
  """
  classes, order, starts, counts = _class_groups(labels)
  if len(classes) < 2 or counts.max() < 2:
    raise ValueError(f'Triplets need at least two classes and a class with two examples; got '
                     f'{len(classes)} classes with at most {counts.max()} examples.')
  rng = _rng(seed)
  class_of_sorted = np.repeat(np.arange(len(classes)), counts)
  anchor_positions = rng.choice(np.flatnonzero(counts[class_of_sorted] >= 2), size=num)
  anchor_class = class_of_sorted[anchor_positions]
  start, count = starts[anchor_class], counts[anchor_class]
  # Positive: shift the anchor by 1..count-1 places, cyclically, inside its class block.
  shift = rng.integers(1, count)
  positive_positions = start + (anchor_positions - start + shift) % count
  # Negative: a uniform position among the N - count examples outside the class block.
  outside = rng.integers(0, len(order) - count)
  negative_positions = np.where(outside < start, outside, outside + count)
  return order[anchor_positions], order[positive_positions], order[negative_positions]


def balanced_subset(labels, per_class: int, seed: int) -> np.ndarray:
  """Sorted indices of `per_class` examples of every class, drawn without replacement.

  Raises:
    ValueError: if a class has fewer than `per_class` examples.
  """
  classes, order, starts, counts = _class_groups(labels)
  if counts.min() < per_class:
    raise ValueError(f'Class {classes[np.argmin(counts)]} has {counts.min()} examples, fewer than '
                     f'per_class={per_class}.')
  rng = _rng(seed)
  picks = [order[s + rng.choice(c, size=per_class, replace=False)] for s, c in zip(starts, counts)]
  return np.sort(np.concatenate(picks)).astype(np.int64)
