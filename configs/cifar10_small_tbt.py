"""Seed 001 TBT (Eq. 20) on CIFAR-10, Small CNN (configs/seed001.py).

  python train.py --config configs/cifar10_small_tbt.py --workdir runs/cifar10_small_tbt
  python certify.py --config configs/cifar10_small_tbt.py --config.checkpoint=runs/cifar10_small_tbt
"""

from configs import seed001


def get_config(variant=''):
  return seed001.get_config('cifar10', 'small', 'tbt', variant)
