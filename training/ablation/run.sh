#!/usr/bin/env bash
# Ablation for the multi-lab model (issue 9): small runs that add one change at a time,
# all on the lite architecture except the last, with the same sources, validation split,
# schedule and step count; then the table of their own per-lab validation (table.py), and with
# EVALUATE=1 one whole-image evaluation of every final checkpoint, per lab (slow on a CPU).
#   bash training/ablation/run.sh [STEPS] [OUT]      (from the repository root, .venv built)
set -euo pipefail
STEPS=${1:-1200}
OUT=${2:-runs/ablation}
shift $(( $# < 2 ? $# : 2 ))  # the rest: --set overrides for the last run (e-capacity)
PY=${PY:-.venv/bin/python}
CFG=training/configs/faithful.yaml
LITE=(--set 'model.features=32' --set 'model.growth=16' --set 'model.blocks=1')
NOAUG=(--set 'data.augment={}')
COLOUR=(--set 'data.augment={hed: 0.05, brightness: 0.1, contrast: 0.1, saturation: 0.1}')
INPUT=(--set 'data.augment={hed: 0.05, brightness: 0.1, contrast: 0.1, saturation: 0.1, jpeg_range: [75, 95], defocus: 0.6, defocus_p: 0.25}')
COMMON=(--config "$CFG" --data ../shared/data --set "run.epochs=1" --set "run.steps_per_epoch=$STEPS" \
        --set run.threads=1 --set run.max_minutes=null --set run.snapshots=false)
run() { local name=$1; shift; [ -f "$OUT/$name/best.pt" ] || "$PY" training/train.py "${COMMON[@]}" --out "$OUT/$name" "$@"; }
run a-monuseg-only "${LITE[@]}" "${NOAUG[@]}" --set 'data.train_only=[monuseg]'
run b-multilab "${LITE[@]}" "${NOAUG[@]}"
run c-multilab-colour "${LITE[@]}" "${COLOUR[@]}"
run d-multilab-colour-input "${LITE[@]}" "${INPUT[@]}"
# e: the widths of the recorded run (results-300-steps.md); faithful.yaml has since moved to widths in
# multiples of 16 (its header)
run e-capacity --set 'model.features=[48,40,36]' --set 'model.growth=[24,20,18]' "${INPUT[@]}" "$@"
"$PY" training/ablation/table.py "$OUT"/{a-monuseg-only,b-multilab,c-multilab-colour,d-multilab-colour-input,e-capacity} \
    | tee "$OUT/table.md"
[ "${EVALUATE:-0}" = 1 ] || exit 0
"$PY" training/evaluate.py "$OUT"/{a-monuseg-only,b-multilab,c-multilab-colour,d-multilab-colour-input,e-capacity}/last.pt \
    --sources "$CFG" --out "$OUT/evaluation"
