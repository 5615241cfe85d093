"""AckMetric (slides after Huai et al.): a linear metric f(x) = W x on two MNIST classes, the pairwise attack
at eps = 0.07 and 0.09 with gamma = 2, without and with the spectral defence.

  python scripts/ackmetric_spectral.py --config configs/mnist_linear_spectral.py \
      --workdir runs/ackmetric --results results/ackmetric \
      --config.data.name=idx --config.data.data_dir=data/mnist

trains two models from this one config (`spectral.alphas = ()`, the margin loss L1 alone, and the
alphas below, L2 = L1 + sum_j alpha_j lambda_{d-k+j}(W^T W)), attacks every pair of the test subset
and checks the bound D(x_i + d_i, x_j + d_j) <= D + 2 d eps lambda_max on each. The slides give
neither the classes, the embedding size, the alphas nor the optimiser; the choices here are ours.
"""

import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'mnist'
  config.model.name = 'linear'
  config.model.embedding_dim = 10
  config.method = 'spectral'
  config.spectral.gamma = 2.0
  config.spectral.alphas = (0.1, 0.1, 1.0)  # weights of lambda_{d-2}, lambda_{d-1}, lambda_max
  config.sampler = 'epoch'  # two classes: plain shuffled batches hold both
  config.batch_size = 100
  config.num_epochs = 10
  config.learning_rate = 1e-3
  config.lr_decay_epochs = (7,)
  config.checkpoint_every_steps = 1000
  config.eval.num_queries = 500
  config.eval.num_candidates = 1000
  config.pairwise = ml_collections.ConfigDict()
  config.pairwise.classes = (3, 8)  # the two MNIST digits kept (train and test)
  config.pairwise.num_test_per_class = 150  # test points per class; every pair of them is attacked
  config.pairwise.eps = (0.01, 0.03, 0.05, 0.07, 0.09)  # joint L-inf budget; the slides: 0.07, 0.09
  config.pairwise.num_steps = 20  # sign steps of eps / 10
  return config
