"""Seed 000 GDML on MNIST, Small CNN (configs/seed000.py); the argument is sigma (default 0.25).

  python train.py --config configs/mnist_small_gdml.py:0.5 --workdir runs/mnist_small_gdml0.5 \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
  python certify.py --config configs/mnist_small_gdml.py:0.5 \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist \
      --config.checkpoint=runs/mnist_small_gdml0.5 --config.smoothing.num_samples=10000
"""

from configs import seed000


def get_config(arg=None):
  return seed000.get_config('mnist', 'small', 'gdml', seed000.sigma_from_arg(arg))
