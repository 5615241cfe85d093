"""Dataset containers and image arrays that produce float32 pixels only when indexed.

Conventions (docs/architecture.md): images are NHWC float32 in [0, 1]; labels are int32 of shape
(N,). Loaders keep pixels compact (uint8, or encoded files behind `tfds.data_source`) and hand out
array-likes: `len(images)`, `images.shape`, and `images[index]` with an int, a slice, a boolean mask
or an integer array, which returns a float32 NHWC numpy batch. `np.asarray(images)` materialises all.
"""

from __future__ import annotations

import abc
from typing import NamedTuple, Union

import numpy as np


class LazyImages(abc.ABC):
  """A read-only (N, H, W, C) float32 array whose rows are computed when indexed.

  Subclasses implement `_read(indices)`; indexing here turns every supported key into a validated
  int64 index array first, so `_read` only ever sees in-range indices.
  """

  def __init__(self, num_images: int, image_shape: tuple[int, int, int]):
    self._num_images = int(num_images)
    self._image_shape = tuple(int(d) for d in image_shape)

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (self._num_images, *self._image_shape)

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(np.float32)

  @property
  def ndim(self) -> int:
    return 4

  def __len__(self) -> int:
    return self._num_images

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return self._read(self._check_indices(np.array([key], np.int64)))[0]
    if isinstance(key, slice):
      return self._read(np.arange(self._num_images, dtype=np.int64)[key])
    if isinstance(key, tuple):
      raise TypeError(f'{type(self).__name__} indexes the first (example) axis only; got {key!r}. '
                      'Select examples first, then index the returned numpy batch: images[idx][..., 0].')
    indices = np.asarray(key)
    if indices.ndim == 0 and np.issubdtype(indices.dtype, np.integer):
      return self[int(indices)]
    if indices.dtype == np.bool_:
      if indices.shape != (self._num_images,):
        raise IndexError(f'Boolean mask of shape {indices.shape} for {self._num_images} images.')
      indices = np.flatnonzero(indices)
    if indices.ndim != 1 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
      raise IndexError(f'Index images with an int, a slice, a boolean mask or a 1-D integer array; '
                       f'got {indices.dtype} array of shape {indices.shape}.')
    return self._read(self._check_indices(indices.astype(np.int64)))

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    del copy  # Every read returns a fresh array.
    images = self[:]
    return images if dtype is None else images.astype(dtype)

  def __repr__(self) -> str:
    return f'{type(self).__name__}(shape={self.shape}, dtype=float32)'

  def _check_indices(self, indices: np.ndarray) -> np.ndarray:
    out_of_range = (indices < -self._num_images) | (indices >= self._num_images)
    if np.any(out_of_range):
      raise IndexError(f'Index {indices[out_of_range][0]} is out of range for {self._num_images} images.')
    return np.where(indices < 0, indices + self._num_images, indices)

  @abc.abstractmethod
  def _read(self, indices: np.ndarray) -> np.ndarray:
    """Returns images `indices` (in-range int64, shape (B,)) as float32 of shape (B, H, W, C)."""


class Uint8Images(LazyImages):
  """uint8 NHWC pixels held in memory, scaled to float32 [0, 1] (divided by 255) on indexing.

  A quarter of the memory of a float32 copy: CIFAR-10 takes 184 MB instead of 737 MB.
  """

  def __init__(self, pixels: np.ndarray):
    if pixels.dtype != np.uint8 or pixels.ndim != 4:
      raise ValueError(f'Uint8Images takes a uint8 (N, H, W, C) array, got {pixels.dtype} of shape '
                       f'{pixels.shape}.')
    super().__init__(pixels.shape[0], pixels.shape[1:])
    self.pixels = pixels

  def _read(self, indices: np.ndarray) -> np.ndarray:
    return np.divide(self.pixels[indices], 255.0, dtype=np.float32)


ImageArray = Union[np.ndarray, LazyImages]


class IndexedImages(LazyImages):
  """The rows `indices` of another image array, without copying them."""

  def __init__(self, images: ImageArray, indices: np.ndarray):
    super().__init__(len(indices), images.shape[1:])
    self.images, self.indices = images, np.asarray(indices, np.int64)

  def _read(self, indices: np.ndarray) -> np.ndarray:
    return np.asarray(self.images[self.indices[indices]], np.float32)


class Split(NamedTuple):
  """One split of a dataset.

  Attributes:
    images: (N, H, W, C) float32 in [0, 1]: a numpy array or a `LazyImages` array-like.
    labels: (N,) int32 class labels.
  """
  images: ImageArray
  labels: np.ndarray


class Dataset(NamedTuple):
  """A retrieval dataset: the encoder trains on `train`, queries and candidates come from `test`.

  Attributes:
    name: the `data_config.name` it was loaded with.
    train: training split.
    test: test split (class-disjoint from `train` for cub, cars and sop).
    num_classes: number of distinct labels over train and test together.
  """
  name: str
  train: Split
  test: Split
  num_classes: int


def check_split(split: Split, *, where: str, num_checked: int = 8) -> Split:
  """Validates the conventions of a split and returns it with int32 labels.

  Checks shapes and dtypes of the whole split and the pixel range of its first `num_checked`
  images (reading every image of a lazily decoded split would decode the whole dataset).

  Args:
    split: the split to check.
    where: how error messages name the split, e.g. 'cub train'.
    num_checked: how many leading images get their pixel values checked.

  Returns:
    `split` with labels converted to an int32 numpy array.

  Raises:
    ValueError: on a shape, dtype or range that breaks the conventions.
  """
  images = split.images
  labels = np.asarray(split.labels)
  if len(images.shape) != 4 or np.dtype(images.dtype) != np.float32:
    raise ValueError(f'{where}: images must be NHWC float32, got {np.dtype(images.dtype)} of shape '
                     f'{tuple(images.shape)}.')
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise ValueError(f'{where}: labels must have shape ({images.shape[0]},), got {labels.shape}.')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'{where}: labels must be integers, got {labels.dtype}.')
  if labels.size == 0:
    raise ValueError(f'{where}: the split is empty.')
  head = np.asarray(images[:num_checked])
  if not np.all(np.isfinite(head)) or head.min() < 0.0 or head.max() > 1.0:
    raise ValueError(f'{where}: pixels must lie in [0, 1]; the first {len(head)} images span '
                     f'[{np.nanmin(head)}, {np.nanmax(head)}]. Divide uint8 pixels by 255.')
  return Split(images, labels.astype(np.int32))


def first_classes(split: Split, num_classes: int, *, where: str) -> Split:
  """The examples of `split` whose labels are among its `num_classes` smallest labels.

  RetrievalGuard Sec. 4.3 evaluates on Online-Products with 1,000 of its test classes.
  """
  classes = np.unique(split.labels)
  if not 0 < num_classes <= len(classes):
    raise ValueError(f'{where}: num_test_classes={num_classes}, but the split has {len(classes)} classes; '
                     f'pick a value in [1, {len(classes)}] or leave it unset.')
  keep = np.flatnonzero(split.labels <= classes[num_classes - 1])
  return Split(IndexedImages(split.images, keep), split.labels[keep])


def make_dataset(name: str, train: Split, test: Split) -> Dataset:
  """Checks both splits (`check_split`) and counts the classes over train and test."""
  train = check_split(train, where=f'{name} train')
  test = check_split(test, where=f'{name} test')
  if train.images.shape[1:] != test.images.shape[1:]:
    raise ValueError(f'{name}: train images {train.images.shape[1:]} and test images '
                     f'{test.images.shape[1:]} differ in shape.')
  num_classes = len(np.union1d(train.labels, test.labels))
  return Dataset(name, train, test, num_classes)
