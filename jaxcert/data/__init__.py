"""Datasets and index samplers for metric learning.

Images are NHWC float32 in [0, 1], labels int32 (docs/architecture.md). `load_dataset(config.data)`
picks a loader by `config.data.name`:
  embedded        Fashion-MNIST sample shipped in the package (default; embedded.py)
  idx             MNIST-format IDX files in `data_dir`, e.g. /usr/share/datasets/fashion-mnist (idx.py)
  mnist, fashion_mnist, cifar10, cub, cars, sop
                  TensorFlow Datasets prepared in `data_dir` (tfds_datasets.py)
  synthetic       the two-Gaussian data of Panum et al. App. E (synthetic.py)
Samplers (sampling.py) are pure functions of (seed, step): query/candidate splits, m-per-class and
epoch batches, triplets.
"""

from jaxcert.data.core import Dataset
from jaxcert.data.core import LazyImages
from jaxcert.data.core import Split
from jaxcert.data.core import Uint8Images
from jaxcert.data.idx import load_idx_directory
from jaxcert.data.loading import DATASET_NAMES
from jaxcert.data.loading import default_data_config
from jaxcert.data.loading import load_dataset
from jaxcert.data.sampling import epoch_batch
from jaxcert.data.sampling import m_per_class_batch
from jaxcert.data.sampling import query_candidate_sets
from jaxcert.data.sampling import query_candidate_split
from jaxcert.data.sampling import sample_triplets
from jaxcert.data.synthetic import two_gaussians

__all__ = [
    'DATASET_NAMES', 'Dataset', 'LazyImages', 'Split', 'Uint8Images', 'default_data_config',
    'epoch_batch', 'load_dataset', 'load_idx_directory', 'm_per_class_batch', 'query_candidate_split',
    'sample_triplets', 'two_gaussians',
]
