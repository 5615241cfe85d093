"""Kakizaki et al. C-IBP baseline (IBP-trained classifier head), Fashion-MNIST, Large CNN (configs/kakizaki.py).

  python train.py --config configs/fmnist_large_cibp.py --workdir runs/fmnist_large_cibp \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_large_cibp.py --config.checkpoint=runs/fmnist_large_cibp \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('fmnist', 'large', 'cibp', variant)
