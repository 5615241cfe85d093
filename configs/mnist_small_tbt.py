"""Kakizaki et al. TBT (Eq. 20) on MNIST, Small CNN (configs/kakizaki.py).

  python train.py --config configs/mnist_small_tbt.py --workdir runs/mnist_small_tbt \
      --config.data.name=idx --config.data.data_dir=data/mnist
  python certify.py --config configs/mnist_small_tbt.py --config.checkpoint=runs/mnist_small_tbt \
      --config.data.name=idx --config.data.data_dir=data/mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('mnist', 'small', 'tbt', variant)
