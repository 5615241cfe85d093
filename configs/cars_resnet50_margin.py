"""RetrievalGuard DML base model on CARS196: ResNet-50, the paper's recipe (configs/retrievalguard.py).

tfds cars196; classes 1-98 train, 99-196 test.

  python train.py --config configs/cars_resnet50_margin.py --workdir runs/cars_resnet50_margin \
      --config.data.data_dir=~/tensorflow_datasets
  python certify.py --config configs/cars_resnet50_margin.py --config.data.data_dir=~/tensorflow_datasets \
      --config.checkpoint=runs/cars_resnet50_margin --config.smoothing.sigma=0.25

Paper differences: the paper starts from ImageNet-pretrained weights with frozen BatchNorm; no weights
can be downloaded here, so this trains from scratch unless you restore pretrained weights yourself.
Needs the tfds data prepared (pip install -e ".[tfds]"; see README) and an accelerator; the
certification defaults are the paper's (n = 100,000, alpha = 0.01; RetrievalGuard reports about 3 minutes
per image on a P40).
"""

from configs import retrievalguard


def get_config():
  return retrievalguard.get_config('cars', 'resnet50', 'margin')
