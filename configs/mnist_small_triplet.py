"""Seed 001 Triplet baseline on MNIST, Small CNN (configs/seed001.py).

  python train.py --config configs/mnist_small_triplet.py --workdir runs/mnist_small_triplet \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
  python certify.py --config configs/mnist_small_triplet.py --config.checkpoint=runs/mnist_small_triplet \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
"""

from configs import seed001


def get_config(variant=''):
  return seed001.get_config('mnist', 'small', 'triplet', variant)
