"""Seed 001 TBT (Eq. 20) on Fashion-MNIST, Large CNN (configs/seed001.py).

  python train.py --config configs/fmnist_large_tbt.py --workdir runs/fmnist_large_tbt \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_large_tbt.py --config.checkpoint=runs/fmnist_large_tbt \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
"""

from configs import seed001


def get_config(variant=''):
  return seed001.get_config('fmnist', 'large', 'tbt', variant)
