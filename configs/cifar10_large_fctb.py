"""Kakizaki et al. TBT+FCTB (Eq. 21, TBT fine-tuned on the candidates), CIFAR-10, Large CNN (configs/kakizaki.py).

  # First train runs/cifar10_large_tbt with configs/cifar10_large_tbt.py (config.init_from).
  python train.py --config configs/cifar10_large_fctb.py --workdir runs/cifar10_large_fctb
  python certify.py --config configs/cifar10_large_fctb.py --config.checkpoint=runs/cifar10_large_fctb
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('cifar10', 'large', 'fctb', variant)
