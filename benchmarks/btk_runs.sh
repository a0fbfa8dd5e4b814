#!/usr/bin/env bash
# The runs behind docs/results.md §10 (BatchTopK and Matryoshka on the mixture), one after another
# (about 15 minutes on 2 CPU cores). Usage: PYTHONPATH=. benchmarks/btk_runs.sh [OUT_DIR]
# Each line of OUT_DIR/runs.jsonl is one model: btk_diag.py's summary plus the run's label.
# ONLY="label ..." runs (and appends) just those runs.
set -euo pipefail
out=${1:-runs/btk}
mkdir -p "$out"
[ -n "${ONLY:-}" ] || : > "$out/runs.jsonl"
py=${PYTHON:-python}
run() {
  local label=$1; shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $label "* ]]; then return; fi
  echo "== $label: btk_diag.py $*" >&2
  $py benchmarks/btk_diag.py "$@" --json "$out/$label.json" 2> "$out/$label.log" | while read -r line; do
    echo "{\"label\": \"$label\", \"model\": $line}" | tee -a "$out/runs.jsonl"
  done
}
run base        --archs topk,batchtopk,matryoshka --k 6
run seed1       --archs topk,batchtopk --k 6 --seed 1
run auxk_off    --archs batchtopk --k 6 --set sae.dead_tokens=100000000
run k_anneal    --archs batchtopk,matryoshka --k 6 --set train.k_anneal_baselines=true
run lr_3x       --archs batchtopk --k 6 --set train.lr=0.004
run beta_0.99   --archs batchtopk --k 6 --set sae.threshold_beta=0.99
run steps_5x    --archs batchtopk,matryoshka --k 6 --steps 14000
run norm_rows   --archs topk,batchtopk,matryoshka --k 6 --data normalize_rows=true
run const_k8    --archs topk,batchtopk --k 6 --data 'k_values=[8]'
run by_norm     --archs batchtopk,matryoshka --k 6 --select-by-norm
run by_norm_s1  --archs batchtopk --k 6 --seed 1 --select-by-norm
run by_norm_k8  --archs batchtopk --k 6 --select-by-norm --data 'k_values=[8]'
