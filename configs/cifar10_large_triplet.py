"""Kakizaki et al. Triplet baseline on CIFAR-10, Large CNN: Adam 1e-3, batch 100, margin 1.0, 200 epochs,
learning rate x0.5 every 10 epochs between 130 and 200 (Kakizaki et al., Sec. 5.1.4); certified at
the paper's eps = 2/255 (configs/kakizaki.py).

  python train.py --config configs/cifar10_large_triplet.py --workdir runs/cifar10_large_triplet

Data: tfds 'cifar10' (pip install -e ".[tfds]"; tfds build cifar10).
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('cifar10', 'large', 'triplet', variant)
