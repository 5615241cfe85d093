"""Seed 001 C-IBP baseline (IBP-trained classifier head), MNIST, Small CNN (configs/seed001.py).

  python train.py --config configs/mnist_small_cibp.py --workdir runs/mnist_small_cibp \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
  python certify.py --config configs/mnist_small_cibp.py --config.checkpoint=runs/mnist_small_cibp \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
"""

from configs import seed001


def get_config(variant=''):
  return seed001.get_config('mnist', 'small', 'cibp', variant)
