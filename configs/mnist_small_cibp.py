"""Kakizaki et al. C-IBP baseline (IBP-trained classifier head), MNIST, Small CNN (configs/kakizaki.py).

  python train.py --config configs/mnist_small_cibp.py --workdir runs/mnist_small_cibp \
      --config.data.name=idx --config.data.data_dir=data/mnist
  python certify.py --config configs/mnist_small_cibp.py --config.checkpoint=runs/mnist_small_cibp \
      --config.data.name=idx --config.data.data_dir=data/mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('mnist', 'small', 'cibp', variant)
