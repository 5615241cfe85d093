"""Retrieval metrics: Recall@K (Kakizaki et al. Eq. 22) and mAP@R (Musgrave et al. 2020; Panum et al. Eq. 19).

Recall@K is the fraction of queries with at least one same-class item among
their K nearest gallery items; fed with what is retrieved under attack it is
ER-Recall@K (Kakizaki et al. Eqs. 23-24). mAP@R averages precision over the first R
retrieved items, R being the number of same-class gallery items, as in
pytorch-metric-learning's `AccuracyCalculator`. Both run on the blocked top-k of
`jaxcert.retrieval`, so memory stays bounded for any query and gallery size;
ties in distance are ordered by gallery index (see `jaxcert.retrieval`).

`evaluate_retrieval` embeds the query and gallery images and returns both
metrics; `raw_pixel_embed` is the encoder of the raw-pixel baseline; `evaluate` runs both on the
query/candidate split of an experiment config (the evaluation at the end of training).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert import data
from jaxcert import retrieval

DEFAULT_KS = (1, 10, 20, 40)
# mAP@R scans the gallery in blocks of at least this many times max R (see `map_at_r`).
_GALLERY_BLOCK_PER_RELEVANT = 4


def raw_pixel_embed(images) -> jax.Array:
  """The raw-pixel baseline encoder: (N, H, W, C) images -> (N, H*W*C) flattened pixels."""
  images = jnp.asarray(images)
  return images.reshape(images.shape[0], -1)


def _as_labels(labels, name: str) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'{name} must be a 1-D integer array (one class id per item), got '
                     f'shape {labels.shape} and dtype {labels.dtype}.')
  return labels


def recall_at_k(query_labels, retrieved_labels, ks: Sequence[int] = DEFAULT_KS) -> dict:
  """Recall@K, Kakizaki et al. Eq. 22: mean over queries of [some item among the top K shares its class].

  Args:
    query_labels: (Nq,) class of each query.
    retrieved_labels: (Nq, Kmax) classes of each query's retrieved gallery items,
      nearest first (e.g. `gallery_labels[blocked_topk(...)[1]]`).
    ks: the K values, each in [1, Kmax].

  Returns:
    {K: Recall@K} with int keys and float values in [0, 1].

  Raises:
    ValueError: mismatched shapes or a K outside [1, Kmax].
  """
  hits = hits_at_k(query_labels, retrieved_labels, ks)
  return {int(k): float(np.mean(hits[:, column])) for column, k in enumerate(ks)}


def hits_at_k(query_labels, retrieved_labels, ks: Sequence[int] = DEFAULT_KS) -> np.ndarray:
  """The per-query terms of Recall@K (Eq. 22): (Nq, len(ks)) bool, [a same-class item in the top K].

  Arguments and errors as `recall_at_k`.
  """
  query_labels = _as_labels(query_labels, 'query_labels')
  retrieved_labels = np.asarray(retrieved_labels)
  if retrieved_labels.ndim != 2 or retrieved_labels.shape[0] != query_labels.shape[0]:
    raise ValueError(f'retrieved_labels must have shape (Nq, Kmax) = ({query_labels.shape[0]}, '
                     f'Kmax), got {retrieved_labels.shape}.')
  max_k = retrieved_labels.shape[1]
  bad = [k for k in ks if int(k) != k or not 1 <= k <= max_k]
  if not ks or bad:
    raise ValueError(f'ks must be integers in [1, {max_k}] (the number of retrieved items per '
                     f'query), got {tuple(ks)}; retrieve more items or drop {bad}.')
  hits = retrieved_labels == query_labels[:, None]
  first_hit_rank = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, max_k + 1)
  return first_hit_rank[:, None] <= np.asarray(ks, int)[None, :]


def relevant_counts(query_labels, gallery_labels, *, exclude_self: bool = False) -> np.ndarray:
  """R of each query: the number of gallery items of its class, itself excluded if `exclude_self`.

  Raises:
    ValueError: `exclude_self` but the query labels are not the gallery labels.
  """
  query_labels = _as_labels(query_labels, 'query_labels')
  gallery_labels = _as_labels(gallery_labels, 'gallery_labels')
  if exclude_self and not np.array_equal(query_labels, gallery_labels):
    raise ValueError('exclude_self=True needs the query set to be the gallery, but the query '
                     'labels differ from the gallery labels; pass the same labels for both.')
  classes, counts = np.unique(gallery_labels, return_counts=True)
  position = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
  num_relevant = np.where(classes[position] == query_labels, counts[position], 0)
  return num_relevant - int(bool(exclude_self))


def average_precision_at_r(relevant, num_relevant) -> jax.Array:
  """AP@R of each query from the relevance of its ranked items.

  AP@R = (1/R) sum_{i <= R} P@i * rel_i, with P@i the fraction of same-class items
  among the first i retrieved and rel_i whether the i-th is same-class
  (Musgrave et al. 2020, the definition pytorch-metric-learning implements; Panum et al.
  Eq. 19 prints the sum without rel_i, but cites and reports this one).

  Args:
    relevant: (Nq, K) bool, whether each retrieved item (nearest first) shares the
      query's class; K >= max R.
    num_relevant: (Nq,) R of each query (0 gives AP 0).

  Returns:
    (Nq,) AP@R.
  """
  relevant = jnp.asarray(relevant)
  num_relevant = jnp.asarray(num_relevant)
  rank = jnp.arange(1, relevant.shape[1] + 1)
  counted = relevant & (rank[None, :] <= num_relevant[:, None])
  precision = jnp.cumsum(counted, axis=1) / rank[None, :]
  return jnp.sum(precision * counted, axis=1) / jnp.maximum(num_relevant, 1)


@functools.partial(jax.jit,
                   static_argnames=('k', 'block_size', 'gallery_block_size', 'exclude_self'))
def _average_precision_at_r(query_emb, query_labels, num_relevant, gallery_emb, gallery_labels,
                            *, k, block_size, gallery_block_size, exclude_self):
  def per_block(sq, index, labels_block, num_relevant_block):
    del sq  # Only the ranking matters.
    relevant = gallery_labels[index] == labels_block[:, None]
    return average_precision_at_r(relevant, num_relevant_block)
  return retrieval.map_over_query_blocks(
      per_block, query_emb, gallery_emb, query_labels, num_relevant, k=k,
      block_size=block_size, gallery_block_size=gallery_block_size, exclude_self=exclude_self)


def map_at_r(query_emb, query_labels, gallery_emb, gallery_labels, *, exclude_self: bool = False,
             block_size: int = retrieval.DEFAULT_BLOCK_SIZE) -> float:
  """mAP@R: the mean over queries of AP@R (`average_precision_at_r`), blocked.

  As in pytorch-metric-learning: R is the number of gallery items of the query's
  class (the query itself excluded when the query set is the gallery), the ranking
  is the top max(R) of `retrieval.blocked_topk`, and queries with R = 0 ("lone"
  queries, whose class is absent from the gallery) are left out of the mean. AP is
  reduced on device per query block, so memory holds block_size x (G + max R)
  distances at a time, G = max(block_size, 4 max R), and never the (Nq, max R)
  ranking. (Gallery blocks of at least 4 max R amortise re-ranking the running top
  max R: 10,000 x 10,000 with max R = 1,050 ran 1.6x faster on a 2-core CPU.)

  Args:
    query_emb: (Nq, d) query embeddings.
    query_labels: (Nq,) integer classes.
    gallery_emb: (Ng, d) gallery embeddings.
    gallery_labels: (Ng,) integer classes.
    exclude_self: the query set is the gallery (same order); query i never
      retrieves gallery item i and does not count in its own R.
    block_size: query rows and gallery columns per block.

  Returns:
    mAP@R in [0, 1].

  Raises:
    ValueError: malformed inputs, or no query has a same-class gallery item.
  """
  query_emb = retrieval.as_embeddings(query_emb, 'query_emb')
  gallery_emb = retrieval.as_embeddings(gallery_emb, 'gallery_emb')
  query_labels = _as_labels(query_labels, 'query_labels')
  gallery_labels = _as_labels(gallery_labels, 'gallery_labels')
  _check_lengths(query_emb, query_labels, gallery_emb, gallery_labels)
  num_relevant = relevant_counts(query_labels, gallery_labels, exclude_self=exclude_self)
  max_relevant = int(num_relevant.max())
  if max_relevant == 0:
    raise ValueError('No query has a same-class item in the gallery, so mAP@R is undefined; '
                     'check that queries and gallery share classes.')
  retrieval.check_topk_arguments(query_emb, gallery_emb, max_relevant, block_size, None,
                                 exclude_self)
  dtype = jnp.promote_types(query_emb.dtype, gallery_emb.dtype)
  average_precision = _average_precision_at_r(
      query_emb.astype(dtype), query_labels, num_relevant, gallery_emb.astype(dtype),
      gallery_labels, k=max_relevant, block_size=int(block_size),
      gallery_block_size=max(int(block_size), _GALLERY_BLOCK_PER_RELEVANT * max_relevant),
      exclude_self=bool(exclude_self))
  return float(np.mean(np.asarray(average_precision)[num_relevant > 0]))


def _check_lengths(query_emb, query_labels, gallery_emb, gallery_labels) -> None:
  for what, emb, labels in (('query', query_emb, query_labels),
                            ('gallery', gallery_emb, gallery_labels)):
    if len(emb) != len(labels):
      raise ValueError(f'{len(emb)} {what} items but {len(labels)} {what} labels; pass one '
                       f'label per item.')


def evaluate_retrieval(embed: Callable, query_images, query_labels, gallery_images,
                       gallery_labels, ks: Sequence[int] = DEFAULT_KS, *, batch_size: int = 256,
                       exclude_self: bool = False,
                       block_size: int = retrieval.DEFAULT_BLOCK_SIZE) -> dict:
  """Recall@K (Kakizaki et al. Eq. 22) and mAP@R of an encoder on a query and a gallery set.

  Args:
    embed: pure function `(batch, H, W, C) -> (batch, d)`, e.g.
      `jax.tree_util.Partial(model.apply, variables)` or `raw_pixel_embed`.
    query_images: (Nq, H, W, C) array-like in [0, 1].
    query_labels: (Nq,) integer classes.
    gallery_images: (Ng, H, W, C) array-like in [0, 1]; pass the query images
      themselves with `exclude_self=True` to rank a set against itself (embedded once).
    gallery_labels: (Ng,) integer classes.
    ks: the K of Recall@K.
    batch_size: images per encoder call (`retrieval.embed_in_batches`).
    exclude_self: the gallery is the query set; a query never retrieves itself.
    block_size: query rows and gallery columns per top-k block.

  Returns:
    {'recall@K': float for each K in ks, 'map@r': float}.
  """
  query_labels = _as_labels(query_labels, 'query_labels')
  gallery_labels = _as_labels(gallery_labels, 'gallery_labels')
  if not ks:
    raise ValueError('ks is empty; pass the K values of Recall@K, e.g. (1, 10, 20, 40).')
  query_emb = retrieval.embed_in_batches(embed, query_images, batch_size)
  if gallery_images is query_images:
    gallery_emb = query_emb
  else:
    gallery_emb = retrieval.embed_in_batches(embed, gallery_images, batch_size)
  _check_lengths(query_emb, query_labels, gallery_emb, gallery_labels)
  _, index = retrieval.blocked_topk(query_emb, gallery_emb, max(ks), block_size=block_size,
                                    exclude_self=exclude_self)
  recalls = recall_at_k(query_labels, gallery_labels[np.asarray(index)], ks)
  results = {f'recall@{k}': value for k, value in recalls.items()}
  results['map@r'] = map_at_r(query_emb, query_labels, gallery_emb, gallery_labels,
                              exclude_self=exclude_self, block_size=block_size)
  return results


def evaluate(config, model, variables, dataset: data.Dataset) -> dict:
  """Recall@K and mAP@R of the encoder `model` (Flax `variables`) and of raw pixels on the
  query/candidate split of `config.eval` (`data.query_candidate_sets`).

  Returns:
    `{'model': {...metrics}, 'raw_pixels': {...metrics}}`, each as `evaluate_retrieval`.
  """
  (query_images, query_labels), (candidate_images, candidate_labels) = data.query_candidate_sets(
      config, dataset)
  ks = tuple(config.eval.ks)
  embed = lambda x: model.apply(variables, x)
  results = {}
  for name, fn in (('model', embed), ('raw_pixels', raw_pixel_embed)):
    results[name] = evaluate_retrieval(
        fn, query_images, query_labels, candidate_images, candidate_labels, ks=ks,
        batch_size=config.eval.batch_size)
  return results
