"""Kakizaki et al. C-IBP baseline (IBP-trained classifier head), CIFAR-10, Small CNN (configs/kakizaki.py).

  python train.py --config configs/cifar10_small_cibp.py --workdir runs/cifar10_small_cibp
  python certify.py --config configs/cifar10_small_cibp.py --config.checkpoint=runs/cifar10_small_cibp
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('cifar10', 'small', 'cibp', variant)
