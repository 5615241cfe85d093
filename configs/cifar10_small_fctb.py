"""Kakizaki et al. TBT+FCTB (Eq. 21, TBT fine-tuned on the candidates), CIFAR-10, Small CNN (configs/kakizaki.py).

  # First train runs/cifar10_small_tbt with configs/cifar10_small_tbt.py (config.init_from).
  python train.py --config configs/cifar10_small_fctb.py --workdir runs/cifar10_small_fctb
  python certify.py --config configs/cifar10_small_fctb.py --config.checkpoint=runs/cifar10_small_fctb
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('cifar10', 'small', 'fctb', variant)
