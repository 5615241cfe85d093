"""Kakizaki et al. TBT+FCTB (Eq. 21, TBT fine-tuned on the candidates), Fashion-MNIST, Small CNN (configs/kakizaki.py).

  # First train runs/fmnist_small_tbt with configs/fmnist_small_tbt.py (config.init_from).
  python train.py --config configs/fmnist_small_fctb.py --workdir runs/fmnist_small_fctb \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_small_fctb.py --config.checkpoint=runs/fmnist_small_fctb \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('fmnist', 'small', 'fctb', variant)
