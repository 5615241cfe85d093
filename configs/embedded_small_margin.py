"""RetrievalGuard DML on the embedded Fashion-MNIST sample (6,000 train / 2,000 test, no download),
Small CNN (configs/retrievalguard.py); a few minutes on 2 CPU cores.

  python train.py --config configs/embedded_small_margin.py --workdir runs/embedded_small_margin
  python certify.py --config configs/embedded_small_margin.py \
      --config.checkpoint=runs/embedded_small_margin --config.smoothing.num_samples=10000
"""

from configs import retrievalguard


def get_config():
  return retrievalguard.get_config('embedded', 'small', 'margin')
