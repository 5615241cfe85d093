"""Every experiment config in configs/ builds, and names a dataset, model, loss and method that exist.

Parametrised over the files of configs/ as they are when the tests are collected, so a config added
later is covered without editing this file. The paper grids (retrievalguard.py, kakizaki.py) are builders
with arguments; their rows are built through the one-line files that call them.
"""

import importlib
import os

import pytest

from configs import default
from configs import kakizaki
from jaxcert import data
from jaxcert import losses
from jaxcert import models
from jaxcert import objectives

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRIDS = ('retrievalguard', 'kakizaki')  # builders taking the row as arguments
CONFIG_NAMES = sorted(
    name[:-3] for name in os.listdir(os.path.join(REPO, 'configs'))
    if name.endswith('.py') and name != '__init__.py' and name[:-3] not in GRIDS)


def _check_buildable(config) -> None:
  assert config.data.name in data.DATASET_NAMES
  assert config.loss.name in losses.LOSS_NAMES
  assert config.method in objectives.METHODS
  models.build_model(config.model)  # raises on an unknown model or option


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_every_config_builds(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  _check_buildable(config)
  assert config.batch_size > 0 and config.checkpoint_every_steps > 0


@pytest.mark.parametrize('row', sorted(kakizaki.REDUCED))
def test_reduced_rows_build_and_shorten_training(row):
  paper, reduced = kakizaki.get_config(*row), kakizaki.get_config(*row, 'reduced')
  _check_buildable(reduced)
  assert reduced.num_steps > 0 or reduced.num_epochs < paper.num_epochs
  assert reduced.data.name == paper.data.name and reduced.method == paper.method


def test_kakizaki_certifies_at_the_papers_eps():
  """Kakizaki et al. Table 2: eps = 0.2 (MNIST, FMNIST) and 2/255 (CIFAR-10), whatever the method."""
  for dataset, eps in (('mnist', 0.2), ('fmnist', 0.2), ('cifar10', 2 / 255)):
    for model in kakizaki.MODELS:
      for method in kakizaki.METHODS:
        assert kakizaki.get_config(dataset, model, method).ibp.eps == eps
  assert importlib.import_module('configs.cifar10_large_triplet').get_config().ibp.eps == 2 / 255


def test_kakizaki_attacks_at_the_papers_eps():
  """Kakizaki et al. Sec. 5.1.3: PGD at eps 0.1 and 0.2 (MNIST, FMNIST), 2/255 and 3/255 (CIFAR-10)."""
  for dataset, eps in (('mnist', (0.1, 0.2)), ('fmnist', (0.1, 0.2)), ('cifar10', (2 / 255, 3 / 255))):
    for model in kakizaki.MODELS:
      for method in kakizaki.METHODS:
        assert tuple(kakizaki.get_config(dataset, model, method).attack.eps) == eps
  cifar10 = importlib.import_module('configs.cifar10_small_tbt').get_config()
  assert tuple(cifar10.attack.eps) == (2 / 255, 3 / 255) and cifar10.ibp.eps == 2 / 255


def test_unknown_names_list_the_valid_ones():
  with pytest.raises(ValueError, match=r"Unknown method 'act'; valid: \['certified', 'cibp', 'fctb'"):
    kakizaki.get_config('fmnist', 'large', 'act')
  with pytest.raises(ValueError, match="Unknown variant 'tiny'; valid:"):
    kakizaki.get_config('fmnist', 'large', 'tbt', 'tiny')
  with pytest.raises(ValueError, match='Unknown reduced-budget row'):
    kakizaki.get_config('cifar10', 'large', 'tbt', 'reduced')
  assert default.choice('model', 'small', {'small': 'small_cnn'}) == 'small_cnn'


@pytest.mark.parametrize('dataset', ['fmnist', 'mnist'])
def test_certified_full_data_configs_take_epochs(dataset):
  """`configs/<dataset>_small_certified.py:<epochs>` scales the recipe's schedule with the epochs."""
  module = importlib.import_module(f'configs.{dataset}_small_certified')
  default_config, longer = module.get_config(), module.get_config('30')
  assert default_config.num_steps == 9000 and longer.num_steps == 18000
  assert (longer.certified.ramp_start_steps, longer.certified.ramp_end_steps) == (1200, 12000)
  assert tuple(longer.lr_decay_epochs) == (25.5,)
  _check_buildable(longer)
  for bad in ('0', 'thirty', '1.5'):
    with pytest.raises(ValueError, match='number of training epochs'):
      module.get_config(bad)
