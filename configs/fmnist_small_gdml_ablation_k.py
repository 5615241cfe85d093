"""RetrievalGuard ablation of the embedding dimension k (Sec. 4.4.2, Fig. 4) on Fashion-MNIST: the GDML
Small CNN at sigma = 1 trained with embedding dimension k (the config argument; the paper's
default is 128, which is fmnist_small_gdml.py:1.0). The union bound of Lemma 3.6 grows with
ln(k + 1) only; the embedding's separation can change more.

  python train.py --config configs/fmnist_small_gdml_ablation_k.py:32 \
      --workdir runs/fmnist_small_gdml_k32 \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist
  python certify.py --config configs/fmnist_small_gdml_ablation_k.py:32 \
      --config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist \
      --config.checkpoint=runs/fmnist_small_gdml_k32 --config.eval.num_candidates=100 \
      --config.smoothing.num_queries=-1 --config.smoothing.num_samples=10000
"""

from configs import retrievalguard


def get_config(arg=None):
  embedding_dim = int(arg) if arg else 128
  if embedding_dim < 1:
    raise ValueError(f'The config argument is the embedding dimension k >= 1, got {arg!r}.')
  config = retrievalguard.get_config('fmnist', 'small', 'gdml', 1.0)
  config.model.embedding_dim = embedding_dim
  return config
