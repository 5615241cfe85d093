"""RetrievalGuard ablation of the number of Monte-Carlo samples n (Sec. 4.4.2, Fig. 3 left and middle) on
Fashion-MNIST: the GDML Small CNN at the paper's ablation sigma = 1 (fmnist_small_gdml.py:1.0),
certified with n = 1,000, 10,000 and 100,000 (alpha = 0.01); one curve per n, plus the rejected
ratio (correct under g_hat but abstained) per n.

Reduced for the 2-core CPU budget: leave-one-out on 40 test images (the paper: the whole
Online-Products test set); both certificates.

  python certify.py --config configs/fmnist_small_gdml_ablation_n.py \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist \
      --config.checkpoint=runs/fmnist_small_gdml1.0 --workdir runs/fmnist_small_gdml1.0/ablation_n
"""

from configs import retrievalguard


def get_config():
  config = retrievalguard.get_config('fmnist', 'small', 'gdml', 1.0)
  config.smoothing.ablation = 'num_samples'
  config.smoothing.ablation_values = (1_000, 10_000, 100_000)
  config.smoothing.num_queries = -1
  config.smoothing.certificate = 'both'
  config.eval.num_candidates = 40
  return config
