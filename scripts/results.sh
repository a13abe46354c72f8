#!/usr/bin/env bash
# Reproduces the README's results tables: every model and baseline on msrc-fos test, exact boxes and
# loose boxes (averaged over 5 box seeds), the appearance-only ablation of the trained models, and the
# teacher on the composite the app shows (--composite fit, what its rerank scores), and every model on
# the leak-free matched protocol; then the same exact and loose tables on the converted coco128 test split.
# Trained models run as the app runs them: exported ONNX graphs through the default backend (auto).
# JSON per run in runs/results/ (coco128: runs/results/coco128/).
set -euo pipefail
DATA=${DATA:-../shared/data/msrc-fos}
COCO=${COCO:-runs/coco128-fos}
LOOSE="--box-jitter 0.5 --seeds 0,1,2,3,4"

standard() {  # DATA OUT: exact and loose boxes for every model, appearance-only for the trained ones
  local data=$1 out=$2
  mkdir -p "$out"
  for m in teacher student random aspect geometry color imagenet; do
    python -m fos.evaluate --data "$data" --model "$m" --json "$out/$m.exact.json" | tail -1
    python -m fos.evaluate --data "$data" --model "$m" $LOOSE --json "$out/$m.loose.json" | tail -1
  done
  for m in teacher student; do
    python -m fos.evaluate --data "$data" --model "$m" --appearance-only --json "$out/$m.appearance.exact.json" | tail -1
    python -m fos.evaluate --data "$data" --model "$m" --appearance-only $LOOSE \
      --json "$out/$m.appearance.loose.json" | tail -1
  done
}

python export/to_onnx.py --data "$DATA" | grep -A7 "^parity"
standard "$DATA" runs/results
python -m fos.evaluate --data "$DATA" --model teacher --composite fit --json runs/results/teacher.fit.exact.json | tail -1
python -m fos.evaluate --data "$DATA" --model teacher --composite fit $LOOSE --json runs/results/teacher.fit.loose.json | tail -1
# the leak-free matched protocol (candidates of the true cutout's aspect, all resampled to its pixel area)
# and the harmony protocol (the query's own cutout under 5 photos' colour casts); loose boxes, 5 seeds
protocol() {  # DATA OUT PROTOCOL
  local data=$1 out=$2 proto=$3
  for m in teacher student random aspect geometry color imagenet; do
    python -m fos.evaluate --data "$data" --model "$m" --protocol "$proto" --seeds 0,1,2,3,4 \
      --json "$out/$m.$proto.json" | tail -1
  done
  for m in teacher student; do
    python -m fos.evaluate --data "$data" --model "$m" --protocol "$proto" --appearance-only --seeds 0,1,2,3,4 \
      --json "$out/$m.appearance.$proto.json" | tail -1
  done
}
protocol "$DATA" runs/results matched
protocol "$DATA" runs/results harmony
python scripts/results_table.py
# the converted coco128 test split (README, "Bring your own data"); its matched protocol keeps 3
# queries, too few to report
if [ -d "$COCO/test" ]; then
  standard "$COCO" runs/results/coco128
  echo; echo "coco128 test:"; python scripts/results_table.py runs/results/coco128
else
  echo "no $COCO/test: convert coco128 first (README, Bring your own data) to get its table"
fi
# the student with a photometric term (README, "Lighting"), once `python -m fos.train.photometric` made it;
# then the harmony and loose-box protocols on the converted coco-extra test split
PHOTO=${PHOTO:-runs/student-photo/student.safetensors}
EXTRA=${EXTRA:-runs/coco-extra-fos}
if [ -f "$PHOTO" ]; then
  mkdir -p runs/results/photo/coco
  for ao in "" "--appearance-only"; do
    t=${ao:+.appearance}
    for p in harmony matched; do
      python -m fos.evaluate --data "$DATA" --model student --checkpoint "$PHOTO" $ao --protocol $p --seeds 0,1,2,3,4 \
        --json "runs/results/photo/photo$t.$p.json" | tail -1
    done
    python -m fos.evaluate --data "$DATA" --model student --checkpoint "$PHOTO" $ao $LOOSE \
      --json "runs/results/photo/photo$t.loose.json" | tail -1
  done
  if [ -d "$EXTRA/test" ]; then
    for p in "--protocol harmony" "--box-jitter 0.5"; do
      tag=$([ "$p" = "--box-jitter 0.5" ] && echo loose || echo harmony)
      python -m fos.evaluate --data "$EXTRA" --model student --checkpoint "$PHOTO" $p --seeds 0,1,2,3,4 \
        --json "runs/results/photo/coco/photo.$tag.json" | tail -1
      for m in student geometry color imagenet; do
        python -m fos.evaluate --data "$EXTRA" --model "$m" $p --seeds 0,1,2,3,4 \
          --json "runs/results/photo/coco/$m.$tag.json" | tail -1
      done
    done
  fi
fi
