#!/usr/bin/env bash
# Which training loss (model.loss: mse | ssim | mse+ssim) gives the best detector, at the laptop
# default's exact training (the settings `train.budget: auto` resolves to on a 2-core CPU: autoencoder
# 30 x 20,000 patches, denoiser 10 x 32 trained 24 x 16,000), for the AE and the DAE, same seed.
# On a GPU the six trainings run at once (each launch-bound on its own private Ray); on a CPU, set
# PARALLEL=1 and expect ~20 min per run. Then bench/score_choice.py (patch AUROC of every score,
# validation / test half) and bench/pixel_quality.py (per-pixel maps) on every run.
#
#   DATA=../shared/data/nanotwice OUT=bench/out/loss_choice bench/loss_choice.sh
#   SEMRAY_PYTHON=python3 ...      # a machine whose python3 already has semray, Ray and torch
#   MODELS="dae" LOSSES="mse ssim" GPU=""  PARALLEL=1 ...   # a subset, on a CPU, one at a time
#   TRAIN="epochs: 1, patches_per_epoch: 512, denoiser_epochs: 1, denoiser_patches_per_epoch: 256"  # smoke test
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/nanotwice}
OUT=${OUT:-bench/out/loss_choice}
PY=${SEMRAY_PYTHON:-.venv/bin/python}
MODELS=${MODELS:-ae dae}
LOSSES=${LOSSES:-mse ssim mse+ssim}
GPU=${GPU---gpu}
PARALLEL=${PARALLEL:-6}
mkdir -p "$OUT"

runs=()
for model in $MODELS; do
  for loss in $LOSSES; do
    name="${model}_${loss/+/_}"
    runs+=("$OUT/$name")
    cat >"$OUT/$name.yaml" <<EOF
model: {loss: $loss}
denoiser: {depth: 10, width: 32}
train: {${TRAIN:-epochs: 30, patches_per_epoch: 20000, denoiser_epochs: 24, denoiser_patches_per_epoch: 16000}, budget: full}
EOF
  done
done

t0=$(date +%s)
i=0
for run in "${runs[@]}"; do
  name=$(basename "$run")
  if [ ! -f "$run/model.pt" ]; then
    rm -rf "$run"
    ( $PY -m semray train --data "$DATA" --model "${name%%_*}" --run "$run" --config "$run.yaml" $GPU -q \
        >"$OUT/$name.train.log" 2>&1 \
      && echo "[loss_choice] trained $name in $(( $(date +%s) - t0 )) s" \
      || { echo "[loss_choice] $name FAILED; tail of its log:"; tail -3 "$OUT/$name.train.log"; } ) &
    i=$((i + 1))
    if [ "$i" -ge "$PARALLEL" ]; then wait; i=0; fi
  fi
done
wait

done_runs=()
for run in "${runs[@]}"; do [ -f "$run/model.pt" ] && done_runs+=("$run"); done
args=(); for run in "${done_runs[@]}"; do args+=(--run "$run"); done
$PY bench/score_choice.py "${args[@]}" --data "$DATA" --json "$OUT/score_choice.json" 2>&1 \
  | grep -v -E "^\s*$" | tee "$OUT/score_choice.txt"
echo "[loss_choice] score_choice done at $(( $(date +%s) - t0 )) s"

i=0
for run in "${done_runs[@]}"; do
  name=$(basename "$run")
  $PY bench/pixel_quality.py --run "$run" --data "$DATA" --blurs 4,8,12 --fused --json "$OUT/$name.pixel.json" \
    >"$OUT/$name.pixel.txt" 2>&1 &
  i=$((i + 1))
  if [ "$i" -ge "$PARALLEL" ]; then wait; i=0; fi
done
wait
echo "[loss_choice] pixel_quality done at $(( $(date +%s) - t0 )) s"
for run in "${done_runs[@]}"; do
  echo "== $(basename "$run")"; grep -i -E "best|chosen" "$OUT/$(basename "$run").pixel.txt" | head -5
done
