"""Kakizaki et al. TBT (Eq. 20) on MNIST, Large CNN (configs/kakizaki.py).

  python train.py --config configs/mnist_large_tbt.py --workdir runs/mnist_large_tbt \
      --config.data.name=idx --config.data.data_dir=data/mnist
  python certify.py --config configs/mnist_large_tbt.py --config.checkpoint=runs/mnist_large_tbt \
      --config.data.name=idx --config.data.data_dir=data/mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('mnist', 'large', 'tbt', variant)
