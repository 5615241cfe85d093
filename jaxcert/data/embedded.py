"""The Fashion-MNIST sample shipped inside the package: the default dataset, no download needed.

6000 training images (600 per class) and 2000 test images (200 per class), a class-balanced random
subset of Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; Zalando Research, MIT licence), drawn
with a fixed seed by `make_embedded_sample` from the IDX files of Debian's dataset-fashion-mnist
package. See jaxcert/data/embedded/README.md; regenerate with scripts/make_embedded_sample.py.
"""

from __future__ import annotations

import importlib.resources

import numpy as np

from jaxcert.data import core
from jaxcert.data import idx
from jaxcert.data import sampling

EMBEDDED_SAMPLE_FILE = 'fashion_mnist_sample.npz'
DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 200
SAMPLE_SEED = 0
FASHION_MNIST_CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                             'Sneaker', 'Bag', 'Ankle boot')


def make_embedded_sample(source_dir: str = DEBIAN_FASHION_MNIST_DIR, *,
                         train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS,
                         seed: int = SAMPLE_SEED) -> dict[str, np.ndarray]:
  """Draws the class-balanced sample from a Fashion-MNIST IDX directory.

  The train subset is `sampling.balanced_subset(train_labels, train_per_class, seed)` and the test
  subset the same with `seed + 1`; both keep the original order of the files.

  Returns:
    The arrays stored in the npz: `{split}_images` uint8 (N, 28, 28, 1), `{split}_labels` uint8 (N,),
    `{split}_source_indices` int32 (N,) (positions in the original train-/t10k- files), and `seed`.
  """
  arrays = {'seed': np.int64(seed)}
  for split, per_class, split_seed in (('train', train_per_class, seed), ('test', test_per_class, seed + 1)):
    images, labels = idx.read_idx_split(source_dir, split)
    chosen = sampling.balanced_subset(labels, per_class, split_seed)
    arrays[f'{split}_images'] = np.ascontiguousarray(images[chosen])
    arrays[f'{split}_labels'] = labels[chosen]
    arrays[f'{split}_source_indices'] = chosen.astype(np.int32)
  return arrays


def read_embedded_arrays() -> dict[str, np.ndarray]:
  """The arrays of the shipped npz (see `make_embedded_sample` for the keys)."""
  resource = importlib.resources.files('jaxcert.data').joinpath('embedded', EMBEDDED_SAMPLE_FILE)
  with resource.open('rb') as f, np.load(f) as npz:
    return {key: npz[key] for key in npz.files}


def load_embedded(name: str = 'embedded') -> core.Dataset:
  """The shipped Fashion-MNIST sample: 6000 train / 2000 test images, (28, 28, 1), 10 classes."""
  arrays = read_embedded_arrays()
  splits = [core.Split(core.Uint8Images(arrays[f'{split}_images']), arrays[f'{split}_labels'])
            for split in ('train', 'test')]
  return core.make_dataset(name, *splits)
