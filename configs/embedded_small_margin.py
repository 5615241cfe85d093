"""Seed 000 DML on the embedded Fashion-MNIST sample (6,000 train / 2,000 test, no download),
Small CNN, margin loss, 15 epochs; a few minutes on 2 CPU cores. GDML: embedded_small_gdml.py.

  python train.py --config configs/embedded_small_margin.py --workdir runs/embedded_small_margin
  python certify.py --config configs/embedded_small_margin.py \
      --config.checkpoint=runs/embedded_small_margin --config.smoothing.num_samples=10000
"""

from configs import fmnist_small_margin


def get_config():
  config = fmnist_small_margin.get_config()
  config.data.name = 'embedded'
  config.num_epochs = 15
  config.lr_decay_epochs = (10,)
  config.checkpoint_every_steps = 300
  return config
