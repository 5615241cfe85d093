"""Kakizaki et al. Triplet baseline on CIFAR-10, Small CNN (configs/kakizaki.py).

  python train.py --config configs/cifar10_small_triplet.py --workdir runs/cifar10_small_triplet
  python certify.py --config configs/cifar10_small_triplet.py --config.checkpoint=runs/cifar10_small_triplet
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('cifar10', 'small', 'triplet', variant)
