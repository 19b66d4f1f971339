#!/bin/bash
# Submits one Noisy Student round as chained Slurm jobs:
#   export (1 task) -> label (array, one task per shard) -> filter (1 task)
#   -> student training (1 GPU task)
# Each job starts only when the previous one succeeded (afterok).
#
#   RUN=runs/my-run ROUND=1 CHECKPOINT=runs/my-run/teacher/checkpoint.safetensors \
#   STUDENT_CONFIG=configs/student.toml bash pipelines/slurm/noisy-student-round.sh
#
# STUDENT_CONFIG is a train config (see docs/pipelines.md) whose [pseudo]
# `labels` points at $RUN/round-$ROUND/filter/pseudo-labels.parquet.
set -euo pipefail

SELFTRAIN=${SELFTRAIN:-target/release/selftrain}
RUN=${RUN:?set RUN, the work folder}
ROUND=${ROUND:-1}
CHECKPOINT=${CHECKPOINT:?set CHECKPOINT, the teacher checkpoint}
STUDENT_CONFIG=${STUDENT_CONFIG:?set STUDENT_CONFIG, the student train config}
NUM_SHARDS=${NUM_SHARDS:-64}
THRESHOLD=${THRESHOLD:-0.3}
PER_CLASS=${PER_CLASS:-2000}
DIR="$RUN/round-$ROUND"
mkdir -p "$DIR" logs

export_job=$(sbatch --parsable --job-name=export --output=logs/export-%j.out \
  --wrap "$SELFTRAIN export --checkpoint $CHECKPOINT --out $DIR/export/teacher.onnx")
label_job=$(sbatch --parsable --dependency=afterok:$export_job --array=0-$((NUM_SHARDS - 1)) \
  --export=ALL,SELFTRAIN=$SELFTRAIN,TEACHER=$DIR/export/teacher.onnx,SHARDS=$DIR/shards,NUM_SHARDS=$NUM_SHARDS \
  "$(dirname "$0")/label-array.sbatch")
filter_job=$(sbatch --parsable --dependency=afterok:$label_job --job-name=filter --output=logs/filter-%j.out \
  --wrap "$SELFTRAIN filter --shards $DIR/shards --out $DIR/filter/pseudo-labels.parquet --threshold $THRESHOLD --per-class $PER_CLASS")
student_job=$(sbatch --parsable --dependency=afterok:$filter_job --job-name=student --gres=gpu:1 \
  --output=logs/student-%j.out \
  --wrap "$SELFTRAIN train --config $STUDENT_CONFIG --out $DIR/student")
echo "round $ROUND: export $export_job, label $label_job, filter $filter_job, student $student_job"
