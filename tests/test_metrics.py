"""Tests of `jaxcert.metrics`: Recall@K (Kakizaki et al. Eq. 22), mAP@R, `evaluate_retrieval`.

Recall@K is checked on hand-made rankings and against a per-query loop; mAP@R on
hand cases and against a direct numpy transcription of pytorch-metric-learning's
`mean_average_precision_at_r` (relevance mask of R columns, precision at each
relevant rank, divided by R, lone queries left out), on integer-valued
embeddings where distances tie, with and without `exclude_self`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert import metrics


def brute_force_ranking(query, gallery, exclude_self=False):
  """Gallery indices of every query, nearest first; ties by gallery index; self last if excluded."""
  query = np.asarray(query, np.float64)
  gallery = np.asarray(gallery, np.float64)
  sq = np.sum((query[:, None, :] - gallery[None, :, :]) ** 2, axis=-1)
  if exclude_self:
    np.fill_diagonal(sq, np.inf)
  return np.argsort(sq, axis=1, kind='stable')


def pml_map_at_r(query, query_labels, gallery, gallery_labels, exclude_self=False):
  """mAP@R as pytorch-metric-learning's AccuracyCalculator computes it, in plain numpy."""
  label_values, label_counts = np.unique(gallery_labels, return_counts=True)
  num_k = int(label_counts.max())
  knn_labels = gallery_labels[brute_force_ranking(query, gallery, exclude_self)[:, :num_k]]
  relevance_mask = np.zeros(knn_labels.shape, bool)
  for label, count in zip(label_values, label_counts):
    max_column = count - 1 if exclude_self else count
    relevance_mask[query_labels == label, :max_column] = True
  not_lone = relevance_mask.any(axis=1)
  equality = (knn_labels == query_labels[:, None]) & relevance_mask
  k_idx = np.arange(1, num_k + 1)[None, :]
  precision_at_ks = np.cumsum(equality, axis=1) * equality / k_idx
  average_precision = (np.sum(precision_at_ks * relevance_mask, axis=1)
                       / np.maximum(relevance_mask.sum(axis=1), 1))
  return float(np.mean(average_precision[not_lone]))


class TestRecallAtK:

  def test_hand_case(self):
    query_labels = np.array([0, 1, 2, 3])
    retrieved_labels = np.array([[1, 0, 0],   # first hit at rank 2
                                 [1, 2, 2],   # rank 1
                                 [0, 1, 2],   # rank 3
                                 [0, 1, 2]])  # never
    assert metrics.recall_at_k(query_labels, retrieved_labels, (1, 2, 3)) == {
        1: 0.25, 2: 0.5, 3: 0.75}

  def test_any_hit_counts_once(self):
    # Eq. 22 asks whether *some* item of the top K is similar, not how many are.
    recall = metrics.recall_at_k(np.array([5, 5]), np.array([[5, 5, 5], [1, 5, 5]]), (1, 3))
    assert recall == {1: 0.5, 3: 1.0}

  def test_against_per_query_loop(self):
    rng = np.random.default_rng(0)
    query_labels = rng.integers(0, 4, 30)
    retrieved_labels = rng.integers(0, 4, (30, 12))
    ks = (1, 2, 5, 12)
    expected = {k: np.mean([query_labels[i] in retrieved_labels[i, :k] for i in range(30)])
                for k in ks}
    assert metrics.recall_at_k(query_labels, retrieved_labels, ks) == pytest.approx(expected)

  @pytest.mark.parametrize('ks', [(0,), (4,), (), (1.5,)])
  def test_bad_ks(self, ks):
    with pytest.raises(ValueError):
      metrics.recall_at_k(np.zeros(2, int), np.zeros((2, 3), int), ks)

  def test_bad_shapes(self):
    with pytest.raises(ValueError):
      metrics.recall_at_k(np.zeros(2, int), np.zeros((3, 3), int), (1,))
    with pytest.raises(ValueError):
      metrics.recall_at_k(np.zeros(2, float), np.zeros((2, 3), int), (1,))


class TestMapAtR:

  def test_hand_case(self):
    # Query at 0; gallery at 1, 2, 3 with classes 0, 1, 0: R = 2, relevant at ranks 1 and 3,
    # AP@R = (1/2)(P@1 rel_1 + P@2 rel_2) = (1/2)(1 + 0) = 1/2; the item at rank 3 is beyond R.
    gallery = np.array([[1.], [2.], [3.]])
    assert metrics.map_at_r(np.zeros((1, 1)), np.array([0]), gallery,
                            np.array([0, 1, 0])) == pytest.approx(0.5)
    # Classes 0, 0, 1: both relevant items first, AP@R = 1.
    assert metrics.map_at_r(np.zeros((1, 1)), np.array([0]), gallery,
                            np.array([0, 0, 1])) == pytest.approx(1.)
    # Classes 1, 0, 0 (R = 2): AP@R = (1/2)(0 + 1/2) = 1/4.
    assert metrics.map_at_r(np.zeros((1, 1)), np.array([0]), gallery,
                            np.array([1, 0, 0])) == pytest.approx(0.25)

  def test_lone_queries_are_left_out(self):
    gallery = np.array([[1.], [2.]])
    # Query 1's class 7 is absent from the gallery: the mean is over query 0 alone.
    assert metrics.map_at_r(np.zeros((2, 1)), np.array([0, 7]), gallery,
                            np.array([0, 1])) == pytest.approx(1.)

  @pytest.mark.parametrize('num_query, num_gallery, num_classes, block_size, exclude_self', [
      (40, 60, 4, 16, False),
      (50, 50, 3, 7, True),
      (30, 45, 6, 1024, False),
      (33, 33, 5, 5, True),
      (60, 130, 12, 16, False),  # 4 max R < Ng: several gallery blocks
      (100, 100, 10, 7, True),
  ])
  def test_against_pytorch_metric_learning_formula(self, num_query, num_gallery, num_classes,
                                                   block_size, exclude_self):
    rng = np.random.default_rng(num_query + num_classes)
    gallery = rng.integers(0, 3, (num_gallery, 4)).astype(np.float32)  # many tied distances
    gallery_labels = rng.integers(0, num_classes, num_gallery)
    if exclude_self:
      query, query_labels = gallery, gallery_labels
    else:
      query = rng.integers(0, 3, (num_query, 4)).astype(np.float32)
      query_labels = rng.integers(0, num_classes + 1, num_query)  # class num_classes is lone
    expected = pml_map_at_r(query, query_labels, gallery, gallery_labels, exclude_self)
    value = metrics.map_at_r(query, query_labels, gallery, gallery_labels,
                             exclude_self=exclude_self, block_size=block_size)
    assert value == pytest.approx(expected, abs=1e-6)
    assert 0. < value < 1.

  def test_perfect_clusters(self):
    labels = np.repeat(np.arange(4), 5)
    emb = labels[:, None] * 10. + np.random.default_rng(1).uniform(size=(20, 3))
    assert metrics.map_at_r(emb, labels, emb, labels, exclude_self=True,
                            block_size=6) == pytest.approx(1.)

  def test_no_shared_class(self):
    with pytest.raises(ValueError, match='same-class'):
      metrics.map_at_r(np.zeros((2, 1)), np.array([0, 0]), np.ones((2, 1)), np.array([1, 2]))

  def test_bad_lengths(self):
    with pytest.raises(ValueError):
      metrics.map_at_r(np.zeros((2, 1)), np.array([0]), np.ones((2, 1)), np.array([0, 1]))

  def test_exclude_self_needs_the_same_set(self):
    with pytest.raises(ValueError):
      metrics.map_at_r(np.zeros((2, 1)), np.array([0, 1]), np.ones((2, 1)), np.array([1, 0]),
                       exclude_self=True)


@pytest.fixture(scope='module')
def dataset():
  """50 images of 4x4x1 in 3 classes: class means 0.2, 0.5, 0.8 plus noise (imperfect retrieval)."""
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 3, 50)
  images = np.clip(0.2 + 0.3 * labels[:, None, None, None]
                   + rng.normal(scale=0.3, size=(50, 4, 4, 1)), 0., 1.).astype(np.float32)
  return images, labels


class TestEvaluateRetrieval:

  def test_matches_its_parts(self, dataset):
    images, labels = dataset
    query_images, query_labels = images[:20], labels[:20]
    gallery_images, gallery_labels = images[20:], labels[20:]
    ks = (1, 5, 10)
    results = metrics.evaluate_retrieval(metrics.raw_pixel_embed, query_images, query_labels,
                                         gallery_images, gallery_labels, ks, batch_size=8,
                                         block_size=7)
    query = query_images.reshape(20, -1)
    gallery = gallery_images.reshape(30, -1)
    ranking = brute_force_ranking(query, gallery)
    for k in ks:
      hits = np.any(gallery_labels[ranking[:, :k]] == query_labels[:, None], axis=1)
      assert results[f'recall@{k}'] == pytest.approx(np.mean(hits))
    assert results['map@r'] == pytest.approx(
        pml_map_at_r(query, query_labels, gallery, gallery_labels), abs=1e-6)
    assert set(results) == {'recall@1', 'recall@5', 'recall@10', 'map@r'}
    assert 0. < results['recall@1'] < 1.

  def test_query_set_as_gallery_with_a_flax_style_encoder(self, dataset):
    images, labels = dataset
    weight = jnp.asarray(np.random.default_rng(3).normal(size=(16, 6)), jnp.float32)
    embed = jax.tree_util.Partial(
        lambda w, x: jnp.dot(x.reshape(x.shape[0], -1), w, precision='highest'), weight)
    results = metrics.evaluate_retrieval(embed, images, labels, images, labels, (1, 3),
                                         batch_size=16, exclude_self=True)
    emb = np.asarray(images.reshape(50, -1) @ np.asarray(weight))
    ranking = brute_force_ranking(emb, emb, exclude_self=True)
    expected_recall = np.mean(labels[ranking[:, 0]] == labels)
    assert results['recall@1'] == pytest.approx(expected_recall)
    assert results['map@r'] == pytest.approx(
        pml_map_at_r(emb, labels, emb, labels, exclude_self=True), abs=1e-4)

  def test_k_larger_than_gallery(self, dataset):
    images, labels = dataset
    with pytest.raises(ValueError):
      metrics.evaluate_retrieval(metrics.raw_pixel_embed, images[:5], labels[:5], images[5:10],
                                 labels[5:10], (1, 10))


def test_raw_pixel_embed_flattens():
  images = np.arange(2 * 3 * 2 * 1, dtype=np.float32).reshape(2, 3, 2, 1)
  np.testing.assert_array_equal(metrics.raw_pixel_embed(images), images.reshape(2, 6))
