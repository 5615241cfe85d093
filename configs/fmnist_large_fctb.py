"""Kakizaki et al. TBT+FCTB (Eq. 21, TBT fine-tuned on the candidates), Fashion-MNIST, Large CNN (configs/kakizaki.py).

  # First train runs/fmnist_large_tbt with configs/fmnist_large_tbt.py (config.init_from).
  python train.py --config configs/fmnist_large_fctb.py --workdir runs/fmnist_large_fctb \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_large_fctb.py --config.checkpoint=runs/fmnist_large_fctb \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('fmnist', 'large', 'fctb', variant)
