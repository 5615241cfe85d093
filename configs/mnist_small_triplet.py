"""Kakizaki et al. Triplet baseline on MNIST, Small CNN (configs/kakizaki.py).

  python train.py --config configs/mnist_small_triplet.py --workdir runs/mnist_small_triplet \
      --config.data.name=idx --config.data.data_dir=data/mnist
  python certify.py --config configs/mnist_small_triplet.py --config.checkpoint=runs/mnist_small_triplet \
      --config.data.name=idx --config.data.data_dir=data/mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('mnist', 'small', 'triplet', variant)
