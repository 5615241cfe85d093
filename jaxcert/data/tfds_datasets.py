"""TensorFlow Datasets loaders, read with `tfds.data_source` (no TensorFlow needed to read).

Small sets (mnist, fashion_mnist, cifar10) are decoded once into uint8 arrays in memory. The 224-px
metric-learning sets are decoded lazily, batch by batch, from the prepared files:
  cub   caltech_birds2011         classes 1-100 train, 101-200 test (union of the tfds splits)
  cars  cars196                   classes 1-98 train, 99-196 test (union of the tfds splits)
  sop   stanford_online_products  its own train (11318 classes) and test (11316 classes) splits
These are the class-disjoint splits of Song et al. (2016) that RetrievalGuard (Sec. 4.3, App. C) and
Panum et al. (Sec. 4, after Roth et al., 2020) use; `data.num_test_classes` keeps fewer test classes.
Every image, train and test, is resized so that its shorter side is `image_size * 8 / 7` (256 for
224) and centre-cropped to `image_size`; no random augmentation, so `images[i]` is a pure function
of `i`.

`tfds.data_source` reads the array_record file format. Prepare a dataset once, with TensorFlow:
  pip install -e ".[tfds]"
  tfds build NAME --data_dir DIR --file_format=array_record
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import NamedTuple

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from jaxcert.data import core


class TfdsSpec(NamedTuple):
  """How a jaxcert dataset name maps onto a tfds dataset.

  Attributes:
    tfds_name: the tfds builder name.
    label_key: feature holding the class label.
    first_test_class: labels >= this go to test (class-disjoint sets); None keeps tfds's splits.
    image_shape: fixed (H, W, C) of the small sets; None for the variable-size 224-px sets.
    download_note: what `tfds build` cannot do by itself, if anything.
  """
  tfds_name: str
  label_key: str = 'label'
  first_test_class: int | None = None
  image_shape: tuple[int, int, int] | None = None
  download_note: str = ''


TFDS_SPECS = {
    'mnist': TfdsSpec('mnist', image_shape=(28, 28, 1)),
    'fashion_mnist': TfdsSpec('fashion_mnist', image_shape=(28, 28, 1)),
    'cifar10': TfdsSpec('cifar10', image_shape=(32, 32, 3)),
    'cub': TfdsSpec('caltech_birds2011', first_test_class=100),
    'cars': TfdsSpec('cars196', first_test_class=98,
                     download_note=('The Stanford URLs tfds downloads cars196 from have been offline since '
                                    '2023 (github.com/tensorflow/datasets/issues/4932): tfds build fails '
                                    'until you point the URLs in tensorflow_datasets/image_classification/'
                                    'cars196.py at copies of cars_train.tgz, cars_test.tgz, car_devkit.tgz '
                                    'and cars_test_annos_withlabels.mat.')),
    'sop': TfdsSpec('stanford_online_products', label_key='class_id',
                    download_note=('tfds downloads Stanford_Online_Products.zip over FTP from '
                                   'cs.stanford.edu; where FTP is blocked, prepare it on another machine '
                                   'and copy DIR/stanford_online_products.')),
}
RESIZE_RATIO = 256 / 224  # shorter side : crop side


def preparation_message(name: str, data_dir: str | None, *, prepared_in_other_format: bool) -> str:
  """How to prepare tfds dataset `name` so that `tfds.data_source` can read it."""
  spec = TFDS_SPECS[name]
  where = data_dir or '~/tensorflow_datasets (the tfds default)'
  target = data_dir or '~/tensorflow_datasets'
  if prepared_in_other_format:
    problem = (f'tfds dataset {spec.tfds_name!r} is prepared in {where} in a file format '
               f'tfds.data_source cannot read (jaxcert needs array_record). Convert it:\n'
               f'  tfds convert_format --dataset_dir {target}/{spec.tfds_name} '
               f'--out_file_format array_record\n'
               f'or rebuild it:')
  else:
    problem = (f'tfds dataset {spec.tfds_name!r} (data.name={name!r}) is not prepared in {where}. '
               f'Prepare it once:')
  return (f'{problem}\n  pip install -e ".[tfds]"   # TensorFlow, needed to prepare, not to read\n'
          f'  tfds build {spec.tfds_name} --data_dir {target} --file_format=array_record\n'
          f'then pass --config.data.data_dir={target}. {spec.download_note}').rstrip()


def open_data_source(name: str, split: str, data_dir: str | None, decoders=None):
  """`tfds.data_source` of `TFDS_SPECS[name]`, or FileNotFoundError saying how to prepare it."""
  tfds_name = TFDS_SPECS[name].tfds_name
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  try:
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False, decoders=decoders)
  # KeyError: tfds knows the dataset (bundled metadata) but finds no generated splits.
  except (NotImplementedError, AssertionError, FileNotFoundError, ValueError, KeyError) as error:
    prepared = tfds.builder(tfds_name, data_dir=data_dir).is_prepared()
    raise FileNotFoundError(preparation_message(name, data_dir, prepared_in_other_format=prepared)) from error


def _skip_image_decoding(name: str, data_dir: str | None, keep: tuple[str, ...] = ()) -> dict:
  """tfds decoders that leave every Image feature except `keep` as encoded bytes."""
  features = tfds.builder(TFDS_SPECS[name].tfds_name, data_dir=data_dir).info.features
  return {key: tfds.decode.SkipDecoding() for key, feature in features.items()
          if isinstance(feature, tfds.features.Image) and key not in keep}


def read_labels(source, label_key: str) -> np.ndarray:
  """(N,) int32 labels of every record of a data source."""
  return np.array([source[i][label_key] for i in range(len(source))], np.int32)


def as_nhwc_uint8(image: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
  """A decoded tfds image as (H, W, C) uint8 with the expected shape (grayscale gains its axis)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape != image_shape or image.dtype != np.uint8:
    raise ValueError(f'Expected a {image_shape} uint8 image, got {image.dtype} of shape {image.shape}.')
  return image


def load_tfds_in_memory(name: str, data_dir: str | None) -> core.Dataset:
  """mnist, fashion_mnist or cifar10: tfds's train and test splits decoded into uint8 arrays."""
  spec = TFDS_SPECS[name]
  splits = []
  for split in ('train', 'test'):
    source = open_data_source(name, split, data_dir)
    pixels = np.empty((len(source), *spec.image_shape), np.uint8)
    labels = np.empty(len(source), np.int32)
    for i in range(len(source)):
      record = source[i]
      pixels[i], labels[i] = as_nhwc_uint8(record['image'], spec.image_shape), record[spec.label_key]
    splits.append(core.Split(core.Uint8Images(pixels), labels))
  return core.make_dataset(name, *splits)


def resize_and_centre_crop(image: np.ndarray, image_size: int) -> np.ndarray:
  """Shorter side to `round(image_size * 256 / 224)` (bilinear, antialiased), centre crop, to [0, 1].

  Args:
    image: (H, W, 3) or (H, W, 1) or (H, W) uint8.
    image_size: side of the square output.

  Returns:
    (image_size, image_size, 3) float32 in [0, 1].
  """
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  picture = PIL.Image.fromarray(image).convert('RGB')
  width, height = picture.size
  resize_side = max(image_size, round(image_size * RESIZE_RATIO))
  scale = resize_side / min(width, height)
  new_width, new_height = max(image_size, round(width * scale)), max(image_size, round(height * scale))
  picture = picture.resize((new_width, new_height), PIL.Image.Resampling.BILINEAR)
  left, top = (new_width - image_size) // 2, (new_height - image_size) // 2
  picture = picture.crop((left, top, left + image_size, top + image_size))
  return np.divide(np.asarray(picture), 255.0, dtype=np.float32)


class DecodedImages(core.LazyImages):
  """Images of records `record_ids` of a tfds data source, decoded and cropped when indexed.

  `images[idx]` decodes `len(idx)` images on `num_threads` threads (PIL releases the GIL while
  decoding and resizing); only labels stay in memory.
  """

  def __init__(self, source, record_ids: np.ndarray, image_size: int, num_threads: int = 8):
    super().__init__(len(record_ids), (image_size, image_size, 3))
    self.source, self.record_ids = source, np.asarray(record_ids, np.int64)
    self.image_size, self.num_threads = image_size, max(1, int(num_threads))

  def _read_one(self, record_id: int) -> np.ndarray:
    return resize_and_centre_crop(self.source[int(record_id)]['image'], self.image_size)

  def _read(self, indices: np.ndarray) -> np.ndarray:
    images = np.empty((len(indices), *self._image_shape), np.float32)
    with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
      for row, image in enumerate(pool.map(self._read_one, self.record_ids[indices])):
        images[row] = image
    return images


def load_tfds_metric_learning(name: str, data_dir: str | None, image_size: int,
                              num_threads: int = 8) -> core.Dataset:
  """cub, cars or sop: class-disjoint train/test splits with lazily decoded (S, S, 3) images.

  Labels are read once with image decoding skipped; images are decoded when indexed.

  Args:
    name: 'cub', 'cars' or 'sop'.
    data_dir: tfds data directory (None: the tfds default).
    image_size: S, the side of the centre crop (RetrievalGuard: 224).
    num_threads: decoding threads per batch.
  """
  spec = TFDS_SPECS[name]
  data_dir = os.path.expanduser(data_dir) if data_dir else None

  def source_and_labels(tfds_split):
    label_source = open_data_source(name, tfds_split, data_dir, _skip_image_decoding(name, data_dir))
    image_source = open_data_source(name, tfds_split, data_dir,
                                    _skip_image_decoding(name, data_dir, keep=('image',)))
    return image_source, read_labels(label_source, spec.label_key)

  if spec.first_test_class is None:
    (train_source, train_labels), (test_source, test_labels) = map(source_and_labels, ('train', 'test'))
    train_ids, test_ids = np.arange(len(train_labels)), np.arange(len(test_labels))
  else:
    train_source, labels = source_and_labels('train+test')
    test_source, is_test = train_source, labels >= spec.first_test_class
    train_ids, test_ids = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    train_labels, test_labels = labels[train_ids], labels[test_ids]
  train = core.Split(DecodedImages(train_source, train_ids, image_size, num_threads), train_labels)
  test = core.Split(DecodedImages(test_source, test_ids, image_size, num_threads), test_labels)
  return core.make_dataset(name, train, test)
