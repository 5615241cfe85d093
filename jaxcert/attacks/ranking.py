"""Attacks on retrieval rankings: the query and candidate attacks (Kakizaki et al.) and the
nearest-neighbour attack (Panum et al.).

* Kakizaki et al., the query attack QA (Eq. 2) and the candidate attack CA (Eq. 4) with PGD of
  step eps/10 and 100 updates (Sec. 5.1.2): `query_attack`, `candidate_attack` and their
  objectives. ER-Recall@K (Eqs. 23-24) under them is measured by `jaxcert.evaluation.attack`.
* Panum et al., Algorithm 1: push a point away from its nearest same-class neighbour
  (`nearest_neighbor_attack`).

All are losses fed to the PGD of `jaxcert.attacks.engine`; distances come from `jaxcert.retrieval`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxcert import retrieval
from jaxcert.attacks import engine


# ---------------------------------------------------------------------------
# Panum et al., Algorithm 1: away from the nearest same-class neighbour.
# ---------------------------------------------------------------------------


def nearest_neighbor_attack(embed: Callable, images, neighbor_emb, *, eps,
                            key, method: str = 'pgd', num_steps: int = 5,
                            step_size=None, norm: str = 'linf',
                            random_start: bool = True) -> jax.Array:
  """Panum et al. Algorithm 1's perturbation: argmax_{z in B_p(x, eps)} d_theta(z, x_j).

  Args:
    embed: encoder `x -> (B, k)`.
    images: (B, H, W, C) points under attack, in [0, 1].
    neighbor_emb: (B, k) embeddings of their nearest same-class neighbours.
    eps: budget (Panum et al.: 0.01, 0.05, 0.1 under L-inf).
    key: PRNG key of the random start.
    method, num_steps, step_size, norm, random_start: see `engine.get_attack`; seed
      002 uses PGD with 5 iterations and step 2 eps / 5.

  Returns:
    (B, H, W, C) adversarial images.
  """
  attack = engine.get_attack(method, engine.squared_embedding_distance, eps=eps,
                             num_steps=num_steps, step_size=step_size, norm=norm,
                             random_start=random_start)
  return attack(key, images, retrieval.as_pytree_function(embed), neighbor_emb)


# ---------------------------------------------------------------------------
# Kakizaki et al.: query attack (Eq. 2) and candidate attack (Eq. 4).
# ---------------------------------------------------------------------------


def query_attack_objective(query_emb, target_emb, candidate_emb) -> jax.Array:
  """Kakizaki et al. Eq. 2 for one target per query: sum_c [d(q, t) - d(q, c)]_+, per query.

  Args:
    query_emb: (B, k) embeddings f(q_s + delta).
    target_emb: (B, k) embeddings f(t) of each query's target candidate.
    candidate_emb: (N, k) embeddings f(c) of the candidate set C.

  Returns:
    (B,) objective; the query attack minimises it, raising t's rank.
  """
  to_target = engine.paired_distances(query_emb, target_emb)
  to_candidates = retrieval.pairwise_distances(query_emb, candidate_emb)
  return jnp.sum(jax.nn.relu(to_target[:, None] - to_candidates), axis=-1)


def _query_attack_loss(x, embed, target_emb, candidate_emb):
  return -query_attack_objective(embed(x), target_emb, candidate_emb)


def candidate_attack_objective(source_emb, query_emb,
                               query_candidate_distances) -> jax.Array:
  """Kakizaki et al. Eq. 4 for one target query per source: sum_c [d(q, c_s) - d(q, c)]_+.

  Args:
    source_emb: (B, k) embeddings f(c_s + delta) of perturbed candidates.
    query_emb: (B, k) embedding f(q) of each source's target query.
    query_candidate_distances: (B, N) clean Euclidean distances d(f(q), f(c)),
      c in C.

  Returns:
    (B,) objective; the candidate attack minimises it, raising c_s's rank.
  """
  to_source = engine.paired_distances(query_emb, source_emb)
  return jnp.sum(jax.nn.relu(to_source[:, None] - query_candidate_distances),
                 axis=-1)


def _candidate_attack_loss(x, embed, query_emb, query_candidate_distances):
  return -candidate_attack_objective(embed(x), query_emb,
                                     query_candidate_distances)


def query_attack(embed: Callable, queries, target_emb, candidate_emb, *, eps,
                 key, step_size=None, num_steps: int = 100, norm: str = 'linf',
                 random_start: bool = True, loop: str = 'auto') -> jax.Array:
  """Kakizaki et al. QA: PGD minimising Eq. 2, raising each query's target candidate.

  Args:
    embed: encoder `x -> (B, k)`.
    queries: (B, H, W, C) query images q_s in [0, 1].
    target_emb: (B, k) embedding of each query's target candidate.
    candidate_emb: (N, k) embeddings of the candidate set.
    eps: budget (Sec. 5.1.2, L-inf: 0.1, 0.2 MNIST/FMNIST; 2/255, 3/255 CIFAR).
    key: PRNG key of the random start.
    step_size: default eps / 10 (Sec. 5.1.2).
    num_steps: default 100 (Sec. 5.1.2).
    norm: 'linf' (Kakizaki et al.) or 'l2'.
    random_start, loop: see `engine.pgd` (Madry's PGD starts at a random point).

  Returns:
    (B, H, W, C) adversarial queries.
  """
  attack = engine.pgd(_query_attack_loss, eps=eps,
                      step_size=eps / 10 if step_size is None else step_size,
                      num_steps=num_steps, norm=norm, random_start=random_start, loop=loop)
  return attack(key, queries, retrieval.as_pytree_function(embed), target_emb,
                candidate_emb)


def candidate_attack(embed: Callable, sources, query_emb,
                     query_candidate_distances, *, eps, key, step_size=None,
                     num_steps: int = 100, norm: str = 'linf',
                     random_start: bool = True, loop: str = 'auto') -> jax.Array:
  """Kakizaki et al. CA: PGD minimising Eq. 4, raising each source candidate for its query.

  Args:
    embed: encoder `x -> (B, k)`.
    sources: (B, H, W, C) source candidate images c_s in [0, 1].
    query_emb: (B, k) embedding of the query each source targets.
    query_candidate_distances: (B, N) clean Euclidean distances from that
      query to every candidate.
    eps, key, step_size, num_steps, norm, random_start, loop: as `query_attack`.

  Returns:
    (B, H, W, C) adversarial candidates.
  """
  attack = engine.pgd(_candidate_attack_loss, eps=eps,
                      step_size=eps / 10 if step_size is None else step_size,
                      num_steps=num_steps, norm=norm, random_start=random_start, loop=loop)
  return attack(key, sources, retrieval.as_pytree_function(embed), query_emb,
                query_candidate_distances)
