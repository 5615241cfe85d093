"""The synthetic two-Gaussian dataset of Panum et al., Appendix E.

Two classes, "a" (label 0) and "b" (label 1), each an isotropic Gaussian in pixel space:
  x ~ N_k(mu_a, sigma^2 I_k),  mu_a = (0.25, ..., 0.25),
  x ~ N_k(mu_b, sigma^2 I_k),  mu_b = (0.75, ..., 0.75),  sigma = 0.025,
with k = 3 x 224 x 224 in the paper, 508 training and 516 test points, equally many per class.

Reading chosen here: pixels are clipped to [0, 1] (the library's pixel range); at 10 sigma from
both means, clipping changes no pixel in practice. Each image is drawn from its own generator
seeded by (seed, split, index), so images are computed on demand (no 616 MB array at the paper's
size) and the same index always gives the same image.
"""

from __future__ import annotations

import numpy as np

from jaxcert.data import core

CLASS_MEANS = (0.25, 0.75)  # mu_a, mu_b
SIGMA = 0.025
PAPER_NUM_TRAIN = 508
PAPER_NUM_TEST = 516
PAPER_IMAGE_SIZE = 224
PAPER_NUM_CHANNELS = 3
_SPLIT_IDS = {'train': 0, 'test': 1}


class TwoGaussianImages(core.LazyImages):
  """Images of one split of the two-Gaussian dataset, drawn when indexed.

  Image i is `clip(CLASS_MEANS[labels[i]] + sigma * z, 0, 1)` with z standard normal from
  `np.random.default_rng([seed, split_id, i])`.
  """

  def __init__(self, labels: np.ndarray, image_shape: tuple[int, int, int], *, seed: int,
               split_id: int, sigma: float = SIGMA):
    super().__init__(len(labels), image_shape)
    self.labels, self.seed, self.split_id, self.sigma = labels, seed, split_id, sigma

  def _read(self, indices: np.ndarray) -> np.ndarray:
    images = np.empty((len(indices), *self._image_shape), np.float32)
    for row, index in enumerate(indices):
      rng = np.random.default_rng([self.seed, self.split_id, int(index)])
      images[row] = CLASS_MEANS[self.labels[index]] + self.sigma * rng.standard_normal(
          self._image_shape, np.float32)
    return np.clip(images, 0.0, 1.0, out=images)


def balanced_binary_labels(num: int, *, seed: int, split_id: int) -> np.ndarray:
  """`num` labels, half 0 and half 1 (one more 0 if `num` is odd), in an order drawn from the seed."""
  return np.random.default_rng([seed, split_id]).permutation(np.arange(num) % 2).astype(np.int32)


def two_gaussians(*, num_train: int = PAPER_NUM_TRAIN, num_test: int = PAPER_NUM_TEST,
                  image_size: int = PAPER_IMAGE_SIZE, num_channels: int = PAPER_NUM_CHANNELS,
                  sigma: float = SIGMA, seed: int = 0, name: str = 'synthetic') -> core.Dataset:
  """The Panum et al. App. E dataset (defaults: the paper's sizes); a pure function of its arguments.

  Args:
    num_train: training points (paper: 508), half per class.
    num_test: test points (paper: 516), half per class.
    image_size: height and width (paper: 224).
    num_channels: channels (paper: 3).
    sigma: standard deviation of every pixel (paper: 0.025).
    seed: seed of labels and pixels.
    name: the dataset name to record.

  Returns:
    A `Dataset` with lazily drawn (N, image_size, image_size, num_channels) images.
  """
  for field, value in (('num_train', num_train), ('num_test', num_test), ('image_size', image_size),
                       ('num_channels', num_channels)):
    if int(value) < 1:
      raise ValueError(f'synthetic data: {field} must be positive, got {value}.')
  image_shape = (image_size, image_size, num_channels)
  splits = []
  for split, num in (('train', num_train), ('test', num_test)):
    labels = balanced_binary_labels(num, seed=seed, split_id=_SPLIT_IDS[split])
    images = TwoGaussianImages(labels, image_shape, seed=seed, split_id=_SPLIT_IDS[split], sigma=sigma)
    splits.append(core.Split(images, labels))
  return core.make_dataset(name, *splits)
