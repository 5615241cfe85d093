"""RetrievalGuard ablation of the failure probability alpha (Sec. 4.4.2, Fig. 3 right) on Fashion-MNIST:
the GDML Small CNN at sigma = 1 (fmnist_small_gdml.py:1.0), one smoothing certified at
alpha = 0.0001, 0.001, 0.01 and 0.1.

Reduced for the 2-core CPU budget: n = 10,000 (the paper: 100,000), leave-one-out on 100 test
images, the setting of the sigma curves of scripts/retrievalguard_experiments.sh. Pointing
`estimates_from` at that run certifies its stored smoothings again without sampling (its
alpha = 0.01 curve is then reproduced exactly):

  python certify.py --config configs/fmnist_small_gdml_ablation_alpha.py \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist \
      --config.checkpoint=runs/fmnist_small_gdml1.0 --workdir runs/fmnist_small_gdml1.0/ablation_alpha \
      --config.smoothing.estimates_from=runs/fmnist_small_gdml1.0/smoothing
"""

from configs import retrievalguard


def get_config():
  config = retrievalguard.get_config('fmnist', 'small', 'gdml', 1.0)
  config.smoothing.ablation = 'alpha'
  config.smoothing.ablation_values = (0.0001, 0.001, 0.01, 0.1)
  config.smoothing.certificate = 'both'
  config.smoothing.num_samples = 10_000
  config.smoothing.num_queries = -1
  config.eval.num_candidates = 100
  return config
