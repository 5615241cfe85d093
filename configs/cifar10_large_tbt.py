"""Seed 001 TBT (Eq. 20) on CIFAR-10, Large CNN (configs/seed001.py).

  python train.py --config configs/cifar10_large_tbt.py --workdir runs/cifar10_large_tbt
  python certify.py --config configs/cifar10_large_tbt.py --config.checkpoint=runs/cifar10_large_tbt
"""

from configs import seed001


def get_config(variant=''):
  return seed001.get_config('cifar10', 'large', 'tbt', variant)
