"""Seed 001 TBT (Eq. 20) on MNIST, Small CNN (configs/seed001.py).

  python train.py --config configs/mnist_small_tbt.py --workdir runs/mnist_small_tbt \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
  python certify.py --config configs/mnist_small_tbt.py --config.checkpoint=runs/mnist_small_tbt \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
"""

from configs import seed001


def get_config(variant=''):
  return seed001.get_config('mnist', 'small', 'tbt', variant)
