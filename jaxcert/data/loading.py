"""`load_dataset(data_config)`: one entry point for every dataset, picked by `data_config.name`."""

from __future__ import annotations

import ml_collections

from jaxcert.data import core
from jaxcert.data import embedded
from jaxcert.data import idx
from jaxcert.data import synthetic
from jaxcert.data import tfds_datasets

DATASET_NAMES = ('embedded', 'idx', 'mnist', 'fashion_mnist', 'cifar10', 'cub', 'cars', 'sop', 'synthetic')
_FIXED_SIZE = {'embedded': 28, 'mnist': 28, 'fashion_mnist': 28, 'cifar10': 32}
DEFAULT_METRIC_LEARNING_IMAGE_SIZE = 224  # RetrievalGuard Sec. 4.3


def default_data_config() -> ml_collections.ConfigDict:
  """Every field `load_dataset` reads, with its default.

  Fields:
    name: one of DATASET_NAMES.
    data_dir: the IDX directory ('idx') or the tfds data directory (tfds sets; None: tfds default).
    image_size: crop side of cub/cars/sop (default 224) and side of the synthetic images
      (default 28); the fixed-size sets accept only their own size or None.
    seed: seed of the synthetic data.
    synthetic_num_train, synthetic_num_test: synthetic set sizes (Panum et al. App. E: 508, 516).
    synthetic_num_channels: synthetic channels. The defaults (28x28x1) keep the synthetic set as cheap
      as the embedded one; the paper's setting is image_size=224, synthetic_num_channels=3.
    decode_threads: threads decoding a batch of cub/cars/sop images.
    num_test_classes: keep only the test examples of the first (smallest) this many test labels;
      None keeps all. RetrievalGuard Sec. 4.3 tests Online-Products (sop) on 1,000 classes.
  """
  config = ml_collections.ConfigDict()
  config.name = 'embedded'
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.image_size = ml_collections.config_dict.placeholder(int)
  config.seed = 0
  config.synthetic_num_train = synthetic.PAPER_NUM_TRAIN
  config.synthetic_num_test = synthetic.PAPER_NUM_TEST
  config.synthetic_num_channels = 1
  config.decode_threads = 8
  config.num_test_classes = ml_collections.config_dict.placeholder(int)
  return config


def _with_defaults(data_config) -> ml_collections.ConfigDict:
  """`default_data_config()` overridden by the fields of `data_config`; unknown fields are errors."""
  config = default_data_config()
  given = data_config.to_dict() if isinstance(data_config, ml_collections.ConfigDict) else dict(data_config)
  unknown = sorted(set(given) - set(config))
  if unknown:
    raise ValueError(f'Unknown data config field(s) {unknown}; valid fields: {sorted(config)}.')
  config.update(given)
  return config


def load_dataset(data_config) -> core.Dataset:
  """Loads the dataset named by `data_config.name` (see `default_data_config` for the fields).

  Args:
    data_config: an `ml_collections.ConfigDict` (or dict) with a subset of the fields of
      `default_data_config()`; missing fields take their defaults.

  Returns:
    A `Dataset` whose splits hold NHWC float32 images in [0, 1] and int32 labels.

  Raises:
    ValueError: unknown name or field (the message lists the valid ones), or an image_size the
      dataset cannot give.
    FileNotFoundError: data that is not there; the message says how to get it.
  """
  config = _with_defaults(data_config)
  dataset = _load_named(config)
  if config.num_test_classes is None:
    return dataset
  test = core.first_classes(dataset.test, config.num_test_classes, where=f'{dataset.name} test')
  return core.make_dataset(dataset.name, dataset.train, test)


def _load_named(config: ml_collections.ConfigDict) -> core.Dataset:
  name = config.name
  if name not in DATASET_NAMES:
    raise ValueError(f'Unknown dataset {name!r}; valid names: {list(DATASET_NAMES)}.')
  native_size = _FIXED_SIZE.get(name)
  if native_size is not None and config.image_size not in (None, native_size):
    raise ValueError(f'{name} images are {native_size}x{native_size}; image_size={config.image_size} '
                     f'cannot be honoured. Leave data.image_size unset.')
  if name == 'embedded':
    return embedded.load_embedded(name)
  if name == 'idx':
    dataset = idx.load_idx_directory(config.data_dir, name)
    if config.image_size not in (None, dataset.train.images.shape[1]):
      raise ValueError(f'The IDX images are {dataset.train.images.shape[1:3]}; image_size='
                       f'{config.image_size} cannot be honoured. Leave data.image_size unset.')
    return dataset
  if name == 'synthetic':
    return synthetic.two_gaussians(
        num_train=config.synthetic_num_train, num_test=config.synthetic_num_test,
        image_size=config.image_size or 28, num_channels=config.synthetic_num_channels,
        seed=config.seed, name=name)
  if name in ('cub', 'cars', 'sop'):
    return tfds_datasets.load_tfds_metric_learning(
        name, config.data_dir, config.image_size or DEFAULT_METRIC_LEARNING_IMAGE_SIZE,
        num_threads=config.decode_threads)
  return tfds_datasets.load_tfds_in_memory(name, config.data_dir)
