"""Kakizaki et al. Triplet baseline on Fashion-MNIST, Small CNN (configs/kakizaki.py).

  python train.py --config configs/fmnist_small_triplet.py --workdir runs/fmnist_small_triplet \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_small_triplet.py --config.checkpoint=runs/fmnist_small_triplet \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('fmnist', 'small', 'triplet', variant)
