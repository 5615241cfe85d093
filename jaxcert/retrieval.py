"""Retrieval by embedding distance: batched embedding, pairwise distances, blocked top-k.

Content-based image retrieval ranks a gallery (the candidate set C of Kakizaki et al.,
Sec. 5.1.1) by Euclidean distance to a query embedding, nearest first
(IR_f(q, C) in Kakizaki et al. Sec. 3). Everything here works on whole evaluation sets
in fixed-size blocks, so one compiled shape serves a whole run and memory stays
bounded however large the query and gallery sets are:

* `embed_in_batches` runs an encoder over an image set in batches of one shape;
* `pairwise_sq_distances` / `pairwise_distances` give the full (Na, Nb) matrix for
  small sets (training batches, tests);
* `blocked_topk` finds the k nearest gallery items of every query without ever
  building the (Nq, Ng) matrix: it loops over query blocks and, inside, over
  gallery blocks, merging a running top-k with each block;
* `sharded_blocked_topk` is `blocked_topk` with the queries split across the
  devices of a mesh (`jaxcert.parallel`).

Ties. Equal distances are ordered by gallery index (lower index first), on every
backend and for every block size, so rankings are reproducible; Kakizaki et al. leaves
the order of tied candidates unspecified.

Precision. Squared distances are sums of squared coordinate differences, not
||a||^2 + ||b||^2 - 2 a.b: the expansion's float32 rounding error scales with the
squared norms, not the distances, and on an encoder whose nearest neighbours sit
1e-3 apart at norm ~1 (a TBT-trained Small CNN on the embedded sample) it got 27%
of the top-1 neighbours wrong even after shifting the points to the origin. The
difference form is exact to float32 rounding of each distance; XLA fuses it (no
(Na, Nb, d) buffer), at ~3.6x the time of the matmul form measured on this CPU
for 1024 x 1024 x 128, a small part of any evaluation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P
import tqdm

from jaxcert import parallel

# The blocked top-k keeps (k + gallery block) candidates per query row; this many rows at a time.
DEFAULT_BLOCK_SIZE = 1024


@jax.jit
def _apply(embed, images):
  return embed(images)


def as_pytree_function(embed: Callable) -> jax.tree_util.Partial:
  """`embed` as a pytree, so its bound arrays (model weights) stay runtime arguments of a jitted call.

  A `jax.tree_util.Partial` is returned unchanged; any other callable becomes a zero-argument
  Partial (its closed-over arrays are then compile-time constants).
  """
  if isinstance(embed, jax.tree_util.Partial):
    return embed
  return jax.tree_util.Partial(embed)


def embed_in_batches(embed: Callable, images, batch_size: int = 256, *,
                     sharding: jax.sharding.Sharding | None = None,
                     progress: str | None = None) -> np.ndarray:
  """Embeds `images` in batches of one static shape.

  The last batch is padded (by repeating its last image) to the common batch size,
  so the encoder compiles once per run; the padded rows are dropped. Pass
  `jax.tree_util.Partial(model.apply, variables)` as `embed` to keep the weights
  runtime arguments: one compilation then serves every checkpoint of a model. A
  plain closure works too (compiled once per call, its weights become constants).

  Args:
    embed: pure function `(batch, H, W, C) -> (batch, k)`.
    images: N images; any array-like with `len()` and integer-array indexing
      (`np.ndarray`, `np.memmap`, the `images` of a `jaxcert.data.Split`).
    batch_size: images per compiled call; a set smaller than this is run as one
      batch of its own size.
    sharding: where each batch goes, e.g. `parallel.batch_sharded(mesh)`: the jitted
      encoder then runs data-parallel over the mesh (XLA partitions it along the batch;
      `embed`'s weights must be replicated on the same devices). None: the default device.
    progress: a description to show a progress bar (tqdm, images done) under, for long runs
      such as CROWN bounds; None: no bar.

  Returns:
    (N, k) np.ndarray of embeddings, in the order of `images`.

  Raises:
    ValueError: `images` is empty or `batch_size` < 1. (With `sharding`, the batch size
      is rounded up to a multiple of its device count; the extra rows are padding.)
  """
  num_images = len(images)
  if num_images == 0:
    raise ValueError('images is empty; pass at least one image to embed.')
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}.')
  batch_size = min(int(batch_size), num_images)
  if sharding is not None:
    devices = len(sharding.device_set)
    batch_size = -(-batch_size // devices) * devices  # A small set is padded up to the devices.
  embed = as_pytree_function(embed)
  outputs = []
  for start in range(0, num_images, batch_size):
    stop = min(start + batch_size, num_images)
    batch = np.asarray(images[np.arange(start, stop)])
    if stop - start < batch_size:
      padding = np.repeat(batch[-1:], batch_size - (stop - start), axis=0)
      batch = np.concatenate([batch, padding])
    if sharding is not None:
      batch = jax.device_put(batch, sharding)
    outputs.append((_apply(embed, batch), stop - start))
  # Converting after every batch is dispatched lets host indexing overlap device compute.
  with tqdm.tqdm(total=num_images, desc=progress, unit='img', dynamic_ncols=True,
                 disable=progress is None or not parallel.is_primary()) as bar:
    results = []
    for out, count in outputs:
      results.append(np.asarray(out)[:count])
      bar.update(count)
  return np.concatenate(results)


def padded_batches(num: int, batch_size: int):
  """Yields (rows, count) covering range(num) in batches of one fixed size.

  `rows` holds min(batch_size, num) indices, the last batch padded by repeating its last index;
  its first `count` are real. One batch shape serves every batch, so a jitted function (an
  attack) compiles once.
  """
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}.')
  size = min(int(batch_size), num)
  for start in range(0, num, size):
    yield np.minimum(np.arange(start, start + size), num - 1), min(size, num - start)


def pairwise_sq_distances(a, b) -> jax.Array:
  """Squared Euclidean distances sum_j (a_ij - b_lj)^2, (Na, Nb), exact to float32 rounding.

  Args:
    a: (Na, k) embeddings.
    b: (Nb, k) embeddings.

  Returns:
    (Na, Nb) float array.
  """
  a = jnp.asarray(a)
  b = jnp.asarray(b)
  return jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)


def pairwise_distances(a, b) -> jax.Array:
  """Euclidean distances ||a_i - b_j|| (Na, Nb), with gradient 0 (not NaN) where a distance is 0."""
  sq = pairwise_sq_distances(a, b)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.)), 0.)


def pad_rows(array: jax.Array, multiple: int) -> jax.Array:
  """Pads axis 0 with zeros up to a multiple of `multiple`."""
  missing = -array.shape[0] % multiple
  return jnp.pad(array, [(0, missing)] + [(0, 0)] * (array.ndim - 1))


def _query_block_topk(query_block, query_start, gallery_blocks, gallery_starts, *,
                      num_gallery: int, k: int, exclude_self: bool):
  """Squared distances (B, k) and gallery indices (B, k) of the k nearest for one query block.

  Scans the gallery blocks, merging the running top-k with each block's distances:
  `lax.top_k` over [running k | block], the running entries first. Running entries
  come from earlier blocks (lower gallery indices) and are already ordered by
  (distance, index), block entries are in index order, and `lax.top_k` puts the
  lower position first among equal values: ties come out ordered by gallery index.
  """
  query_block_size = query_block.shape[0]
  gallery_block_size = gallery_blocks.shape[1]
  query_index = query_start + jnp.arange(query_block_size, dtype=jnp.int32)
  inf = jnp.array(jnp.inf, query_block.dtype)

  def merge_gallery_block(running, block):
    best_sq, best_index = running
    gallery_block, gallery_start = block
    gallery_index = gallery_start + jnp.arange(gallery_block_size, dtype=jnp.int32)
    sq = pairwise_sq_distances(query_block, gallery_block)
    excluded = jnp.broadcast_to(gallery_index[None, :] >= num_gallery, sq.shape)
    if exclude_self:
      excluded = excluded | (gallery_index[None, :] == query_index[:, None])
    sq = jnp.where(excluded, inf, sq)
    candidate_sq = jnp.concatenate([best_sq, sq], axis=1)
    candidate_index = jnp.concatenate(
        [best_index, jnp.broadcast_to(gallery_index[None, :], sq.shape)], axis=1)
    neg_sq, position = lax.top_k(-candidate_sq, k)
    return (-neg_sq, jnp.take_along_axis(candidate_index, position, axis=1)), None

  # Placeholders at +inf lose to every real (finite) distance, so none survives when k <= Ng.
  start = (jnp.full((query_block_size, k), inf),
           jnp.full((query_block_size, k), num_gallery, jnp.int32))
  (best_sq, best_index), _ = lax.scan(
      merge_gallery_block, start, (gallery_blocks, gallery_starts))
  return best_sq, best_index


def _gallery_blocks(gallery_emb, gallery_block_size: int):
  """Gallery padded and cut into (num_blocks, block, d), and the block starts."""
  gallery = pad_rows(gallery_emb, gallery_block_size)
  gallery_blocks = gallery.reshape(-1, gallery_block_size, gallery.shape[-1])
  gallery_starts = jnp.arange(gallery_blocks.shape[0], dtype=jnp.int32) * gallery_block_size
  return gallery_blocks, gallery_starts


def map_over_query_blocks(per_block_fn, query_emb, gallery_emb, *query_extras, k: int,
                          block_size: int, gallery_block_size: int, exclude_self: bool):
  """Applies `per_block_fn` to the blocked top-k of each query block; traceable (use under jit).

  Args:
    per_block_fn: `(sq_dist (B, k), index (B, k), *extras_block) -> pytree` of arrays
      with leading axis B; padded query rows are dropped from its output.
    query_emb: (Nq, d) embeddings.
    gallery_emb: (Ng, d) embeddings.
    *query_extras: arrays with leading axis Nq (e.g. labels), cut into the same blocks.
    k: neighbours per query, 1 <= k <= Ng - exclude_self (not checked here).
    block_size: query rows per block.
    gallery_block_size: gallery columns per block.
    exclude_self: query i never retrieves gallery item i.

  Returns:
    `per_block_fn`'s outputs concatenated over blocks, leading axis Nq.
  """
  num_query, num_gallery = query_emb.shape[0], gallery_emb.shape[0]
  query_block_size = min(block_size, num_query)
  gallery_block_size = min(gallery_block_size, num_gallery)
  gallery = _gallery_blocks(gallery_emb, gallery_block_size)

  def cut(x):
    return pad_rows(x, query_block_size).reshape((-1, query_block_size) + x.shape[1:])

  query_blocks = cut(query_emb)
  query_starts = jnp.arange(query_blocks.shape[0], dtype=jnp.int32) * query_block_size

  def one_block(args):
    query_block, query_start, *extras = args
    sq, index = _query_block_topk(query_block, query_start, *gallery,
                                  num_gallery=num_gallery, k=k, exclude_self=exclude_self)
    return per_block_fn(sq, index, *extras)

  outputs = lax.map(one_block, (query_blocks, query_starts) + tuple(map(cut, query_extras)))
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:num_query], outputs)


@functools.partial(jax.jit,
                   static_argnames=('k', 'block_size', 'gallery_block_size', 'exclude_self'))
def _blocked_topk(query_emb, gallery_emb, *, k, block_size, gallery_block_size, exclude_self):
  def distances_and_indices(sq, index):
    return jnp.sqrt(sq), index
  return map_over_query_blocks(distances_and_indices, query_emb, gallery_emb, k=k,
                               block_size=block_size, gallery_block_size=gallery_block_size,
                               exclude_self=exclude_self)


def as_embeddings(embeddings, name: str) -> jax.Array:
  """`embeddings` as a (N, d) float array (at least float32); ValueError if malformed or not finite."""
  embeddings = jnp.asarray(embeddings)
  if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
    raise ValueError(f'{name} must be a non-empty (N, d) array of embeddings, got shape '
                     f'{embeddings.shape}; reshape to (N, d).')
  embeddings = embeddings.astype(jnp.promote_types(embeddings.dtype, jnp.float32))
  if not bool(jnp.all(jnp.isfinite(embeddings))):
    raise ValueError(f'{name} contains NaN or inf; check the encoder and its inputs.')
  return embeddings


def check_topk_arguments(query_emb, gallery_emb, k: int, block_size: int,
                         gallery_block_size: int | None, exclude_self: bool) -> int:
  """The gallery block size; ValueError unless dimensions agree, 1 <= k <= Ng - exclude_self,
  and the block sizes are positive integers."""
  num_query, num_gallery = query_emb.shape[0], gallery_emb.shape[0]
  if query_emb.shape[1] != gallery_emb.shape[1]:
    raise ValueError(f'Query embeddings have dimension {query_emb.shape[1]} but gallery '
                     f'embeddings {gallery_emb.shape[1]}; embed both with the same encoder.')
  if exclude_self and num_query != num_gallery:
    raise ValueError(f'exclude_self=True needs the query set to be the gallery (same items, '
                     f'same order), got {num_query} queries and {num_gallery} gallery items.')
  available = num_gallery - int(bool(exclude_self))
  if int(k) != k or not 1 <= k <= available:
    raise ValueError(f'k must be an integer in [1, {available}] (the gallery size'
                     f'{" minus the query itself" if exclude_self else ""}), got {k!r}.')
  if gallery_block_size is None:
    gallery_block_size = block_size
  for name, size in (('block_size', block_size), ('gallery_block_size', gallery_block_size)):
    if int(size) != size or size < 1:
      raise ValueError(f'{name} must be a positive integer, got {size!r}.')
  return int(gallery_block_size)


def blocked_topk(query_emb, gallery_emb, k: int, *, block_size: int = DEFAULT_BLOCK_SIZE,
                 gallery_block_size: int | None = None,
                 exclude_self: bool = False) -> tuple[jax.Array, jax.Array]:
  """The k nearest gallery embeddings of every query, nearest first (IR_f(q, C)_{<=k}, Kakizaki et al.).

  Queries are processed block_size at a time; for each query block the gallery is
  scanned gallery_block_size items at a time, and the running top-k is merged with
  each gallery block by `lax.top_k` over the (k + gallery block) candidates.

  Memory bound: besides the inputs (and zero-padded copies of them) and the (Nq, k)
  outputs, the function never materialises more than block_size x
  (gallery_block_size + k) distances, with as many int32 indices (with the
  defaults and k = 40: 1024 x 1064 x 8 bytes, about 8.7 MB; XLA's temporary
  buffers stay within a small multiple of that, tests/test_retrieval.py). A
  60,000 x 60,000 evaluation never builds its 60,000 x 60,000 distance matrix.
  The last query and gallery blocks are padded to the block shape (padded gallery
  items sit at +inf and are never returned), so one compiled function serves the
  whole grid; a set smaller than its block size uses its own size.

  Ties are ordered by gallery index, lower first (module docstring).

  Args:
    query_emb: (Nq, d) query embeddings.
    gallery_emb: (Ng, d) gallery embeddings.
    k: neighbours per query, 1 <= k <= Ng (Ng - 1 with `exclude_self`).
    block_size: query rows per block.
    gallery_block_size: gallery columns per block; None: block_size. Block shapes
      change speed, never results (on an H100, 60,000 x 60,000 with k = 40 took
      210-380 ms over query blocks 1024-65536 and gallery blocks 256-4096).
    exclude_self: the query set is the gallery (same items in the same order);
      query i never retrieves gallery item i (Panum et al. Eq. 19: i not in K).

  Returns:
    (distances, indices): (Nq, k) Euclidean distances, ascending along each row,
    and the (Nq, k) int32 gallery indices they belong to.

  Raises:
    ValueError: malformed or non-finite embeddings, mismatched dimensions, k out
      of range, or exclude_self with query and gallery sets of different sizes.
  """
  query_emb = as_embeddings(query_emb, 'query_emb')
  gallery_emb = as_embeddings(gallery_emb, 'gallery_emb')
  gallery_block_size = check_topk_arguments(query_emb, gallery_emb, k, block_size,
                                            gallery_block_size, exclude_self)
  dtype = jnp.promote_types(query_emb.dtype, gallery_emb.dtype)
  return _blocked_topk(query_emb.astype(dtype), gallery_emb.astype(dtype), k=int(k),
                       block_size=int(block_size), gallery_block_size=gallery_block_size,
                       exclude_self=bool(exclude_self))


@functools.partial(jax.jit, static_argnames=('mesh', 'k', 'block_size', 'gallery_block_size',
                                             'exclude_self'))
def _sharded_topk(query_emb, gallery_emb, *, mesh, k, block_size, gallery_block_size,
                  exclude_self):
  def local_topk(local_query, gallery):
    # Without self-exclusion inside the scan (it needs global query indices): take one neighbour
    # more and drop query i's own gallery item i, or the extra last neighbour where it is absent.
    def distances_and_indices(sq, index):
      return jnp.sqrt(sq), index
    distances, index = map_over_query_blocks(
        distances_and_indices, local_query, gallery, k=k + int(exclude_self),
        block_size=block_size, gallery_block_size=gallery_block_size, exclude_self=False)
    if not exclude_self:
      return distances, index
    rows = local_query.shape[0]
    query_index = lax.axis_index(parallel.DATA_AXIS) * rows + jnp.arange(rows)
    is_self = index == query_index[:, None]
    keep = jnp.argsort(is_self, axis=1, stable=True)[:, :k]  # self (at most one) sorts last
    return (jnp.take_along_axis(distances, keep, axis=1),
            jnp.take_along_axis(index, keep, axis=1))

  # check_vma=False: the scans inside start from constants and carry per-device values.
  batch = P(parallel.DATA_AXIS)
  return jax.shard_map(local_topk, mesh=mesh, in_specs=(batch, P()), out_specs=(batch, batch),
                       check_vma=False)(query_emb, gallery_emb)


def sharded_blocked_topk(query_emb, gallery_emb, k: int, mesh: Mesh, *,
                         block_size: int = DEFAULT_BLOCK_SIZE,
                         gallery_block_size: int | None = None,
                         exclude_self: bool = False) -> tuple[jax.Array, jax.Array]:
  """`blocked_topk` with the queries split across the devices of `mesh`.

  Each device takes Nq / devices queries (the set is padded with zero rows to a multiple of the
  device count; their rows are dropped) and scans the whole, replicated gallery with the blocked
  top-k above: the same distances (up to float rounding) and indices, ties ordered by gallery
  index, and the same memory bound per device. `exclude_self` is computed as the
  k + 1 nearest with query i's own item i removed (or the last one when item i is not among them),
  which is the k nearest of the other items in the same order.

  Args:
    query_emb, gallery_emb, k, block_size, gallery_block_size, exclude_self: as in
      `blocked_topk`.
    mesh: from `parallel.make_mesh` (one process).

  Returns:
    (distances, indices), each (Nq, k), as `blocked_topk`.
  """
  query_emb = as_embeddings(query_emb, 'query_emb')
  gallery_emb = as_embeddings(gallery_emb, 'gallery_emb')
  gallery_block_size = check_topk_arguments(query_emb, gallery_emb, k, block_size,
                                            gallery_block_size, exclude_self)
  dtype = jnp.promote_types(query_emb.dtype, gallery_emb.dtype)
  num_query = query_emb.shape[0]
  devices = mesh.devices.size
  padded = jnp.pad(query_emb.astype(dtype), [(0, -num_query % devices), (0, 0)])
  distances, index = _sharded_topk(
      jax.device_put(padded, parallel.batch_sharded(mesh)),
      jax.device_put(gallery_emb.astype(dtype), parallel.replicated(mesh)), mesh=mesh, k=int(k),
      block_size=int(block_size), gallery_block_size=gallery_block_size,
      exclude_self=bool(exclude_self))
  return distances[:num_query], index[:num_query]
