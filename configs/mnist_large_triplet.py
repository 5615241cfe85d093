"""Seed 001 Triplet baseline on MNIST, Large CNN: Adam 1e-3, batch 100, margin 1.0, 100 epochs,
learning rate x0.1 at epochs 25 and 42 (Kakizaki et al., Sec. 5.1.4).

  python train.py --config configs/mnist_large_triplet.py --workdir runs/mnist_large_triplet

Data: tfds 'mnist' (pip install -e ".[tfds]"; tfds build mnist).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'mnist'
  config.model.name = 'large_cnn'
  return config
