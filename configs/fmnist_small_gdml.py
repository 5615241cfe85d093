"""Seed 000 GDML on Fashion-MNIST, Small CNN: the margin-loss DML of fmnist_small_margin.py trained
on Gaussian-noised images x + z, z ~ N(0, sigma^2 I) (seed 000, Sec. 4.2), and certified with the
same sigma. The config argument is sigma (the paper: 0.1, 0.25, 0.5, 1.0; default 0.25).

  python train.py --config configs/fmnist_small_gdml.py:0.5 --workdir runs/fmnist_small_gdml0.5 \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_small_gdml.py:0.5 \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist \
      --config.checkpoint=runs/fmnist_small_gdml0.5 --workdir runs/fmnist_small_gdml0.5/smoothing
"""

from configs import fmnist_small_margin


def gdml(config, arg):
  """`config` made GDML at sigma = float(arg): training noise and smoothing noise alike."""
  sigma = float(arg) if arg else 0.25
  if not sigma > 0:
    raise ValueError(f'The GDML config argument is sigma > 0 (e.g. :0.25), got {arg!r}.')
  config.noise_sigma = sigma
  config.smoothing.sigma = sigma
  return config


def get_config(arg=None):
  return gdml(fmnist_small_margin.get_config(), arg)
