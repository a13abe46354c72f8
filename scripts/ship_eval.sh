#!/usr/bin/env bash
# The ship rule's evaluation (README, "The cached-trunk models"): the candidate teacher and student in $NEW
# and the shipped ones in $OLD, with the chance level and the no-training controls, on the test split of
# every source: harmony, matched and loose boxes (5 box seeds each). The teachers are scored alone on the
# harmony and matched protocols (3 box seeds, $TSEEDS) and, with loose boxes, as the search uses them: reranking the student's
# top 3 (scoring every pair of ccp-person's 234 x 234 would take hours on 2 cores). JSON per run in $OUT;
# then `python scripts/ship_table.py $OUT` prints the pooled tables, the targets and the rule's verdict.
# JOBS runs that many evaluations at once (each on FOS_THREADS threads).
set -euo pipefail
NEW=${NEW:-runs/cached}
OLD=${OLD:-weights}
OUT=${OUT:-runs/ship}
SEEDS=${SEEDS:-0,1,2,3,4}
TSEEDS=${TSEEDS:-0,1,2}  # the teachers alone (harmony, matched): one full forward per pair, 3 box seeds
JOBS=${JOBS:-2}
SOURCES=${SOURCES:-"msrc=../shared/data/msrc-fos coco128=runs/coco128-fos coco-extra=runs/coco-extra-fos ccp-person=runs/ccp-person-fos"}
export FOS_THREADS=${FOS_THREADS:-1}
mkdir -p "$OUT"
jobs_file=$(mktemp)
for s in $SOURCES; do
  name=${s%%=*}; data=${s#*=}
  [ -d "$data/test" ] || { echo "no $data/test: convert the source first (README, Bring your own data)" >&2; exit 2; }
  for proto in harmony matched loose; do
    case $proto in loose) P="--box-jitter 0.5";; matched) P="--protocol matched --max-candidates 5";; *) P="--protocol $proto";; esac
    run() { local j=$OUT/$name.$proto.$tag.json; echo "test -f $j || python -m fos.evaluate --data $data $P --seeds ${S:-$SEEDS} $* --json $j"; }
    tag=new.student; run --model student --weights "$NEW"
    tag=old.student; run --model student --weights "$OLD"
    # the controls: no training (random, aspect, geometry, color), or ImageNet features untrained for this
    # (imagenet: on harmony its cost buys nothing the rule reads); the appearance-only student with loose boxes
    for b in random aspect geometry color; do tag=$b; run --model $b; done
    [ "$proto" = harmony ] || { tag=imagenet; run --model imagenet; }
    [ "$proto" = loose ] && { tag=new.student.appearance; run --model student --weights "$NEW" --appearance-only; }
    if [ "$proto" = loose ]; then
      tag=new.rerank; run --model student --weights "$NEW" --rerank 3 --composite fit
      tag=old.rerank; run --model student --weights "$OLD" --rerank 3 --composite fit
    else
      tag=new.teacher; S=$TSEEDS run --model teacher --weights "$NEW" --composite fit
      tag=old.teacher; S=$TSEEDS run --model teacher --weights "$OLD"
    fi
  done >> "$jobs_file"
done
[ -z "${DRY:-}" ] || { cat "$jobs_file"; rm -f "$jobs_file"; exit 0; }  # DRY=1: print the runs only
# the slow ones first, so that the two queues end together
{ grep -E 'teacher|rerank' "$jobs_file"; grep -vE 'teacher|rerank' "$jobs_file"; } | xargs -P "$JOBS" -I{} sh -c '{} > /dev/null 2>&1 || echo "FAILED: {}"'
rm -f "$jobs_file"
python scripts/ship_table.py "$OUT"
