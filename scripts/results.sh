#!/usr/bin/env bash
# Reproduces the README's results table: every model and baseline on msrc-fos test, exact boxes and
# loose boxes (averaged over 5 box seeds), the appearance-only ablation of the trained models, and the
# teacher on the composite the app shows (--composite fit, what its rerank scores), and every model on
# the leak-free matched protocol.
# Trained models run as the app runs them: exported ONNX graphs through the default backend (auto).
# JSON per run in runs/results/.
set -euo pipefail
DATA=${DATA:-../shared/data/msrc-fos}
mkdir -p runs/results
python export/to_onnx.py --data "$DATA" | grep -A7 "^parity"
LOOSE="--box-jitter 0.5 --seeds 0,1,2,3,4"
for m in teacher student random aspect geometry color imagenet; do
  python -m fos.evaluate --data "$DATA" --model "$m" --json "runs/results/$m.exact.json" | tail -1
  python -m fos.evaluate --data "$DATA" --model "$m" $LOOSE --json "runs/results/$m.loose.json" | tail -1
done
for m in teacher student; do
  python -m fos.evaluate --data "$DATA" --model "$m" --appearance-only --json "runs/results/$m.appearance.exact.json" | tail -1
  python -m fos.evaluate --data "$DATA" --model "$m" --appearance-only $LOOSE \
    --json "runs/results/$m.appearance.loose.json" | tail -1
done
python -m fos.evaluate --data "$DATA" --model teacher --composite fit --json runs/results/teacher.fit.exact.json | tail -1
python -m fos.evaluate --data "$DATA" --model teacher --composite fit $LOOSE --json runs/results/teacher.fit.loose.json | tail -1
# the leak-free protocol (candidates of the true cutout's aspect, all resampled to its pixel area; loose boxes)
for m in teacher student random aspect geometry color imagenet; do
  python -m fos.evaluate --data "$DATA" --model "$m" --protocol matched --seeds 0,1,2,3,4 \
    --json "runs/results/$m.matched.json" | tail -1
done
for m in teacher student; do
  python -m fos.evaluate --data "$DATA" --model "$m" --protocol matched --appearance-only --seeds 0,1,2,3,4 \
    --json "runs/results/$m.appearance.matched.json" | tail -1
done
python scripts/results_table.py
# the converted coco128 test split (README, "Bring your own data"): exact and loose boxes; its matched
# protocol keeps 3 queries, too few to report
COCO=${COCO:-runs/coco128-fos}
if [ -d "$COCO/test" ]; then
  mkdir -p runs/results/coco128
  for m in teacher student random aspect geometry color imagenet; do
    python -m fos.evaluate --data "$COCO" --model "$m" --json "runs/results/coco128/$m.exact.json" | tail -1
    python -m fos.evaluate --data "$COCO" --model "$m" $LOOSE --json "runs/results/coco128/$m.loose.json" | tail -1
  done
  for m in teacher student; do
    python -m fos.evaluate --data "$COCO" --model "$m" --appearance-only --json "runs/results/coco128/$m.appearance.exact.json" | tail -1
    python -m fos.evaluate --data "$COCO" --model "$m" --appearance-only $LOOSE \
      --json "runs/results/coco128/$m.appearance.loose.json" | tail -1
  done
  echo; echo "coco128 test:"; python scripts/results_table.py runs/results/coco128
else
  echo "no $COCO/test: convert coco128 first (README, Bring your own data) to get its table"
fi
