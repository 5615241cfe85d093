"""Seed 000 (RetrievalGuard) base model on Stanford Online Products (tfds stanford_online_products; its own class-disjoint train/test):
ResNet-50, 224 px, embedding 128, L2-normalised (F = 1), margin loss with learnable beta (init 1.2,
learning rate 5e-4, gamma 0.2) and distance-weighted sampling, 100 epochs, learning rate 1e-5 x0.3 at
epochs 30, 55 and 75 (Wu, Zhang and Huang, Sec. 4.3).

  python train.py --config configs/sop_resnet50_margin.py --workdir runs/sop_resnet50_margin \
      --config.data.data_dir=~/tensorflow_datasets

Paper differences: the paper starts from ImageNet-pretrained weights with frozen BatchNorm; no weights
can be downloaded here, so this trains from scratch unless you restore pretrained weights yourself.
Needs the tfds data prepared (pip install -e ".[tfds]"; see README) and an accelerator.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'sop'
  config.data.image_size = 224
  config.model.name = 'resnet50'
  config.model.l2_normalize = True
  config.model.input_mean = (0.485, 0.456, 0.406)  # ImageNet statistics, applied inside the model
  config.model.input_std = (0.229, 0.224, 0.225)
  config.loss.name = 'margin'
  config.loss.margin = 0.2  # gamma
  config.loss.beta_init = 1.2
  config.loss.beta_learning_rate = 5e-4
  del config.loss.mining
  config.batch_size = 112
  config.m_per_class = 2
  config.num_epochs = 100
  config.learning_rate = 1e-5
  config.lr_decay_epochs = (30, 55, 75)
  config.lr_decay_factor = 0.3
  config.eval.batch_size = 128
  return config
