"""Regenerates jaxcert/data/embedded/fashion_mnist_sample.npz, the Fashion-MNIST sample in the package.

  sudo apt-get install dataset-fashion-mnist   # IDX files in /usr/share/datasets/fashion-mnist
  python scripts/make_embedded_sample.py

draws 600 training and 200 test images per class with seed 0 (`jaxcert.data.embedded.make_embedded_sample`)
and writes them, their labels and their indices in the original files to one compressed npz.
"""

import argparse
import os

import numpy as np

from jaxcert.data import embedded

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--source_dir', default=embedded.DEBIAN_FASHION_MNIST_DIR,
                      help='directory of the Fashion-MNIST IDX files')
  parser.add_argument('--output', default=os.path.join(REPO, 'jaxcert', 'data', 'embedded',
                                                       embedded.EMBEDDED_SAMPLE_FILE))
  parser.add_argument('--train_per_class', type=int, default=embedded.TRAIN_PER_CLASS)
  parser.add_argument('--test_per_class', type=int, default=embedded.TEST_PER_CLASS)
  parser.add_argument('--seed', type=int, default=embedded.SAMPLE_SEED)
  args = parser.parse_args()
  arrays = embedded.make_embedded_sample(args.source_dir, train_per_class=args.train_per_class,
                                         test_per_class=args.test_per_class, seed=args.seed)
  np.savez_compressed(args.output, **arrays)
  shapes = ', '.join(f'{k} {v.shape}' for k, v in arrays.items() if v.ndim)
  print(f'Wrote {args.output} ({os.path.getsize(args.output) / 2**20:.2f} MiB): {shapes}')


if __name__ == '__main__':
  main()
