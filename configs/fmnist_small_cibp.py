"""Kakizaki et al. C-IBP baseline (IBP-trained classifier head), Fashion-MNIST, Small CNN (configs/kakizaki.py).

  python train.py --config configs/fmnist_small_cibp.py --workdir runs/fmnist_small_cibp \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_small_cibp.py --config.checkpoint=runs/fmnist_small_cibp \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('fmnist', 'small', 'cibp', variant)
