"""Seed 000 DML base model on MNIST, Small CNN: the recipe of fmnist_small_margin.py on MNIST.

  python train.py --config configs/mnist_small_margin.py --workdir runs/mnist_small_margin \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist
  python certify.py --config configs/mnist_small_margin.py \
      --config.data.name=idx --config.data.data_dir=/work/data/mnist \
      --config.checkpoint=runs/mnist_small_margin --config.smoothing.sigma=0.25

Data: tfds 'mnist' (pip install -e ".[tfds]"; tfds build mnist) or MNIST IDX files as above.
"""

from configs import fmnist_small_margin


def get_config():
  config = fmnist_small_margin.get_config()
  config.data.name = 'mnist'
  return config
