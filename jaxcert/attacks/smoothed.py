"""PGD on a Gaussian-smoothed retrieval model: the empirical check of RetrievalGuard's certificates.

A certificate of `jaxcert.smoothing` claims that within its radius the 1-NN of the smoothed
embedding g keeps the query's label. `attack_smoothed_retrieval` tries to break that claim: it
minimises the margin d(x; g_m) (Wu et al., Definition 3.1) of a fixed-noise estimate g_m with L2
PGD, and `plug_in_margin` measures the margin of an independent re-estimate at the point found
(tests/test_smoothing.py, scripts/retrievalguard_pgd_check.py).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert import retrieval
from jaxcert import smoothing
from jaxcert.attacks import engine


def common_noise_margin(x, embed, noise, gallery_mean, positive_mask, negative_mask) -> jax.Array:
  """d(x; g_m) (Definition 3.1) with g_m(x) = (1/m) sum_j h(x + noise_j), a fixed-noise estimate.

  With the noise fixed, g_m is a deterministic, differentiable stand-in for g = E h(x + z) (the
  expectation over noise that PGD attacks, "EOT").

  Args:
    x: (B, ...) inputs.
    embed: the bounded base embedding h.
    noise: (m, ...) noise samples, shared by the batch.
    gallery_mean: (N, k) smoothed gallery embeddings.
    positive_mask: (B, N) bool, the gallery items with query b's label.
    negative_mask: (B, N) bool, the other gallery items (leave-one-out: neither mask holds the
      query's own item).

  Returns:
    (B,) nearest-negative distance minus nearest-positive distance.
  """
  batch, num_noise = x.shape[0], noise.shape[0]
  noisy = (x[None] + noise[:, None]).reshape((num_noise * batch,) + x.shape[1:])
  g = jnp.mean(embed(noisy).reshape(num_noise, batch, -1), axis=0)
  squared = (jnp.sum(g * g, 1)[:, None] + jnp.sum(gallery_mean * gallery_mean, 1)[None, :]
             - 2.0 * g @ gallery_mean.T)
  distance = jnp.sqrt(jnp.maximum(squared, 0.0) + 1e-12)
  nearest_positive = jnp.min(jnp.where(positive_mask, distance, jnp.inf), axis=1)
  nearest_negative = jnp.min(jnp.where(negative_mask, distance, jnp.inf), axis=1)
  return nearest_negative - nearest_positive


def _negative_common_noise_margin(x, embed, noise, gallery_mean, positive_mask, negative_mask):
  return -common_noise_margin(x, embed, noise, gallery_mean, positive_mask, negative_mask)


def retrieval_masks(labels, gallery_labels, query_gallery_index=None) -> tuple[np.ndarray, ...]:
  """(positive, negative) (B, N) masks; `query_gallery_index[b] >= 0` removes query b's own item."""
  same = np.asarray(labels)[:, None] == np.asarray(gallery_labels)[None, :]
  kept = np.ones_like(same)
  if query_gallery_index is not None:
    index = np.asarray(query_gallery_index)
    rows = np.flatnonzero(index >= 0)
    kept[rows, index[rows]] = False
  return same & kept, ~same & kept


def plug_in_margin(query_mean, gallery_mean, positive_mask, negative_mask) -> np.ndarray:
  """d(x; g_hat) of Definition 3.1 on estimates (float64, host): no slack, not a bound."""
  distance = smoothing.float64_distances(np.asarray(query_mean, np.float64), np.asarray(gallery_mean, np.float64))
  return (np.where(negative_mask, distance, np.inf).min(axis=1)
          - np.where(positive_mask, distance, np.inf).min(axis=1))


def attack_smoothed_retrieval(embed: Callable, key: jax.Array, x, labels, gallery_mean,
                              gallery_labels, radius, *, sigma: float, num_noise: int = 256,
                              num_steps: int = 100, num_restarts: int = 3,
                              clip: tuple[float, float] = (0.0, 1.0),
                              query_gallery_index=None) -> jax.Array:
  """The strongest L2 PGD perturbation found against the smoothed 1-NN, per query.

  Minimises d(x + delta; g_m) over ||delta||_2 <= radius[b] (and the `clip` box) with
  `engine.pgd` (step radius / 10, random starts), g_m a `common_noise_margin` estimate
  with `num_noise` fresh noise samples per restart; keeps the restart with the lowest margin.
  Used by the tests and scripts/retrievalguard_pgd_check.py to try to break a certificate: re-estimate
  g(x + delta) with many independent samples and compare its 1-NN with the certified one.

  Args:
    embed: the bounded base embedding h (as given to `smooth`).
    key: a `jax.random.key`.
    x: (B, ...) queries.
    labels: (B,) query labels.
    gallery_mean: (N, k) smoothed gallery embeddings (e.g. `SmoothedEmbeddings.mean`).
    gallery_labels: (N,) labels.
    radius: (B,) attack radii (use 0 for queries not to attack).
    sigma: the smoothing noise.
    num_noise: noise samples of g_m per restart.
    num_steps: PGD steps per restart.
    num_restarts: random restarts.
    clip: the input box.
    query_gallery_index: optional (B,) gallery item of each query, left out (-1: none).

  Returns:
    (B, ...) attacked inputs.
  """
  embed = retrieval.as_pytree_function(embed)
  x = jnp.asarray(x, jnp.float32)
  positive_mask, negative_mask = (jnp.asarray(mask) for mask in retrieval_masks(
      labels, gallery_labels, query_gallery_index))
  gallery_mean = jnp.asarray(gallery_mean, jnp.float32)
  eps = jnp.asarray(radius, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
  attack = engine.pgd(_negative_common_noise_margin, eps=eps, step_size=eps / 10,
                      num_steps=num_steps, norm='l2', clip=clip)
  best, best_margin = x, jnp.full((x.shape[0],), jnp.inf)
  for restart in range(num_restarts):
    restart_key = jax.random.fold_in(key, restart)
    noise = sigma * jax.random.normal(jax.random.fold_in(restart_key, 1),
                                      (num_noise,) + x.shape[1:])
    masks = (positive_mask, negative_mask)
    candidate = attack(jax.random.fold_in(restart_key, 0), x, embed, noise, gallery_mean, *masks)
    margin = common_noise_margin(candidate, embed, noise, gallery_mean, *masks)
    better = margin < best_margin
    best = jnp.where(better.reshape(eps.shape), candidate, best)
    best_margin = jnp.minimum(margin, best_margin)
  return best
