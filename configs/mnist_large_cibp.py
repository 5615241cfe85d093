"""Seed 001 C-IBP baseline (IBP-trained classifier head), MNIST, Large CNN (configs/seed001.py).

  python train.py --config configs/mnist_large_cibp.py --workdir runs/mnist_large_cibp \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
  python certify.py --config configs/mnist_large_cibp.py --config.checkpoint=runs/mnist_large_cibp \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
"""

from configs import seed001


def get_config(variant=''):
  return seed001.get_config('mnist', 'large', 'cibp', variant)
