"""RetrievalGuard GDML on MNIST, Small CNN (configs/retrievalguard.py); the argument is sigma (default 0.25).

  python train.py --config configs/mnist_small_gdml.py:0.5 --workdir runs/mnist_small_gdml0.5 \
      --config.data.name=idx --config.data.data_dir=data/mnist
  python certify.py --config configs/mnist_small_gdml.py:0.5 \
      --config.data.name=idx --config.data.data_dir=data/mnist \
      --config.checkpoint=runs/mnist_small_gdml0.5 --config.smoothing.num_samples=10000
"""

from configs import retrievalguard


def get_config(arg=None):
  return retrievalguard.get_config('mnist', 'small', 'gdml', retrievalguard.sigma_from_arg(arg))
