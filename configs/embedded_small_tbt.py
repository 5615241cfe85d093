"""Kakizaki et al. TBT (Eq. 20) on the embedded Fashion-MNIST sample, Small CNN: a few minutes on a CPU.

The paper's TBT with the eps / kappa ramp compressed to fit the 6000-image sample: 1500 steps
(25 epochs of batch 100), pure triplet training for 200 steps, then eps 0 -> 0.2 and
kappa 1 -> 0.5 until step 1000, learning rate x0.1 at epoch 22; certified at eps = 0.2.

  python train.py --config configs/embedded_small_tbt.py --workdir runs/embedded_small_tbt
  python certify.py --config configs/embedded_small_tbt.py --config.checkpoint=runs/embedded_small_tbt
"""

from configs import kakizaki


def get_config():
  config = kakizaki.get_config('fmnist', 'small', 'tbt')
  config.data.name = 'embedded'
  config.num_steps = 1500
  config.certified.ramp_start_steps = 200
  config.certified.ramp_end_steps = 1000
  config.lr_decay_epochs = (22,)
  config.checkpoint_every_steps = 500
  return config
