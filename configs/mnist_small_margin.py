"""RetrievalGuard DML on MNIST, Small CNN (configs/retrievalguard.py).

  python train.py --config configs/mnist_small_margin.py --workdir runs/mnist_small_margin \
      --config.data.name=idx --config.data.data_dir=data/mnist
  python certify.py --config configs/mnist_small_margin.py \
      --config.data.name=idx --config.data.data_dir=data/mnist \
      --config.checkpoint=runs/mnist_small_margin --config.smoothing.sigma=0.25 \
      --config.smoothing.num_samples=10000

Data: tfds 'mnist' (pip install -e ".[tfds]"; tfds build mnist) or MNIST IDX files as above.
"""

from configs import retrievalguard


def get_config():
  return retrievalguard.get_config('mnist', 'small', 'margin')
