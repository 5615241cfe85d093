"""RetrievalGuard GDML on Fashion-MNIST, Small CNN (configs/retrievalguard.py); the argument is sigma (default
0.25; the paper: 0.1, 0.25, 0.5, 1.0), used for training noise and smoothing alike.

  python train.py --config configs/fmnist_small_gdml.py:0.5 --workdir runs/fmnist_small_gdml0.5 \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_small_gdml.py:0.5 \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist \
      --config.checkpoint=runs/fmnist_small_gdml0.5 --config.smoothing.num_samples=10000 \
      --workdir runs/fmnist_small_gdml0.5/smoothing
"""

from configs import retrievalguard


def get_config(arg=None):
  return retrievalguard.get_config('fmnist', 'small', 'gdml', retrievalguard.sigma_from_arg(arg))
