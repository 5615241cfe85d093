"""Kakizaki et al. C-IBP baseline (IBP-trained classifier head), CIFAR-10, Large CNN (configs/kakizaki.py).

  python train.py --config configs/cifar10_large_cibp.py --workdir runs/cifar10_large_cibp
  python certify.py --config configs/cifar10_large_cibp.py --config.checkpoint=runs/cifar10_large_cibp
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('cifar10', 'large', 'cibp', variant)
