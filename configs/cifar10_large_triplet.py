"""Seed 001 Triplet baseline on CIFAR-10, Large CNN: Adam 1e-3, batch 100, margin 1.0, 200 epochs,
learning rate x0.5 every 10 epochs between 130 and 200 (Kakizaki et al., Sec. 5.1.4).

  python train.py --config configs/cifar10_large_triplet.py --workdir runs/cifar10_large_triplet

Data: tfds 'cifar10' (pip install -e ".[tfds]"; tfds build cifar10).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'cifar10'
  config.model.name = 'large_cnn'
  config.num_epochs = 200
  config.lr_decay_epochs = (130, 140, 150, 160, 170, 180, 190)
  config.lr_decay_factor = 0.5
  return config
