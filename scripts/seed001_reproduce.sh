#!/bin/sh
# Seed 001 (Kakizaki et al.) on full Fashion-MNIST (IDX), Large CNN, at the reduced CPU budget of
# results/seed001/README.md: Triplet, C-IBP, TBT, TBT+FCTB, each certified by certify.py mode
# 'ibp' (eps = 0.2, K = 1, 10, 20, 40), then the tables beside the paper's.
# RUNS=/work/runs sh scripts/seed001_reproduce.sh
set -e
RUNS=${RUNS:-runs}
FM="--config.data.name=idx --config.data.data_dir=/usr/share/datasets/fashion-mnist"

# Triplet: configs/fmnist_large_triplet.py, 8 epochs, lr x0.1 at epochs 5 and 7.
python train.py --config configs/fmnist_large_triplet.py --workdir $RUNS/fmnist_large_triplet $FM \
    --config.num_epochs=8 "--config.lr_decay_epochs=(5,7)" --config.progress_bar=False
# TBT starts from the Triplet run's step-1000 checkpoint (the paper's first 2K steps are pure
# triplet training, eps = 0, kappa = 1), then 700 steps: eps 0 -> 0.2, kappa 1 -> 0.5 over
# steps 0-450, lr x0.1 at step 600.
mkdir -p $RUNS/fmnist_large_triplet_step1000/checkpoints
cp -r $RUNS/fmnist_large_triplet/checkpoints/1000 $RUNS/fmnist_large_triplet_step1000/checkpoints/
python train.py --config configs/fmnist_large_tbt.py --workdir $RUNS/fmnist_large_tbt $FM \
    --config.init_from=$RUNS/fmnist_large_triplet_step1000 --config.num_steps=700 \
    --config.certified.ramp_start_steps=0 --config.certified.ramp_end_steps=450 \
    "--config.lr_decay_epochs=(1.0,)" --config.checkpoint_every_steps=100 --config.progress_bar=False
# C-IBP from scratch: 600 steps, eps ramp over steps 50-400, lr x0.1 at step 500.
python train.py --config configs/fmnist_large_cibp.py --workdir $RUNS/fmnist_large_cibp $FM \
    --config.num_steps=600 --config.certified.ramp_start_steps=50 \
    --config.certified.ramp_end_steps=400 "--config.lr_decay_epochs=(0.834,)" \
    --config.checkpoint_every_steps=100 --config.progress_bar=False
# TBT+FCTB: the TBT run fine-tuned on the 1000 candidates (eps 0.2, kappa 0.1, Adam 1e-4).
python train.py --config configs/fmnist_large_fctb.py --workdir $RUNS/fmnist_large_fctb $FM \
    --config.init_from=$RUNS/fmnist_large_tbt --config.progress_bar=False

for method in triplet cibp tbt; do
  python certify.py --config configs/fmnist_large_$method.py \
      --config.checkpoint=$RUNS/fmnist_large_$method $FM
done
python certify.py --config configs/fmnist_large_fctb.py --config.checkpoint=$RUNS/fmnist_large_fctb $FM
python scripts/seed001_report.py fmnist:triplet=$RUNS/fmnist_large_triplet \
    fmnist:cibp=$RUNS/fmnist_large_cibp fmnist:tbt=$RUNS/fmnist_large_tbt \
    fmnist:fctb=$RUNS/fmnist_large_fctb --out results/seed001/tables.md
