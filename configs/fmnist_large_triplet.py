"""Kakizaki et al. Triplet baseline on Fashion-MNIST, Large CNN: Adam 1e-3, batch 100, margin 1.0, 100 epochs,
learning rate x0.1 at epochs 25 and 42 (Kakizaki et al., Sec. 5.1.4); configs/kakizaki.py. At the
reduced CPU budget of results/kakizaki/README.md: configs/fmnist_large_triplet.py:reduced.

  python train.py --config configs/fmnist_large_triplet.py --workdir runs/fmnist_large_triplet

Data: tfds 'fashion_mnist' (pip install -e ".[tfds]"; tfds build fashion_mnist), or the IDX files of
Debian's dataset-fashion-mnist:
  --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('fmnist', 'large', 'triplet', variant)
