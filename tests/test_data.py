"""jaxcert.data: embedded sample, IDX reader, tfds loaders (offline), synthetic data, samplers."""

import gzip
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxcert import data
from jaxcert.data import core
from jaxcert.data import embedded
from jaxcert.data import idx
from jaxcert.data import synthetic
from jaxcert.data import tfds_datasets

DEBIAN_DIR = embedded.DEBIAN_FASHION_MNIST_DIR
needs_debian_files = pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN_DIR, 'train-images-idx3-ubyte.gz')),
    reason='Debian package dataset-fashion-mnist is not installed')


# Embedded sample.

def test_embedded_sample_shapes_balance_and_range():
  dataset = data.load_dataset(data.default_data_config())
  assert dataset.name == 'embedded' and dataset.num_classes == 10
  for split, size in ((dataset.train, 6000), (dataset.test, 2000)):
    assert split.images.shape == (size, 28, 28, 1) and split.images.dtype == np.float32
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(split.labels), [size // 10] * 10)
    pixels = np.asarray(split.images)
    assert pixels.dtype == np.float32 and pixels.min() == 0.0 and pixels.max() == 1.0
    # Real images, not noise: every image has background (0) and a visible article.
    assert (pixels.reshape(size, -1).max(axis=1) > 0.5).all()


def test_embedded_sample_is_deterministic_and_indexes_the_source_files():
  first, second = data.load_dataset({'name': 'embedded'}), data.load_dataset({'name': 'embedded'})
  np.testing.assert_array_equal(np.asarray(first.train.images), np.asarray(second.train.images))
  arrays = embedded.read_embedded_arrays()
  for split, num_source in (('train', 60000), ('test', 10000)):
    source_indices = arrays[f'{split}_source_indices']
    assert np.all(np.diff(source_indices) > 0) and source_indices[-1] < num_source


@needs_debian_files
def test_embedded_sample_regenerates_from_debian_files():
  regenerated = embedded.make_embedded_sample(DEBIAN_DIR)
  shipped = embedded.read_embedded_arrays()
  assert set(regenerated) == set(shipped)
  for key in shipped:
    np.testing.assert_array_equal(regenerated[key], shipped[key], err_msg=key)
  images, labels = idx.read_idx_split(DEBIAN_DIR, 'test')
  np.testing.assert_array_equal(images[shipped['test_source_indices']], shipped['test_images'])
  np.testing.assert_array_equal(labels[shipped['test_source_indices']], shipped['test_labels'])


# IDX reader.

def write_idx(path, array, magic):
  payload = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  payload += array.astype(np.uint8).tobytes()
  with (gzip.open if str(path).endswith('.gz') else open)(path, 'wb') as f:
    f.write(payload)


def write_idx_directory(directory, rng, *, compressed, dotted_names=False):
  arrays = {}
  for split, prefix, num in (('train', 'train', 30), ('test', 't10k', 12)):
    images = rng.integers(0, 256, (num, 5, 7), dtype=np.uint8)
    labels = rng.integers(0, 4, num, dtype=np.uint8)
    suffix = '.gz' if compressed else ''
    sep = '.' if dotted_names else '-'
    write_idx(directory / f'{prefix}-images{sep}idx3-ubyte{suffix}', images, idx.IMAGES_MAGIC)
    write_idx(directory / f'{prefix}-labels{sep}idx1-ubyte{suffix}', labels, idx.LABELS_MAGIC)
    arrays[split] = (images, labels)
  return arrays


@pytest.mark.parametrize('compressed,dotted_names', [(True, False), (False, False), (False, True)])
def test_idx_reader_round_trip(tmp_path, compressed, dotted_names):
  arrays = write_idx_directory(tmp_path, np.random.default_rng(1), compressed=compressed,
                               dotted_names=dotted_names)
  dataset = data.load_dataset({'name': 'idx', 'data_dir': str(tmp_path)})
  for split, (images, labels) in zip((dataset.train, dataset.test), (arrays['train'], arrays['test'])):
    np.testing.assert_array_equal(np.asarray(split.images), images[..., None] / np.float32(255))
    np.testing.assert_array_equal(split.labels, labels)
  assert dataset.num_classes == len(np.union1d(arrays['train'][1], arrays['test'][1]))


@needs_debian_files
def test_idx_reader_on_debian_fashion_mnist():
  dataset = data.load_idx_directory(DEBIAN_DIR)
  assert dataset.train.images.shape == (60000, 28, 28, 1) and dataset.test.images.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(dataset.train.labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(dataset.test.labels), [1000] * 10)


def test_idx_bad_magic_and_truncated_files(tmp_path):
  write_idx_directory(tmp_path, np.random.default_rng(2), compressed=False)
  # A label file where an image file should be.
  write_idx(tmp_path / 'train-images-idx3-ubyte', np.zeros(30, np.uint8), idx.LABELS_MAGIC)
  with pytest.raises(ValueError, match='magic number 0x00000801, expected 0x00000803'):
    data.load_idx_directory(str(tmp_path))
  write_idx_directory(tmp_path, np.random.default_rng(2), compressed=False)
  path = tmp_path / 't10k-labels-idx1-ubyte'
  path.write_bytes(path.read_bytes()[:-3])
  with pytest.raises(ValueError, match='truncated'):
    data.load_idx_directory(str(tmp_path))


def test_idx_missing_directory_says_what_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist') as error:
    data.load_dataset({'name': 'idx', 'data_dir': str(tmp_path / 'nowhere')})
  assert 'train-images-idx3-ubyte' in str(error.value) and 't10k-labels-idx1-ubyte' in str(error.value)
  with pytest.raises(FileNotFoundError, match='data_dir'):
    data.load_dataset({'name': 'idx'})


# Containers.

def test_lazy_images_indexing():
  pixels = np.arange(5 * 2 * 2 * 1, dtype=np.uint8).reshape(5, 2, 2, 1)
  images = data.Uint8Images(pixels)
  expected = pixels / np.float32(255)
  assert len(images) == 5 and images.shape == (5, 2, 2, 1) and images.dtype == np.float32
  np.testing.assert_array_equal(images[3], expected[3])
  np.testing.assert_array_equal(images[-1], expected[-1])
  np.testing.assert_array_equal(images[np.array(2)], expected[2])
  np.testing.assert_array_equal(images[1:4], expected[1:4])
  np.testing.assert_array_equal(images[np.array([4, 0, 4])], expected[[4, 0, 4]])
  np.testing.assert_array_equal(images[[True, False, True, False, False]], expected[[0, 2]])
  np.testing.assert_array_equal(np.asarray(images), expected)
  assert images[np.array([], np.int64)].shape == (0, 2, 2, 1)
  with pytest.raises(IndexError):
    images[np.array([5])]
  with pytest.raises(TypeError, match='first'):
    images[0, 0]


def test_make_dataset_rejects_pixels_outside_unit_range():
  good = core.Split(np.zeros((3, 2, 2, 1), np.float32), np.zeros(3, np.int32))
  bad = core.Split(np.full((3, 2, 2, 1), 255.0, np.float32), np.zeros(3, np.int32))
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    core.make_dataset('x', good, bad)
  with pytest.raises(ValueError, match='float32'):
    core.make_dataset('x', good, core.Split(np.zeros((3, 2, 2, 1), np.uint8), np.zeros(3)))


def test_num_test_classes_keeps_the_first_test_classes():
  full = data.load_dataset({'name': 'embedded'})
  dataset = data.load_dataset({'name': 'embedded', 'num_test_classes': 3})
  keep = np.flatnonzero(full.test.labels < 3)
  np.testing.assert_array_equal(dataset.test.labels, full.test.labels[keep])
  np.testing.assert_array_equal(np.asarray(dataset.test.images), np.asarray(full.test.images)[keep])
  assert len(dataset.test.labels) == 600 and len(dataset.train.labels) == 6000
  with pytest.raises(ValueError, match='num_test_classes=11'):
    data.load_dataset({'name': 'embedded', 'num_test_classes': 11})


# Configuration errors.

def test_unknown_name_and_field_list_the_valid_ones():
  with pytest.raises(ValueError, match="'embedded'.*'synthetic'"):
    data.load_dataset({'name': 'imagenet9'})
  with pytest.raises(ValueError, match='image_size'):
    data.load_dataset({'name': 'embedded', 'imagesize': 28})
  with pytest.raises(ValueError, match='28x28'):
    data.load_dataset({'name': 'embedded', 'image_size': 32})
  assert set(data.DATASET_NAMES) == {'embedded', 'idx', 'mnist', 'fashion_mnist', 'cifar10', 'cub',
                                     'cars', 'sop', 'synthetic'}


# Synthetic two-Gaussian data (Panum et al. App. E).

def test_synthetic_two_gaussians_statistics_and_determinism():
  config = data.default_data_config()
  config.name = 'synthetic'
  dataset = data.load_dataset(config)
  assert dataset.train.images.shape == (508, 28, 28, 1) and dataset.test.images.shape == (516, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(dataset.train.labels), [254, 254])
  np.testing.assert_array_equal(np.bincount(dataset.test.labels), [258, 258])
  images = np.asarray(dataset.train.images)
  assert images.min() >= 0.0 and images.max() <= 1.0
  for label, mean in enumerate(synthetic.CLASS_MEANS):
    pixels = images[dataset.train.labels == label]
    assert abs(pixels.mean() - mean) < 1e-3
    assert abs(pixels.std() - synthetic.SIGMA) < 1e-3
  # The same index gives the same image whatever batch it is read in, and on every load.
  again = data.load_dataset(config)
  np.testing.assert_array_equal(again.train.images[np.array([7, 3])], images[[7, 3]])
  np.testing.assert_array_equal(again.train.images[3], images[3])
  other_seed = data.load_dataset({'name': 'synthetic', 'seed': 1})
  assert not np.array_equal(np.asarray(other_seed.train.images[:4]), images[:4])


def test_synthetic_paper_size_is_lazy():
  dataset = synthetic.two_gaussians()  # the paper's 3 x 224 x 224, 508 / 516
  assert dataset.train.images.shape == (508, 224, 224, 3)
  batch = dataset.test.images[np.array([0, 515])]
  assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.float32


# Samplers.

def test_query_candidate_split_disjoint_sizes_and_seeded():
  query, candidate = data.query_candidate_split(2000, num_queries=1000, num_candidates=1000, seed=0)
  assert len(query) == len(np.unique(query)) == 1000 and len(candidate) == len(np.unique(candidate)) == 1000
  assert not np.intersect1d(query, candidate).size
  assert query.min() >= 0 and max(query.max(), candidate.max()) < 2000
  again = data.query_candidate_split(2000, seed=0)
  np.testing.assert_array_equal(query, again[0])
  assert not np.array_equal(query, data.query_candidate_split(2000, seed=1)[0])
  with pytest.raises(ValueError, match='exceeds'):
    data.query_candidate_split(1500)


def test_m_per_class_batch_is_balanced_and_a_pure_function_of_seed_and_step():
  labels = np.repeat(np.arange(12), [5] * 11 + [3])  # class 11 has only 3 examples
  seen = set()
  for step in range(50):
    batch = data.m_per_class_batch(labels, batch_size=20, m=4, seed=3, step=step)
    assert batch.shape == (20,) and len(np.unique(batch)) == 20
    classes, counts = np.unique(labels[batch], return_counts=True)
    assert len(classes) == 5 and (counts == 4).all() and 11 not in classes
    again = data.m_per_class_batch(labels, batch_size=20, m=4, seed=3, step=step)
    np.testing.assert_array_equal(batch, again)
    seen.update(classes.tolist())
  assert seen == set(range(11))
  assert not np.array_equal(data.m_per_class_batch(labels, batch_size=20, m=4, seed=3, step=0),
                            data.m_per_class_batch(labels, batch_size=20, m=4, seed=3, step=1))
  with pytest.raises(ValueError, match='multiple of m'):
    data.m_per_class_batch(labels, batch_size=10, m=4, seed=0, step=0)
  with pytest.raises(ValueError, match='needs 12 classes'):
    data.m_per_class_batch(labels, batch_size=48, m=4, seed=0, step=0)


def test_epoch_batch_covers_every_example_each_epoch():
  num_examples, batch_size = 23, 5  # 5 steps per epoch, the last wraps around
  for epoch in range(3):
    batches = [data.epoch_batch(num_examples, batch_size=batch_size, seed=0, step=epoch * 5 + b)
               for b in range(5)]
    assert all(b.shape == (5,) and len(np.unique(b)) == 5 for b in batches)
    assert set(np.concatenate(batches).tolist()) == set(range(num_examples))
  np.testing.assert_array_equal(data.epoch_batch(23, batch_size=5, seed=0, step=7),
                                data.epoch_batch(23, batch_size=5, seed=0, step=7))
  assert not np.array_equal(data.epoch_batch(23, batch_size=5, seed=0, step=0),
                            data.epoch_batch(23, batch_size=5, seed=0, step=5))
  with pytest.raises(ValueError, match='batch_size'):
    data.epoch_batch(4, batch_size=5, seed=0, step=0)


def test_sample_triplets_respect_labels():
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])  # class 2 has a single example
  anchor, positive, negative = data.sample_triplets(labels, 2000, seed=0)
  assert (labels[anchor] == labels[positive]).all() and (anchor != positive).all()
  assert (labels[anchor] != labels[negative]).all() and 2 not in labels[anchor]
  assert set(negative.tolist()) == set(range(10))  # every example serves as a negative
  np.testing.assert_array_equal(anchor, data.sample_triplets(labels, 2000, seed=0)[0])
  with pytest.raises(ValueError, match='two classes'):
    data.sample_triplets(np.zeros(5, np.int32), 3, seed=0)


# tfds loaders, offline: tfds.testing.mock_data replaces the prepared files, no TensorFlow needed.

FAKE_LABELS = np.array([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 97, 98, 99, 100, 120, 140, 160, 180, 190, 195,
                        198, 199])  # records 0-11 form tfds's train split, 12-21 its test split


def fake_image(record):
  return np.random.default_rng(record).integers(0, 256, (40 + record, 50 - record, 3), dtype=np.uint8)


def fake_tfds_source(builder, split, decoders=None, deserialize_method=None, **kwargs):
  """Records shaped like tfds.data_source output: variable-size uint8 images, integer labels.

  Like tfds, an image feature given `tfds.decode.SkipDecoding()` comes back as encoded bytes.
  """
  del deserialize_method, kwargs
  label_key = 'class_id' if builder.name == 'stanford_online_products' else 'label'
  first_record = {'train': 0, 'test': 12, 'train+test': 0}[split]
  num_records = {'train': 12, 'test': 10, 'train+test': 22}[split]
  skip_image = isinstance((decoders or {}).get('image'), tfds.decode.SkipDecoding)
  records = []
  for record in range(first_record, first_record + num_records):
    image = b'encoded' if skip_image else fake_image(record)
    records.append({'image': image, label_key: FAKE_LABELS[record]})
  return records


@pytest.mark.parametrize('name,first_test_label', [('cub', 100), ('cars', 98), ('sop', None)])
def test_tfds_metric_learning_sets_offline(name, first_test_label):
  with tfds.testing.mock_data(as_data_source_fn=fake_tfds_source):
    dataset = data.load_dataset({'name': name, 'image_size': 16, 'data_dir': '/not/used/by/the/mock'})
  records = np.arange(len(FAKE_LABELS))
  if first_test_label is None:  # sop keeps tfds's own splits
    train_records, test_records = records[:12], records[12:]
  else:  # classes 1-100 / 101-200 (cub), 1-98 / 99-196 (cars), labels counted from 0
    is_test = FAKE_LABELS >= first_test_label
    train_records, test_records = records[~is_test], records[is_test]
  np.testing.assert_array_equal(dataset.train.labels, FAKE_LABELS[train_records])
  np.testing.assert_array_equal(dataset.test.labels, FAKE_LABELS[test_records])
  assert dataset.num_classes == 22
  for split, split_records in ((dataset.train, train_records), (dataset.test, test_records)):
    np.testing.assert_array_equal(split.images[-1],
                                  tfds_datasets.resize_and_centre_crop(fake_image(split_records[-1]), 16))
  batch = dataset.test.images[np.array([1, 0])]
  assert batch.shape == (2, 16, 16, 3) and batch.dtype == np.float32
  assert 0.0 <= batch.min() and batch.max() <= 1.0
  np.testing.assert_array_equal(batch[1], dataset.test.images[0])


@pytest.mark.parametrize('name,shape', [('mnist', (28, 28, 1)), ('fashion_mnist', (28, 28, 1)),
                                        ('cifar10', (32, 32, 3))])
def test_tfds_small_sets_offline(name, shape):
  with tfds.testing.mock_data(num_examples=6):
    dataset = data.load_dataset({'name': name})
  assert dataset.train.images.shape == (6, *shape) and dataset.test.images.shape == (6, *shape)
  assert dataset.train.labels.dtype == np.int32 and dataset.train.labels.max() < 10
  pixels = np.asarray(dataset.train.images)
  assert pixels.min() >= 0.0 and pixels.max() <= 1.0 and pixels.max() > 0.5


@pytest.mark.parametrize('name,tfds_name', [('cub', 'caltech_birds2011'), ('mnist', 'mnist')])
def test_tfds_not_prepared_says_how_to_prepare(tmp_path, name, tfds_name):
  with pytest.raises(FileNotFoundError, match=f'tfds build {tfds_name} --data_dir') as error:
    data.load_dataset({'name': name, 'data_dir': str(tmp_path)})
  assert 'array_record' in str(error.value) and '.[tfds]' in str(error.value)


def test_tfds_default_data_dir_not_prepared_says_how_to_prepare(tmp_path, monkeypatch):
  # No data_dir: tfds looks in ~/tensorflow_datasets, where it finds metadata but no splits.
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.delenv('TFDS_DATA_DIR', raising=False)
  with pytest.raises(FileNotFoundError, match='tfds build fashion_mnist'):
    data.load_dataset({'name': 'fashion_mnist'})


def test_resize_and_centre_crop_keeps_the_centre():
  image = np.zeros((300, 400, 3), np.uint8)
  image[100:200, 150:250] = 200  # a centred square, a third of the height
  crop = tfds_datasets.resize_and_centre_crop(image, 224)
  assert crop.shape == (224, 224, 3) and crop.dtype == np.float32
  np.testing.assert_allclose(crop[112, 112], 200 / 255, atol=1e-6)
  np.testing.assert_allclose(crop[5, 5], 0.0)
  gray = tfds_datasets.resize_and_centre_crop(np.full((30, 20, 1), 51, np.uint8), 16)
  np.testing.assert_allclose(gray, 0.2, atol=1e-6)
  assert gray.shape == (16, 16, 3)
