"""Seed 000 GDML on MNIST, Small CNN (argument: sigma, default 0.25), as fmnist_small_gdml.py.

  python train.py --config configs/mnist_small_gdml.py:0.5 --workdir runs/mnist_small_gdml0.5 \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
  python certify.py --config configs/mnist_small_gdml.py:0.5 \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist \
      --config.checkpoint=runs/mnist_small_gdml0.5
"""

from configs import fmnist_small_gdml
from configs import mnist_small_margin


def get_config(arg=None):
  return fmnist_small_gdml.gdml(mnist_small_margin.get_config(), arg)
