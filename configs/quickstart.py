"""Quick start: Small CNN, triplet loss, on the Fashion-MNIST sample shipped in the package.

A few minutes on 2 CPU cores, no download:
  python train.py --config configs/quickstart.py --workdir runs/quickstart
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'small_cnn'
  config.num_epochs = 15
  config.lr_decay_epochs = (10,)
  config.checkpoint_every_steps = 300
  return config
