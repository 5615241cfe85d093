"""Seed 000 (RetrievalGuard) DML base model on Fashion-MNIST, Small CNN, certified by smoothing.

Margin loss (Wu et al. 2017) with learnable beta (init 1.2, its own Adam learning rate 5e-4,
gamma 0.2) and distance-weighted negatives, embedding 128, L2-normalised (F = 1), as in seed 000
Sec. 4.1-4.3; the encoder is the Small CNN of seed 001 instead of ResNet-50, trained from scratch
with Adam 1e-3 for 10 epochs (x0.1 at epochs 6 and 8), which fits the 2-core CPU budget.
DML is trained without noise; GDML is `configs/fmnist_small_gdml.py`.

  python train.py --config configs/fmnist_small_margin.py --workdir runs/fmnist_small_margin \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_small_margin.py \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist \
      --config.checkpoint=runs/fmnist_small_margin --config.certify.mode=smoothing \
      --config.smoothing.sigma=0.25 --workdir runs/fmnist_small_margin/smoothing_sigma0.25

Data: tfds 'fashion_mnist' (pip install -e ".[tfds]"; tfds build fashion_mnist), or the IDX files
as above. The smoothing defaults (configs/default.py `config.smoothing`) are the paper's n =
100,000 and alpha = 0.01; on a CPU lower n (`--config.smoothing.num_samples=10000`), the queries
(`--config.smoothing.num_queries`) and the gallery (`--config.eval.num_candidates`).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'fashion_mnist'
  config.model.name = 'small_cnn'
  config.model.l2_normalize = True
  config.loss.name = 'margin'
  config.loss.margin = 0.2  # gamma
  config.loss.beta_init = 1.2
  config.loss.beta_learning_rate = 5e-4
  del config.loss.mining
  config.num_epochs = 10
  config.lr_decay_epochs = (6, 8)
  config.checkpoint_every_steps = 1000
  config.certify.mode = 'smoothing'
  return config
