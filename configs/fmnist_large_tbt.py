"""Kakizaki et al. TBT (Eq. 20) on Fashion-MNIST, Large CNN (configs/kakizaki.py).

  python train.py --config configs/fmnist_large_tbt.py --workdir runs/fmnist_large_tbt \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_large_tbt.py --config.checkpoint=runs/fmnist_large_tbt \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('fmnist', 'large', 'tbt', variant)
