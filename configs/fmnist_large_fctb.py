"""Seed 001 TBT+FCTB (Eq. 21, TBT fine-tuned on the candidates), Fashion-MNIST, Large CNN (configs/seed001.py).

  # First train runs/fmnist_large_tbt with configs/fmnist_large_tbt.py (config.init_from).
  python train.py --config configs/fmnist_large_fctb.py --workdir runs/fmnist_large_fctb \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_large_fctb.py --config.checkpoint=runs/fmnist_large_fctb \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
"""

from configs import seed001


def get_config(variant=''):
  return seed001.get_config('fmnist', 'large', 'fctb', variant)
