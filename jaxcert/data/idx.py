"""Reader for MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, ...), offline.

IDX layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian 4-byte magic number
`0x00 0x00 <type> <ndim>` (type 0x08 = unsigned byte), then `ndim` big-endian uint32 sizes, then the
data. Image files are 0x00000803 (N, rows, cols); label files are 0x00000801 (N,).

A directory holds four files, optionally gzip-compressed:
  train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte
(the `train-images.idx3-ubyte` spelling of some mirrors is accepted too).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from jaxcert.data import core

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
SPLIT_PREFIXES = {'train': 'train', 'test': 't10k'}

HOW_TO_GET_IDX_FILES = (
    'Fashion-MNIST: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu) installs them in '
    '/usr/share/datasets/fashion-mnist; or download them from '
    'https://github.com/zalandoresearch/fashion-mnist. MNIST: download the four files from '
    'http://yann.lecun.com/exdb/mnist/. Then set --config.data.name=idx '
    '--config.data.data_dir=DIR.')


def idx_file_candidates(split: str, kind: str) -> list[str]:
  """File names accepted for `split` ('train' or 'test') and `kind` ('images' or 'labels')."""
  prefix = SPLIT_PREFIXES[split]
  ndim = 3 if kind == 'images' else 1
  stems = [f'{prefix}-{kind}-idx{ndim}-ubyte', f'{prefix}-{kind}.idx{ndim}-ubyte']
  return [stem + suffix for stem in stems for suffix in ('.gz', '')]


def find_idx_file(data_dir: str, split: str, kind: str) -> str:
  """Path of the IDX file for `split` and `kind` in `data_dir`.

  Raises:
    FileNotFoundError: listing the expected names and how to get the files.
  """
  for name in idx_file_candidates(split, kind):
    path = os.path.join(data_dir, name)
    if os.path.isfile(path):
      return path
  expected = ', '.join(idx_file_candidates(s, k)[0] for s in SPLIT_PREFIXES for k in ('images', 'labels'))
  reason = 'is not a directory' if not os.path.isdir(data_dir) else f'has no {split} {kind} file'
  raise FileNotFoundError(
      f'IDX data directory {data_dir!r} {reason}. Expected the files {expected} (gzip-compressed or '
      f'not; names of the form train-images.idx3-ubyte are accepted too). {HOW_TO_GET_IDX_FILES}')


def read_idx_file(path: str, expected_magic: int) -> np.ndarray:
  """Reads one IDX file (gzip-compressed when it ends in .gz) as a uint8 array.

  Args:
    path: the file.
    expected_magic: `IMAGES_MAGIC` or `LABELS_MAGIC`.

  Returns:
    uint8 array of the shape the header gives.

  Raises:
    ValueError: wrong magic number, or a payload whose size disagrees with the header.
  """
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    raw = f.read()
  magic = int.from_bytes(raw[:4], 'big') if len(raw) >= 4 else None
  if magic != expected_magic:
    found = 'a file shorter than 4 bytes' if magic is None else f'magic number {magic:#010x}'
    kind = 'image' if expected_magic == IMAGES_MAGIC else 'label'
    raise ValueError(f'{path} is not an IDX {kind} file: found {found}, expected {expected_magic:#010x}. '
                     f'Check that the file is an uncorrupted MNIST-format {kind} file.')
  ndim = expected_magic & 0xFF
  header_size = 4 + 4 * ndim
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  payload = np.frombuffer(raw, dtype=np.uint8, offset=min(header_size, len(raw)))
  if payload.size != int(np.prod(shape)):
    raise ValueError(f'{path}: header gives shape {shape} ({int(np.prod(shape))} bytes) but the file '
                     f'holds {payload.size} bytes of data; the file is truncated or corrupt.')
  return payload.reshape(shape)


def read_idx_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Raw pixels and labels of `split` ('train' or 'test') from an IDX directory.

  Returns:
    `(images, labels)`: uint8 (N, rows, cols, 1) and uint8 (N,).
  """
  images = read_idx_file(find_idx_file(data_dir, split, 'images'), IMAGES_MAGIC)
  labels = read_idx_file(find_idx_file(data_dir, split, 'labels'), LABELS_MAGIC)
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f'{data_dir}: {split} has {images.shape[0]} images but {labels.shape[0]} labels.')
  return images[..., None], labels


def load_idx_directory(data_dir: str | None, name: str = 'idx') -> core.Dataset:
  """The train (train-*) and test (t10k-*) splits of an IDX directory, as float32 in [0, 1].

  Args:
    data_dir: directory of the four IDX files (`~` is expanded).
    name: the dataset name to record.

  Raises:
    FileNotFoundError: `data_dir` is unset, missing or lacks a file; the message says how to get them.
    ValueError: a file is not a valid IDX file.
  """
  if data_dir is None:
    raise FileNotFoundError(f'The idx dataset needs a directory: set --config.data.data_dir. '
                            f'{HOW_TO_GET_IDX_FILES}')
  data_dir = os.path.expanduser(data_dir)
  splits = {}
  for split in SPLIT_PREFIXES:
    images, labels = read_idx_split(data_dir, split)
    splits[split] = core.Split(core.Uint8Images(images), labels)
  return core.make_dataset(name, splits['train'], splits['test'])
