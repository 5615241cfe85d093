"""RetrievalGuard DML base model on Stanford Online Products: ResNet-50, the paper's recipe (configs/retrievalguard.py).

tfds stanford_online_products; its class-disjoint train split, and 1,000 test classes as in Sec. 4.3.

  python train.py --config configs/sop_resnet50_margin.py --workdir runs/sop_resnet50_margin \
      --config.data.data_dir=~/tensorflow_datasets
  python certify.py --config configs/sop_resnet50_margin.py --config.data.data_dir=~/tensorflow_datasets \
      --config.checkpoint=runs/sop_resnet50_margin --config.smoothing.sigma=0.25

Paper differences: the paper starts from ImageNet-pretrained weights with frozen BatchNorm; no weights
can be downloaded here, so this trains from scratch unless you restore pretrained weights yourself.
Needs the tfds data prepared (pip install -e ".[tfds]"; see README) and an accelerator; the
certification defaults are the paper's (n = 100,000, alpha = 0.01; RetrievalGuard reports about 3 minutes
per image on a P40).
"""

from configs import retrievalguard


def get_config():
  return retrievalguard.get_config('sop', 'resnet50', 'margin')
