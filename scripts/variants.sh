#!/usr/bin/env bash
# The student variants of the README's "A student that sees the box": each trained checkpoint on
# msrc-fos test with loose boxes and on the matched protocol, with and without its geometry term
# (5 box seeds each), then the table. JSON per run in runs/variants/.
#   bash scripts/variants.sh NAME=MODEL:CHECKPOINT [NAME=MODEL:CHECKPOINT ...]
# e.g. bash scripts/variants.sh ctx-pair=student:runs/student-ctx-pair/student.safetensors
set -euo pipefail
DATA=${DATA:-../shared/data/msrc-fos}
OUT=${OUT:-runs/variants}
SEEDS=${SEEDS:-0,1,2,3,4}  # box seeds
mkdir -p "$OUT"
names=()
for spec in "$@"; do
  name=${spec%%=*}; rest=${spec#*=}; model=${rest%%:*}; ckpt=${rest#*:}
  names+=("$name")
  for ao in "" "--appearance-only"; do
    tag=$name${ao:+.appearance}
    python -m fos.evaluate --data "$DATA" --model "$model" --checkpoint "$ckpt" $ao --box-jitter 0.5 \
      --seeds "$SEEDS" --json "$OUT/$tag.loose.json" | tail -1
    python -m fos.evaluate --data "$DATA" --model "$model" --checkpoint "$ckpt" $ao --protocol matched \
      --seeds "$SEEDS" --json "$OUT/$tag.matched.json" | tail -1
  done
done
python scripts/variants_table.py "$OUT" "${names[@]}"
