#!/usr/bin/env bash
# Reproduces the README's results table: every model and baseline on msrc-fos test, exact boxes and
# loose boxes (averaged over 5 box seeds), plus the appearance-only ablation of the trained models.
# JSON per run in runs/results/.
set -euo pipefail
DATA=${DATA:-../shared/data/msrc-fos}
mkdir -p runs/results
for m in teacher student random aspect geometry color imagenet; do
  python -m fos.evaluate --data "$DATA" --model "$m" --json "runs/results/$m.exact.json" | tail -1
  python -m fos.evaluate --data "$DATA" --model "$m" --box-jitter 0.5 --seeds 0,1,2,3,4 \
    --json "runs/results/$m.loose.json" | tail -1
done
for m in teacher student; do
  python -m fos.evaluate --data "$DATA" --model "$m" --appearance-only \
    --json "runs/results/$m.appearance.exact.json" | tail -1
  python -m fos.evaluate --data "$DATA" --model "$m" --appearance-only --box-jitter 0.5 --seeds 0,1,2,3,4 \
    --json "runs/results/$m.appearance.loose.json" | tail -1
done
