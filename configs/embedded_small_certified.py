"""Certified triplet training on the embedded Fashion-MNIST sample, Small CNN: minutes on a CPU.

The triplet hinge bounded over the query- and candidate-attack boxes (method 'certified_triplet',
jaxcert/objectives/certified.py) with the fast-certified-training recipe of Shi et al. 2021: IBP
initialisation, BatchNorm after every hidden layer, their warm-up regularisers during a short eps
ramp, gradient clipping. Ranking triplets (each anchor's nearest positive against every other
point but its 3 nearest), a 32-dimensional embedding (at 128 dimensions the embedding boxes'
L2 radii are larger against the distances between embeddings) and the candidate-attack hinge
weighted 6x the query-attack one. Certified at eps = 0.2 (and 0.1) like Kakizaki et al.'s Table 2;
results/certified_training/README.md has the numbers, budgets and the ablation.

  python train.py --config configs/embedded_small_certified.py --workdir runs/embedded_small_certified
  python certify.py --config configs/embedded_small_certified.py \\
      --config.checkpoint=runs/embedded_small_certified
"""

from configs import kakizaki


def get_config():
  config = kakizaki.get_config('fmnist', 'small', 'certified')
  config.data.name = 'embedded'
  config.model.ibp_init = True
  config.model.batch_norm = True
  config.model.embedding_dim = 32
  # 1500 steps of batch 100 (25 epochs of the 6000 images): eps 0 -> 0.2 and kappa 1 -> 0.3 over
  # steps 100-1000, learning rate x0.1 at epoch 21.25 (step 1275).
  config.num_steps = 1500
  config.certified.ramp_start_steps = 100
  config.certified.ramp_end_steps = 1000
  config.certified.kappa = 0.3
  config.certified.triplets = 'ranking'
  config.certified.exclude_nearest = 3
  config.certified.warmup_weight = 0.5
  config.certified.ca_weight = 6.0
  config.lr_decay_epochs = (21.25,)
  config.checkpoint_every_steps = 500
  return config
