"""RetrievalGuard (Wu, Zhang and Huang, ICML 2022): base models and their certification.

`get_config(dataset, model, method, sigma)` builds one setting; every
`configs/<dataset>_<model>_{margin,gdml}.py` calls it and carries its launch commands.

  margin  DML: the margin loss of Wu et al. 2017 (Sec. 4.1) with learnable beta (init 1.2, its own
          Adam learning rate 5e-4), gamma = 0.2, distance-weighted negatives; embedding 128,
          L2-normalised, so ||h|| <= F = 1 (Sec. 4.3)
  gdml    GDML (Sec. 4.2): the same loss on x + z, z ~ N(0, sigma^2 I), certified with that sigma

Models: 'resnet50' is the paper's recipe (224 px, ImageNet statistics inside the model, batch 112
with 2 images per class, 100 epochs at 1e-5 x0.3 at epochs 30, 55 and 75; the paper starts from
ImageNet weights with frozen BatchNorm, which cannot be downloaded here); 'small' is the Small CNN
of Kakizaki et al., trained from scratch with Adam 1e-3 for 10 epochs (x0.1 at epochs 6 and 8; 15 epochs,
x0.1 at 10, on the 6,000-image embedded sample), which fits a 2-core CPU. Every config certifies
with `certify.py` mode 'smoothing' (`config.smoothing` in configs/default.py: the paper's
n = 100,000 and alpha = 0.01; lower n, queries and gallery on a CPU).
"""

from configs import default

DATASETS = {'fmnist': 'fashion_mnist', 'mnist': 'mnist', 'embedded': 'embedded', 'cub': 'cub',
            'cars': 'cars', 'sop': 'sop'}
MODELS = {'small': 'small_cnn', 'resnet50': 'resnet50'}
METHODS = ('margin', 'gdml')
PAPER_SIGMAS = (0.1, 0.25, 0.5, 1.0)  # Sec. 4.3
SOP_TEST_CLASSES = 1_000  # Sec. 4.3: "another 1,000 classes as the test set"


def sigma_from_arg(arg, default_sigma: float = 0.25) -> float:
  """The GDML config argument (`configs/x_gdml.py:0.5`) as sigma > 0."""
  sigma = float(arg) if arg else default_sigma
  if not sigma > 0:
    raise ValueError(f'The GDML config argument is sigma > 0 (e.g. :0.25; the paper: '
                     f'{PAPER_SIGMAS}), got {arg!r}.')
  return sigma


def get_config(dataset: str, model: str, method: str, sigma: float | None = None):
  """The config of RetrievalGuard's (dataset, model, method), e.g. ('fmnist', 'small', 'gdml', 0.5)."""
  config = default.get_config()
  config.data.name = default.choice('dataset', dataset, DATASETS)
  config.model.name = default.choice('model', model, MODELS)
  default.choice('method', method, METHODS)
  config.model.l2_normalize = True
  config.loss.name = 'margin'
  config.loss.margin = 0.2  # gamma
  config.loss.beta_init = 1.2
  config.loss.beta_learning_rate = 5e-4
  del config.loss.mining
  config.certify.mode = 'smoothing'
  if model == 'resnet50':
    config.data.image_size = 224
    config.model.input_mean = (0.485, 0.456, 0.406)  # ImageNet statistics, applied in the model
    config.model.input_std = (0.229, 0.224, 0.225)
    config.batch_size = 112
    config.m_per_class = 2
    config.num_epochs = 100
    config.learning_rate = 1e-5
    config.lr_decay_epochs = (30, 55, 75)
    config.lr_decay_factor = 0.3
    config.eval.batch_size = 128
    config.smoothing.chunk_size = 128  # 2 x 128 ResNet-50 images at 224 px per scan step
    config.smoothing.batch_size = 2
  elif dataset == 'embedded':
    config.num_epochs = 15
    config.lr_decay_epochs = (10,)
    config.checkpoint_every_steps = 300
  else:
    config.num_epochs = 10
    config.lr_decay_epochs = (6, 8)
    config.checkpoint_every_steps = 1000
  if dataset == 'sop':
    config.data.num_test_classes = SOP_TEST_CLASSES
  if method == 'gdml':
    if sigma is None or not sigma > 0:
      raise ValueError(f'GDML needs sigma > 0, got {sigma!r}.')
    config.noise_sigma = float(sigma)
    config.smoothing.sigma = float(sigma)
  return config
