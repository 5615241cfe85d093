"""RetrievalGuard DML on Fashion-MNIST, Small CNN (configs/retrievalguard.py), certified by smoothing.

  python train.py --config configs/fmnist_small_margin.py --workdir runs/fmnist_small_margin \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_small_margin.py \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist \
      --config.checkpoint=runs/fmnist_small_margin --config.smoothing.sigma=0.25 \
      --config.smoothing.num_samples=10000 --workdir runs/fmnist_small_margin/smoothing_sigma0.25

Data: tfds 'fashion_mnist' (pip install -e ".[tfds]"; tfds build fashion_mnist), or the IDX files
as above. DML is trained without noise and certified at any sigma (the paper: 0.1, 0.25, 0.5, 1.0).
"""

from configs import retrievalguard


def get_config():
  return retrievalguard.get_config('fmnist', 'small', 'margin')
