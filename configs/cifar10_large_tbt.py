"""Kakizaki et al. TBT (Eq. 20) on CIFAR-10, Large CNN (configs/kakizaki.py).

  python train.py --config configs/cifar10_large_tbt.py --workdir runs/cifar10_large_tbt
  python certify.py --config configs/cifar10_large_tbt.py --config.checkpoint=runs/cifar10_large_tbt
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('cifar10', 'large', 'tbt', variant)
