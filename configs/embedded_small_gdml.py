"""Seed 000 GDML on the embedded Fashion-MNIST sample, Small CNN (configs/seed000.py); the argument
is sigma (default 0.25).

  python train.py --config configs/embedded_small_gdml.py:0.5 --workdir runs/embedded_small_gdml0.5
  python certify.py --config configs/embedded_small_gdml.py:0.5 \
      --config.checkpoint=runs/embedded_small_gdml0.5 --config.smoothing.num_samples=10000
"""

from configs import seed000


def get_config(arg=None):
  return seed000.get_config('embedded', 'small', 'gdml', seed000.sigma_from_arg(arg))
