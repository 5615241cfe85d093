"""Certified triplet training on the embedded Fashion-MNIST sample, Small CNN: minutes on a CPU.

The triplet hinge bounded over the query- and candidate-attack boxes (method 'certified_triplet',
jaxcert/objectives/certified.py) with jaxcert's recipe (`kakizaki.certified_recipe`): the
fast-certified-training parts of Shi et al. 2021 (IBP initialisation, BatchNorm after every hidden
layer, their warm-up regularisers during a short eps ramp, gradient clipping), ranking triplets,
a 32-dimensional embedding (at 128 dimensions the embedding boxes' L2 radii are larger against the
distances between embeddings) and the candidate-attack hinge weighted 6x the query-attack one.
Certified at eps = 0.2 (and 0.1) like Kakizaki et al.'s Table 2; results/certified_training/
README.md has the numbers, budgets and the ablation. 3000 steps of batch 100 (50 epochs of the
6000 training images; ~250 s of training estimated on 2 idle cores, within the 5-minute budget,
524 s measured under a load average of ~10): eps 0 -> 0.2 and kappa 1 -> 0.3 over steps
200-2000, learning rate x0.1 at epoch 42.5 (step 2550).

  python train.py --config configs/embedded_small_certified.py --workdir runs/embedded_small_certified
  python certify.py --config configs/embedded_small_certified.py \\
      --config.checkpoint=runs/embedded_small_certified
"""

from configs import kakizaki

TRAIN_IMAGES = 6000  # the embedded sample's training split


def get_config():
  config = kakizaki.get_config('fmnist', 'small', 'certified')
  config.data.name = 'embedded'
  kakizaki.certified_recipe(config, num_steps=3000, train_size=TRAIN_IMAGES)
  return config
