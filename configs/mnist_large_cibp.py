"""Kakizaki et al. C-IBP baseline (IBP-trained classifier head), MNIST, Large CNN (configs/kakizaki.py).

  python train.py --config configs/mnist_large_cibp.py --workdir runs/mnist_large_cibp \
      --config.data.name=idx --config.data.data_dir=data/mnist
  python certify.py --config configs/mnist_large_cibp.py --config.checkpoint=runs/mnist_large_cibp \
      --config.data.name=idx --config.data.data_dir=data/mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('mnist', 'large', 'cibp', variant)
