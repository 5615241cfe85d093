"""Defaults every experiment config starts from: seed 001's triplet training on the embedded sample.

Each experiment file imports this, overrides a few fields and documents its launch command.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = 'embedded'  # see jaxcert.data.DATASET_NAMES
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # idx directory or tfds data_dir
  config.data.image_size = ml_collections.config_dict.placeholder(int)  # resize target (224-px sets)

  config.model = ml_collections.ConfigDict()
  config.model.name = 'small_cnn'  # see jaxcert.models.MODEL_NAMES
  config.model.embedding_dim = 128
  config.model.l2_normalize = False

  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'triplet'  # see jaxcert.losses.LOSS_NAMES
  config.loss.margin = 1.0  # seed 001 Sec. 5.1.4
  config.loss.mining = 'batch_all'

  config.method = 'metric'  # see jaxcert.objectives.METHODS
  config.init_from = ml_collections.config_dict.placeholder(str)  # workdir whose encoder starts training
  config.noise_sigma = 0.0  # > 0: Gaussian-augmented training (GDML, seed 000)

  config.sampler = 'm_per_class'  # 'm_per_class' or 'epoch'
  config.batch_size = 100  # seed 001
  config.m_per_class = 10
  config.num_epochs = 100
  config.num_steps = -1  # > 0 overrides num_epochs
  config.learning_rate = 1e-3  # Adam, seed 001
  config.lr_decay_epochs = (25, 42)
  config.lr_decay_factor = 0.1

  config.parallel = ml_collections.ConfigDict()
  config.parallel.num_devices = 1  # data-parallel over this many devices; -1 = all local devices
  config.parallel.coordinator_address = ml_collections.config_dict.placeholder(str)  # multi-host only
  config.parallel.num_processes = ml_collections.config_dict.placeholder(int)
  config.parallel.process_id = ml_collections.config_dict.placeholder(int)

  config.checkpoint_every_steps = 500
  config.log_every_steps = 50
  config.progress_bar = True

  config.eval = ml_collections.ConfigDict()
  config.eval.num_queries = 1000  # seed 001 Sec. 5.1.1
  config.eval.num_candidates = 1000
  config.eval.split_seed = 0
  config.eval.ks = (1, 10, 20, 40)
  config.eval.batch_size = 500

  # certify.py: the training workdir to certify, and the mode (jaxcert.certification.MODES).
  config.checkpoint = ml_collections.config_dict.placeholder(str)
  config.certify = ml_collections.ConfigDict()
  config.certify.mode = 'ibp'
  return config
