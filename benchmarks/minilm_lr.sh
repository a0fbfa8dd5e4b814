#!/bin/sh
# docs/results.md §14: TopK and SoftSAE (library defaults) on MiniLM block 3, k = 32, F = 1536, seed 0,
# over learning rates; each run evaluated on the held-out split. Needs runs/minilm/{train,heldout}_acts
# (python scripts/minilm_study.py writes them). Usage: sh benchmarks/minilm_lr.sh [PYTHON_BIN_DIR]
set -e
BIN=${1:-.venv/bin}
run() {  # arch lr
  wd=runs/minilm/k32/$1-lr$2
  "$BIN/softsae" train --data runs/minilm/train_acts --workdir "$wd" --set sae.arch="$1" --set sae.k=32 \
    --set sae.expansion=4 --set train.steps=1000 --set train.batch_size=512 --set train.lr="$2" \
    --set train.checkpoint_every=500 --set train.log_every=25 --set train.seed=0 --quiet
  "$BIN/softsae" eval --data runs/minilm/heldout_acts --workdir "$wd" --out "$wd/heldout_eval.json" > /dev/null
  python3 -c "import json; d = json.load(open('$wd/heldout_eval.json')); print('$1 lr $2: held-out FVU %.4f at L0 %.2f, dead %.2f%%' % (d['fvu'], d['l0_mean'], 100 * d['dead_fraction']))"
}
for lr in 5e-4 2e-3 4e-3 8e-3; do run topk $lr; done
for lr in 2e-3 4e-3 8e-3; do run softsae $lr; done
