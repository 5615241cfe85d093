"""Kakizaki et al. ACT baseline on Fashion-MNIST, Large CNN: anti-collapse triplet (Zhou et al. 2021) with
robrank's 28x28 recipe (PGD eps 77/255, step 3/255, 32 steps) and Kakizaki et al.'s optimiser (Adam 1e-3,
batch 100, triplet margin 1.0, 100 epochs, learning rate x0.1 at epochs 25 and 42, Sec. 5.1.4).

  python train.py --config configs/fmnist_large_act.py --workdir runs/fmnist_large_act

and its ER-Recall@K (Kakizaki et al. Table 2, eps = 0.2):

  python certify.py --config configs/fmnist_large_act.py --config.checkpoint=runs/fmnist_large_act \
      --config.certify.mode=attack

Data: tfds 'fashion_mnist', or the IDX files: --config.data.name=idx
--config.data.data_dir=/usr/share/datasets/fashion-mnist. The reduced CPU run of results/kakizaki_attacks
overrides the epochs and the attack steps (its README has the exact command).
"""

from configs import kakizaki


def get_config():
  config = kakizaki.get_config('fmnist', 'large', 'triplet')
  config.method = 'act'
  config.act.eps = 77 / 255
  config.act.step_size = 3 / 255
  config.act.num_steps = 32
  config.attack.eps = (0.2,)  # Kakizaki et al. Table 2
  return config
