"""Kakizaki et al. Triplet baseline on MNIST, Large CNN: Adam 1e-3, batch 100, margin 1.0, 100 epochs,
learning rate x0.1 at epochs 25 and 42 (Kakizaki et al., Sec. 5.1.4); configs/kakizaki.py. At the
reduced CPU budget of results/kakizaki/README.md: configs/mnist_large_triplet.py:reduced.

  python train.py --config configs/mnist_large_triplet.py --workdir runs/mnist_large_triplet

Data: tfds 'mnist' (pip install -e ".[tfds]"; tfds build mnist).
"""

from configs import kakizaki


def get_config(variant=''):
  return kakizaki.get_config('mnist', 'large', 'triplet', variant)
