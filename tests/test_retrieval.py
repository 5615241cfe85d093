"""Tests of `jaxcert.retrieval`: batched embedding, pairwise distances, blocked top-k.

The blocked top-k is checked index for index against a brute-force numpy
ranking (float64 distances, stable sort, so ties are ordered by gallery index)
on integer-valued embeddings, where many distances tie exactly, and on
continuous ones; with block sizes that do not divide the set sizes, k larger
than a gallery block, k equal to the gallery size, and `exclude_self` on sets
with duplicate rows. Its memory claim is checked on the compiled program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert import retrieval


def brute_force_topk(query, gallery, k, exclude_self=False):
  """(distances, indices) of the k nearest by float64 distances; ties by gallery index."""
  query = np.asarray(query, np.float64)
  gallery = np.asarray(gallery, np.float64)
  sq = np.sum((query[:, None, :] - gallery[None, :, :]) ** 2, axis=-1)
  if exclude_self:
    np.fill_diagonal(sq, np.inf)
  order = np.argsort(sq, axis=1, kind='stable')[:, :k]
  return np.sqrt(np.take_along_axis(sq, order, axis=1)), order


def integer_embeddings(rng, num, dim, high=3):
  """Small integers: distances are exact in float32 and tie often."""
  return rng.integers(0, high, size=(num, dim)).astype(np.float32)


class TestEmbedInBatches:

  def test_matches_one_call_and_compiles_once(self):
    weight = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    traces = []

    def embed(x):
      traces.append(x.shape)
      return jnp.tanh(jnp.dot(x.reshape(x.shape[0], -1), weight, precision='highest'))

    images = np.random.default_rng(1).uniform(size=(10, 2, 2, 3)).astype(np.float32)
    out = retrieval.embed_in_batches(embed, images, batch_size=4)
    assert isinstance(out, np.ndarray)
    assert out.shape == (10, 5)
    np.testing.assert_allclose(out, np.tanh(images.reshape(10, -1) @ weight), rtol=1e-5,
                               atol=1e-6)
    assert traces == [(4, 2, 2, 3)]  # three batches, the last padded: one compiled shape

  def test_partial_keeps_weights_runtime_arguments(self):
    def apply(weight, x):
      return jnp.dot(x.reshape(x.shape[0], -1), weight, precision='highest')

    images = np.random.default_rng(2).uniform(size=(7, 3, 1, 1)).astype(np.float32)
    for seed in range(2):
      weight = np.random.default_rng(seed).normal(size=(3, 2)).astype(np.float32)
      out = retrieval.embed_in_batches(jax.tree_util.Partial(apply, weight), images, 3)
      np.testing.assert_allclose(out, images.reshape(7, 3) @ weight, rtol=1e-5, atol=1e-6)

  def test_array_like_is_indexed_in_range_only(self):
    images = np.arange(7 * 2, dtype=np.float32).reshape(7, 2, 1, 1)
    requested = []

    class LazyImages:
      def __len__(self):
        return len(images)

      def __getitem__(self, index):
        requested.append(np.asarray(index))
        return images[index]

    out = retrieval.embed_in_batches(lambda x: x.reshape(x.shape[0], -1), LazyImages(), 3)
    np.testing.assert_array_equal(out, images.reshape(7, 2))
    requested = np.concatenate(requested)
    np.testing.assert_array_equal(requested, np.arange(7))  # each image read once, in order

  def test_progress_bar_counts_the_images(self, capsys):
    images = np.arange(7 * 2, dtype=np.float32).reshape(7, 2, 1, 1)
    out = retrieval.embed_in_batches(lambda x: x.reshape(x.shape[0], -1), images, 3,
                                     progress='CROWN boxes')
    np.testing.assert_array_equal(out, images.reshape(7, 2))
    bar = capsys.readouterr().err
    assert 'CROWN boxes' in bar and '7/7' in bar

  def test_batch_larger_than_set(self):
    images = np.ones((3, 2, 2, 1), np.float32)
    out = retrieval.embed_in_batches(lambda x: jnp.sum(x, axis=(1, 2)), images, 100)
    np.testing.assert_array_equal(out, np.full((3, 1), 4.))

  @pytest.mark.parametrize('images, batch_size', [
      (np.zeros((0, 2, 2, 1)), 4), (np.zeros((3, 2, 2, 1)), 0), (np.zeros((3, 2, 2, 1)), 1.5)])
  def test_bad_arguments(self, images, batch_size):
    with pytest.raises(ValueError):
      retrieval.embed_in_batches(lambda x: x, images, batch_size)


class TestPairwiseDistances:

  def test_against_numpy(self):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    expected = np.sum((a[:, None] - b[None]) ** 2, axis=-1)
    np.testing.assert_allclose(retrieval.pairwise_sq_distances(a, b), expected, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(retrieval.pairwise_distances(a, b), np.sqrt(expected),
                               rtol=1e-5, atol=1e-5)

  def test_identical_rows_are_zero_not_negative(self):
    # Large norms make ||a||^2 + ||b||^2 - 2ab cancel; the result must not go below 0.
    a = np.random.default_rng(4).normal(loc=300., size=(64, 16)).astype(np.float32)
    sq = np.asarray(retrieval.pairwise_sq_distances(a, a))
    assert sq.min() >= 0.
    assert np.all(np.signbit(sq) == 0)  # +0, never -0
    assert np.all(np.isfinite(np.asarray(retrieval.pairwise_distances(a, a))))

  def test_distance_gradient_is_finite_at_zero(self):
    a = jnp.ones((2, 3))
    grad = jax.grad(lambda x: jnp.sum(retrieval.pairwise_distances(x, a)))(a)
    assert np.all(np.isfinite(np.asarray(grad)))


# (num_query, num_gallery, dim, k, block_size, gallery_block_size, exclude_self)
TOPK_CASES = [
    (37, 53, 5, 20, 8, None, False),   # blocks divide neither size, k > gallery block
    (53, 53, 5, 52, 7, None, True),    # exclude_self, k = all other items
    (40, 30, 3, 30, 1, None, False),   # block 1: k = Ng, merge of 30 one-item blocks
    (9, 200, 6, 40, 64, None, False),  # query set smaller than a block
    (64, 64, 4, 10, 16, None, True),   # blocks that divide the sizes
    (5, 7, 2, 3, 1024, None, False),   # sets smaller than the default block
    (30, 41, 4, 9, 11, 3, True),       # gallery blocks smaller than query blocks and than k
    (30, 41, 4, 9, 4, 17, False),      # gallery blocks larger than query blocks
]


class TestBlockedTopk:

  @pytest.mark.parametrize(
      'num_query, num_gallery, dim, k, block_size, gallery_block_size, exclude_self', TOPK_CASES)
  def test_integer_embeddings_with_ties(self, num_query, num_gallery, dim, k, block_size,
                                        gallery_block_size, exclude_self):
    rng = np.random.default_rng(num_query + num_gallery)
    gallery = integer_embeddings(rng, num_gallery, dim)
    query = gallery if exclude_self else integer_embeddings(rng, num_query, dim)
    expected_dist, expected_idx = brute_force_topk(query, gallery, k, exclude_self)
    assert np.any(expected_dist[:, 1:] == expected_dist[:, :-1])  # the case has ties
    dist, idx = retrieval.blocked_topk(query, gallery, k, block_size=block_size,
                                       gallery_block_size=gallery_block_size,
                                       exclude_self=exclude_self)
    assert idx.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(idx), expected_idx)
    np.testing.assert_allclose(np.asarray(dist), expected_dist, rtol=1e-6)

  def test_continuous_embeddings(self):
    rng = np.random.default_rng(5)
    query = rng.normal(size=(50, 16)).astype(np.float32)
    gallery = rng.normal(size=(70, 16)).astype(np.float32)
    expected_dist, expected_idx = brute_force_topk(query, gallery, 25)
    dist, idx = retrieval.blocked_topk(query, gallery, 25, block_size=16)
    np.testing.assert_allclose(np.asarray(dist), expected_dist, rtol=1e-4)
    # Indices must agree wherever the float64 ranking is not within rounding of a tie.
    sorted_sq = np.sort(np.sum((query[:, None] - gallery[None]) ** 2, -1), axis=1)[:, :26]
    gap_to_next = np.diff(sorted_sq, axis=1)
    gap_to_previous = np.concatenate([np.full((50, 1), np.inf), gap_to_next[:, :-1]], axis=1)
    separated = np.minimum(gap_to_next, gap_to_previous) > 1e-3
    assert separated.mean() > 0.9
    np.testing.assert_array_equal(np.asarray(idx)[separated], expected_idx[separated])

  def test_result_does_not_depend_on_block_size(self):
    rng = np.random.default_rng(6)
    emb = integer_embeddings(rng, 45, 3, high=2)  # 8 distinct points: massive ties
    results = [retrieval.blocked_topk(emb, emb, 12, block_size=b, gallery_block_size=g,
                                      exclude_self=True)
               for b, g in ((1, 1), (4, 4), (13, 13), (45, 45), (1024, 1024), (2, 30), (30, 2))]
    for dist, idx in results[1:]:
      np.testing.assert_array_equal(np.asarray(idx), np.asarray(results[0][1]))
      np.testing.assert_array_equal(np.asarray(dist), np.asarray(results[0][0]))

  def test_exclude_self_keeps_duplicates(self):
    emb = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 points, 4 copies each
    dist, idx = retrieval.blocked_topk(emb, emb, 3, block_size=5, exclude_self=True)
    other_copies = [[j for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i]
                    for i in range(12)]
    np.testing.assert_array_equal(np.asarray(idx), other_copies)
    np.testing.assert_array_equal(np.asarray(dist), 0.)

  def test_low_precision_inputs_are_ranked_in_float32(self):
    rng = np.random.default_rng(7)
    gallery = integer_embeddings(rng, 20, 4)
    query = integer_embeddings(rng, 6, 4)
    dist, idx = retrieval.blocked_topk(jnp.asarray(query, jnp.bfloat16),
                                       gallery.astype(np.int32), 5, block_size=4)
    assert dist.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(idx), brute_force_topk(query, gallery, 5)[1])

  def test_memory_stays_linear_in_the_set_sizes(self):
    num, dim, block, k = 8192, 32, 256, 40
    spec = jax.ShapeDtypeStruct((num, dim), jnp.float32)
    compiled = retrieval._blocked_topk.lower(
        spec, spec, k=k, block_size=block, gallery_block_size=block, exclude_self=False).compile()
    stats = compiled.memory_analysis()
    if stats is None:
      pytest.skip('this backend reports no memory analysis')
    block_bytes = block * (block + k) * 8          # distances + int32 indices of one block
    padded_inputs_bytes = 2 * num * dim * 4
    assert stats.temp_size_in_bytes <= 4 * block_bytes + 2 * padded_inputs_bytes
    assert stats.temp_size_in_bytes < num * num * 4 / 50  # far from the full distance matrix

  @pytest.mark.parametrize('query, gallery, k, kwargs', [
      (np.zeros((3, 2)), np.zeros((4, 2)), 0, {}),
      (np.zeros((3, 2)), np.zeros((4, 2)), 5, {}),
      (np.zeros((4, 2)), np.zeros((4, 2)), 4, {'exclude_self': True}),
      (np.zeros((3, 2)), np.zeros((4, 2)), 2, {'exclude_self': True}),
      (np.zeros((3, 2)), np.zeros((4, 3)), 2, {}),
      (np.zeros((3,)), np.zeros((4, 2)), 2, {}),
      (np.full((3, 2), np.nan), np.zeros((4, 2)), 2, {}),
      (np.zeros((3, 2)), np.zeros((4, 2)), 2, {'block_size': 0}),
      (np.zeros((3, 2)), np.zeros((4, 2)), 2, {'gallery_block_size': -1}),
  ])
  def test_bad_arguments(self, query, gallery, k, kwargs):
    with pytest.raises(ValueError):
      retrieval.blocked_topk(query, gallery, k, **kwargs)


def test_topk_exact_for_a_cluster_far_from_the_origin():
  """Points of norm ~1 spread by ~1e-3 (as a TBT-trained encoder gave): without the shift by the
  gallery mean, float32 rounding of the expansion reordered a third of the nearest neighbours."""
  rng = np.random.default_rng(0)
  offset = rng.normal(size=(1, 32)).astype(np.float32)
  offset /= np.linalg.norm(offset)
  gallery = offset + 1e-3 * rng.normal(size=(300, 32)).astype(np.float32)
  query = offset + 1e-3 * rng.normal(size=(100, 32)).astype(np.float32)
  expected_d, expected_i = brute_force_topk(query, gallery, 5)
  distances, indices = retrieval.blocked_topk(query, gallery, 5, block_size=64,
                                              gallery_block_size=128)
  np.testing.assert_array_equal(np.asarray(indices), expected_i)
  np.testing.assert_allclose(np.asarray(distances), expected_d, rtol=1e-3)
  full = np.asarray(retrieval.pairwise_distances(query, gallery))
  np.testing.assert_allclose(np.take_along_axis(full, expected_i, axis=1), expected_d, rtol=1e-3)
