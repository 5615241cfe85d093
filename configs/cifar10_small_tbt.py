"""Kakizaki et al. TBT (Eq. 20) on CIFAR-10, Small CNN (configs/kakizaki.py).

  python train.py --config configs/cifar10_small_tbt.py --workdir runs/cifar10_small_tbt
  python certify.py --config configs/cifar10_small_tbt.py --config.checkpoint=runs/cifar10_small_tbt
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('cifar10', 'small', 'tbt', variant)
