"""RetrievalGuard GDML on the embedded Fashion-MNIST sample, Small CNN (configs/retrievalguard.py); the argument
is sigma (default 0.25).

  python train.py --config configs/embedded_small_gdml.py:0.5 --workdir runs/embedded_small_gdml0.5
  python certify.py --config configs/embedded_small_gdml.py:0.5 \
      --config.checkpoint=runs/embedded_small_gdml0.5 --config.smoothing.num_samples=10000
"""

from configs import retrievalguard


def get_config(arg=None):
  return retrievalguard.get_config('embedded', 'small', 'gdml', retrievalguard.sigma_from_arg(arg))
