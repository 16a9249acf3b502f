#!/usr/bin/env bash
# The GPU check of the speed issue: on a CUDA machine, from a fresh checkout, everything semray does
# with a GPU, once, with one summary line per step:
#   install (timed on its own: it may fetch CUDA torch), synthetic data, `semray train --gpu` (both
#   stages), a second run with 2 Ray Train workers sharing the GPU (train.gpus_per_worker: 0.5),
#   `semray score` with GPU scoring actors (--gpus-per-worker 0.5), `semray tune` with four trials
#   per GPU (--gpus-per-trial 0.25), and fp32 against bf16 throughput
#   (bench/precision.py --device cuda).
# Aim: under 8 minutes once installed. Logs of every step: $OUT/*.log (default bench/out/gpu_check).
#
#   bench/gpu_check.sh            # or: OUT=/tmp/gpu bench/gpu_check.sh
#   SEMRAY_PYTHON=python3 bench/gpu_check.sh   # a machine that cannot install (no registry): its python3
#                                              # already has torch, Ray and the rest, semray on PYTHONPATH
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu_check}
rm -rf "$OUT" && mkdir -p "$OUT"
failed=0

step() {  # step NAME COMMAND...: run it, log it, print one line with its status and time
  local name=$1; shift
  local t0; t0=$(date +%s)
  if "$@" >"$OUT/$name.log" 2>&1; then local status=ok; else local status="FAILED (rc $?)"; failed=1; fi
  echo "[gpu_check] $name: $status in $(( $(date +%s) - t0 )) s; log $OUT/$name.log"
  [ "$status" = ok ]
}

if [ -n "${SEMRAY_PYTHON:-}" ]; then
  PY=$SEMRAY_PYTHON
  step install "$PY" -c "import semray, ray, torch; print(semray.__version__, ray.__version__, torch.__version__)" \
    || { cat "$OUT/install.log"; exit 1; }
  echo "[gpu_check]   no install: $PY has semray, Ray and torch: $(tail -1 "$OUT/install.log")"
else
  step install make install || { echo "[gpu_check] cannot continue without an install"; exit 1; }
  PY=.venv/bin/python
fi
SEMRAY="$PY -m semray"
step cuda "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())" \
  || { cat "$OUT/cuda.log"; exit 1; }
echo "[gpu_check] $(tail -1 "$OUT/cuda.log")"
started=$(date +%s)

step synth $SEMRAY synth "$OUT/data" --normal 5 --anomalous 20

# Small but real: both stages, per-epoch checkpoints, calibration, all on the GPU.
cat >"$OUT/small.yaml" <<'EOF'
train: {epochs: 4, patches_per_epoch: 16384, denoiser_epochs: 3, denoiser_patches_per_epoch: 8192, batch_size: 256}
EOF
cat >"$OUT/shared.yaml" <<'EOF'
train: {epochs: 2, patches_per_epoch: 16384, denoiser_epochs: 2, denoiser_patches_per_epoch: 8192, batch_size: 256,
        gpus_per_worker: 0.5}
EOF
summary() {  # the precision and patches/s each stage of a run trained in
  "$PY" - "$1" <<'EOF'
import json, sys
t = json.load(open(f"{sys.argv[1]}/training.json"))
print("; ".join(f"{k}: {v['precision']}, {v['memory_format']}, {v['patches_per_s']:.0f} patches/s on {v['device']}"
                for k, v in t.items() if isinstance(v, dict)))  # beside the stages: pixel_size_um
EOF
}
if step train $SEMRAY train --data "$OUT/data" --model dae --run "$OUT/run" --gpu --config "$OUT/small.yaml"; then
  echo "[gpu_check]   $(summary "$OUT/run")"
fi
if step train_2_workers_1_gpu $SEMRAY train --data "$OUT/data" --model ae --run "$OUT/run2" --gpu --workers 2 \
    --config "$OUT/shared.yaml"; then
  echo "[gpu_check]   $(summary "$OUT/run2")"
fi
if step score $SEMRAY score "$OUT/data/Anomalous/images" --run "$OUT/run" --out "$OUT/scored" \
    --gpus-per-worker 0.5 --workers 2; then
  echo "[gpu_check]   $(grep -E 'scored|image\(s\)' "$OUT/score.log" | tail -1)"
fi
if step evaluate $SEMRAY evaluate --run "$OUT/run" --data "$OUT/data" --gpu; then
  echo "[gpu_check]   $(grep -E '^\[evaluate\]' "$OUT/evaluate.log" | tail -1)"
fi
# Tune trials sharing the GPU: each trial trains in its own process on its quarter of it
# (semray.train.TuneTrialSession), then the best run gets its defect map and calibration.
cat >"$OUT/tune.yaml" <<'EOF'
train: {epochs: 2, patches_per_epoch: 8192, denoiser_epochs: 1, denoiser_patches_per_epoch: 4096, batch_size: 256}
tune: {samples: 1, scheduler: fifo}
EOF
if step tune $SEMRAY tune --data "$OUT/data" --out "$OUT/tune" --config "$OUT/tune.yaml" --gpus-per-trial 0.25; then
  echo "[gpu_check]   $(grep -E '^\[tune\] (best|[0-9]+ trials)' "$OUT/tune.log" | tr '\n' ' ')"
fi
# At the package's training batch (64) and at the GPU configs' (256): what auto picks must hold at both.
for batch in 64 256; do
  if step "precision_train_batch_$batch" "$PY" bench/precision.py --device cuda --seconds 3 --score-batch 1024 \
      --train-batch $batch; then
    grep -E "^(fp32|bf16|auto)" "$OUT/precision_train_batch_$batch.log" | sed 's/^/[gpu_check]   /'
  fi
done
echo "[gpu_check] all steps after the install: $(( $(date +%s) - started )) s; $([ $failed = 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED')"
exit $failed
