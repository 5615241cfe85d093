"""Seed 001 C-IBP baseline (IBP-trained classifier head), CIFAR-10, Small CNN (configs/seed001.py).

  python train.py --config configs/cifar10_small_cibp.py --workdir runs/cifar10_small_cibp
  python certify.py --config configs/cifar10_small_cibp.py --config.checkpoint=runs/cifar10_small_cibp
"""

from configs import seed001


def get_config(variant=''):
  return seed001.get_config('cifar10', 'small', 'cibp', variant)
