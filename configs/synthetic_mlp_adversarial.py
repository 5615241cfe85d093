"""Panum et al. App. E: the two-Gaussian synthetic experiment, a natural and a robust model from one config.

  python -m scripts.panum_synthetic --config configs/synthetic_mlp_adversarial.py \
      --workdir runs/panum --results results/panum

trains 'natural' (adversarial.attack_rate = 0: the same contrastive tuples, never perturbed) and
'robust' (Panum et al. Sec. 3.5 adversarial training, L-inf eps = 0.01, PGD 5 steps, P(gamma=1) below),
then runs Algorithm 1 (PGD, 5 steps, eps = 0.01) on the 516 test points, five attack seeds.
`train.py --config configs/synthetic_mlp_adversarial.py` trains the robust model alone.

The paper's setting: k = 3 x 224 x 224 inputs, x ~ N(0.25 or 0.75, 0.025^2 I), 508 train and 516 test
points, contrastive loss (alpha = 1), 25 epochs, a 2-D embedding on the unit circle. Not given for
App. E, our choices: an MLP encoder (2 hidden layers of 128; the paper's other experiments use an
ImageNet ResNet-50), Adam 1e-3 without weight decay (the paper: 1e-6 and 4e-4 for a pre-trained
ResNet), batch 112 = 56 per class, P(gamma=1) = 0.5 (the App. F default).
"""

import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'synthetic'
  config.data.image_size = 224
  config.data.synthetic_num_channels = 3
  config.model.name = 'mlp'
  config.model.hidden_width = 128
  config.model.embedding_dim = 2
  config.model.l2_normalize = True
  # Panum et al. App. A normalises pixel intensities (its ResNet's ImageNet statistics). Without it a ReLU
  # MLP with zero biases maps class b (~0.75) to 3x class a (~0.25): one point on the unit circle.
  config.model.input_mean = (0.485, 0.456, 0.406)
  config.model.input_std = (0.229, 0.224, 0.225)
  config.loss = ml_collections.ConfigDict({'name': 'contrastive', 'pos_margin': 0.0,
                                           'neg_margin': 1.0})
  config.method = 'adversarial'
  config.adversarial.eps = 0.01
  config.adversarial.num_steps = 5
  config.adversarial.attack_rate = 0.5
  config.batch_size = 112
  config.m_per_class = 56
  config.num_epochs = 25
  config.learning_rate = 1e-3
  config.lr_decay_epochs = ()
  config.checkpoint_every_steps = 1000
  config.eval.num_queries = 258
  config.eval.num_candidates = 258
  config.eval.batch_size = 129
  config.certify.mode = 'attack'
  config.attack.kinds = ('nn',)
  config.attack.eps = (0.01, 0.05, 0.1)  # App. E: 0.01; Table 1 adds 0.05 and 0.1
  config.attack.num_steps = 5
  config.attack.num_repeats = 5
  config.attack.batch_size = 129
  return config
