"""Certified triplet training on the full Fashion-MNIST, Small CNN: jaxcert's recipe at a reduced budget.

Not Kakizaki et al.'s method: the triplet hinge bounded over the query- and candidate-attack boxes,
with `kakizaki.certified_recipe` (the embedded sample's recipe, results/certified_training/README.md)
over 9000 steps of batch 100 (15 epochs of the 60,000 training images),
against the paper's 100 epochs; `configs/fmnist_small_certified.py:30` trains 30 epochs (18,000 steps,
the schedule scaled with them).
Compared with Kakizaki et al.'s Table 2 in results/certified_training/README.md.

  DATA="--config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist"
  python train.py --config configs/fmnist_small_certified.py --workdir runs/fmnist_small_certified $DATA
  python certify.py --config configs/fmnist_small_certified.py \\
      --config.checkpoint=runs/fmnist_small_certified $DATA
"""

from configs import kakizaki

EPOCHS = 15  # 9000 steps of batch 100


def get_config(epochs=''):
  """The recipe over `EPOCHS` epochs, or over the config argument's: `fmnist_small_certified.py:30`."""
  return kakizaki.certified_full_data('fmnist', 'small', epochs or EPOCHS)
