"""Seed 001 Triplet baseline on CIFAR-10, Small CNN (configs/seed001.py).

  python train.py --config configs/cifar10_small_triplet.py --workdir runs/cifar10_small_triplet
  python certify.py --config configs/cifar10_small_triplet.py --config.checkpoint=runs/cifar10_small_triplet
"""

from configs import seed001


def get_config(variant=''):
  return seed001.get_config('cifar10', 'small', 'triplet', variant)
