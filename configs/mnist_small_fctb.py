"""Kakizaki et al. TBT+FCTB (Eq. 21, TBT fine-tuned on the candidates), MNIST, Small CNN (configs/kakizaki.py).

  # First train runs/mnist_small_tbt with configs/mnist_small_tbt.py (config.init_from).
  python train.py --config configs/mnist_small_fctb.py --workdir runs/mnist_small_fctb \
      --config.data.name=idx --config.data.data_dir=data/mnist
  python certify.py --config configs/mnist_small_fctb.py --config.checkpoint=runs/mnist_small_fctb \
      --config.data.name=idx --config.data.data_dir=data/mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('mnist', 'small', 'fctb', variant)
