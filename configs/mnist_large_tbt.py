"""Seed 001 TBT (Eq. 20) on MNIST, Large CNN (configs/seed001.py).

  python train.py --config configs/mnist_large_tbt.py --workdir runs/mnist_large_tbt \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
  python certify.py --config configs/mnist_large_tbt.py --config.checkpoint=runs/mnist_large_tbt \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
"""

from configs import seed001


def get_config(variant=''):
  return seed001.get_config('mnist', 'large', 'tbt', variant)
