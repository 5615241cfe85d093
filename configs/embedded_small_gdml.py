"""Seed 000 GDML on the embedded Fashion-MNIST sample, Small CNN (argument: sigma, default 0.25).

  python train.py --config configs/embedded_small_gdml.py:0.5 --workdir runs/embedded_small_gdml0.5
  python certify.py --config configs/embedded_small_gdml.py:0.5 \
      --config.checkpoint=runs/embedded_small_gdml0.5 --config.smoothing.num_samples=10000
"""

from configs import embedded_small_margin
from configs import fmnist_small_gdml


def get_config(arg=None):
  return fmnist_small_gdml.gdml(embedded_small_margin.get_config(), arg)
