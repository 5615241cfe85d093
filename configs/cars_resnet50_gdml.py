"""RetrievalGuard GDML on CARS196: ResNet-50, the paper's recipe (configs/retrievalguard.py) on Gaussian-noised images.

tfds cars196; classes 1-98 train, 99-196 test.
The argument is sigma (default 0.25; the paper: 0.1, 0.25, 0.5, 1.0).

  python train.py --config configs/cars_resnet50_gdml.py:1.0 --workdir runs/cars_resnet50_gdml1.0 \
      --config.data.data_dir=~/tensorflow_datasets
  python certify.py --config configs/cars_resnet50_gdml.py:1.0 --config.data.data_dir=~/tensorflow_datasets \
      --config.checkpoint=runs/cars_resnet50_gdml1.0
  # The paper's ablations (Sec. 4.4.2, on SOP with sigma = 1): add
  #   --config.smoothing.ablation=num_samples --config.smoothing.ablation_values="(1000,10000,100000)"
  #   --config.smoothing.ablation=alpha --config.smoothing.ablation_values="(0.0001,0.001,0.01,0.1)"
  #   (with --config.smoothing.estimates_from=<the certify workdir above>: no new sampling)
  #   and, for k, train with --config.model.embedding_dim=K.

Paper differences as in configs/cars_resnet50_margin.py.
"""

from configs import retrievalguard


def get_config(arg=None):
  return retrievalguard.get_config('cars', 'resnet50', 'gdml', retrievalguard.sigma_from_arg(arg))
