"""Kakizaki et al. TBT+FCTB (Eq. 21, TBT fine-tuned on the candidates), MNIST, Large CNN (configs/kakizaki.py).

  # First train runs/mnist_large_tbt with configs/mnist_large_tbt.py (config.init_from).
  python train.py --config configs/mnist_large_fctb.py --workdir runs/mnist_large_fctb \
      --config.data.name=idx --config.data.data_dir=data/mnist
  python certify.py --config configs/mnist_large_fctb.py --config.checkpoint=runs/mnist_large_fctb \
      --config.data.name=idx --config.data.data_dir=data/mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('mnist', 'large', 'fctb', variant)
