#!/bin/bash
# RetrievalGuard (Wu et al. 2022) experiments on full Fashion-MNIST (IDX), Small CNN; results/retrievalguard/.
# Usage: scripts/retrievalguard_experiments.sh STAGE   (train | curves | headline | ablations | pgd | report)
# Run directories go to $RUNS (default runs/retrievalguard). Reduced settings (2-core CPU budget):
# leave-one-out on 100 test images for the sigma curves at n = 10,000; see results/retrievalguard/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/retrievalguard}
DATA="--config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist"
SIGMAS="0.1 0.25 0.5 1.0"
CURVE="--config.eval.num_candidates=100 --config.smoothing.num_queries=-1 \
  --config.smoothing.num_samples=10000 --config.smoothing.certificate=both --config.progress_bar=false"
mkdir -p "$RUNS"

case "${1:-}" in
  train)
    python train.py --config configs/fmnist_small_margin.py --workdir "$RUNS/fmnist_small_margin" $DATA
    for s in $SIGMAS; do
      python train.py --config configs/fmnist_small_gdml.py:$s --workdir "$RUNS/fmnist_small_gdml$s" $DATA
    done
    for k in 32 512; do
      python train.py --config configs/fmnist_small_gdml_ablation_k.py:$k \
        --workdir "$RUNS/fmnist_small_gdml_k$k" $DATA
    done ;;
  curves)  # DML and GDML at each sigma, both certificates.
    for s in $SIGMAS; do
      python certify.py --config configs/fmnist_small_margin.py $DATA $CURVE \
        --config.checkpoint="$RUNS/fmnist_small_margin" --config.smoothing.sigma=$s \
        --workdir "$RUNS/fmnist_small_margin/smoothing_sigma$s"
      python certify.py --config configs/fmnist_small_gdml.py:$s $DATA $CURVE \
        --config.checkpoint="$RUNS/fmnist_small_gdml$s" --workdir "$RUNS/fmnist_small_gdml$s/smoothing"
    done ;;
  ablations)  # RetrievalGuard Sec. 4.4.2 at the paper's sigma = 1 (GDML): n (incl. 100,000), alpha, k.
    python certify.py --config configs/fmnist_small_gdml_ablation_n.py $DATA --config.progress_bar=false \
      --config.checkpoint="$RUNS/fmnist_small_gdml1.0" --workdir "$RUNS/fmnist_small_gdml1.0/ablation_n"
    python certify.py --config configs/fmnist_small_gdml_ablation_alpha.py $DATA --config.progress_bar=false \
      --config.checkpoint="$RUNS/fmnist_small_gdml1.0" --workdir "$RUNS/fmnist_small_gdml1.0/ablation_alpha" \
      --config.smoothing.estimates_from="$RUNS/fmnist_small_gdml1.0/smoothing"
    for k in 32 512; do
      python certify.py --config configs/fmnist_small_gdml_ablation_k.py:$k $DATA $CURVE \
        --config.checkpoint="$RUNS/fmnist_small_gdml_k$k" --workdir "$RUNS/fmnist_small_gdml_k$k/smoothing"
    done ;;
  pgd)  # PGD on the smoothed GDML model at the certified radii (acceptance (2)).
    python scripts/retrievalguard_pgd_check.py --certify_dir "$RUNS/fmnist_small_gdml0.5/smoothing" \
      --out results/retrievalguard/pgd_check.md ;;
  report)  # Combined plots and tables into results/retrievalguard/.
    python scripts/retrievalguard_report.py --runs "$RUNS" --out results/retrievalguard ;;
  *) echo "usage: $0 train|curves|ablations|pgd|report" >&2; exit 2 ;;
esac
