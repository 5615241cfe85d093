"""Kakizaki et al. TBT (Eq. 20) on Fashion-MNIST, Small CNN (configs/kakizaki.py).

  python train.py --config configs/fmnist_small_tbt.py --workdir runs/fmnist_small_tbt \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_small_tbt.py --config.checkpoint=runs/fmnist_small_tbt \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('fmnist', 'small', 'tbt', variant)
