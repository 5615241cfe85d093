"""Certified triplet training (jaxcert's recipe) on the full MNIST, Large CNN (configs/kakizaki.py).

Not Kakizaki et al.'s method: the triplet hinge bounded over the query- and candidate-attack boxes
with `kakizaki.certified_recipe` (the embedded sample's recipe, results/certified_training/README.md)
over STEPS steps of batch 100, a reduced CPU budget against the paper's 100 epochs; compared with
Kakizaki et al.'s Table 2 in results/certified_training/README.md.

  python train.py --config configs/mnist_large_certified.py --workdir runs/mnist_large_certified \
      --config.data.name=idx --config.data.data_dir=data/mnist
  python certify.py --config configs/mnist_large_certified.py --config.checkpoint=runs/mnist_large_certified \
      --config.data.name=idx --config.data.data_dir=data/mnist
"""

from configs import kakizaki

NUM_STEPS = 6000
TRAIN_IMAGES = 60_000


def get_config():
  config = kakizaki.get_config('mnist', 'large', 'certified')
  kakizaki.certified_recipe(config, num_steps=NUM_STEPS, train_size=TRAIN_IMAGES)
  return config
