#!/usr/bin/env bash
# Score a large image archive as a Slurm job array: task I of N scores the files whose path hash
# falls in shard I/N into $OUT.part-I-of-N.csv. Merge once every task has finished:
#
#   jid=$(sbatch --parsable --array=0-7 deploy/slurm/score-array.sh)
#   sbatch --dependency=afterok:$jid --wrap \
#     "tlearn-score merge --out $OUT $(printf "$OUT.part-%d-of-8.csv " $(seq 0 7))"
#
# The merged file is byte for byte what one unsharded run writes. A preempted task resumes from
# its journal when requeued. Settings come from the environment (defaults below).
#SBATCH --job-name=tlearn-score
#SBATCH --cpus-per-task=8
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=tlearn-score-%A_%a.log
set -euo pipefail
: "${SLURM_ARRAY_TASK_ID:?run this as a job array (sbatch --array=0-N-1)}"
N="${SLURM_ARRAY_TASK_COUNT:-$((SLURM_ARRAY_TASK_MAX - SLURM_ARRAY_TASK_MIN + 1))}"
BIN="${TLEARN_BIN:-target/release}"
INPUT="${INPUT:?set INPUT to the folder (or list file with --list) to score}"
MODEL="${MODEL:-runs/demo/model.onnx}"
OUT="${OUT:-scores.csv}"
exec "$BIN/tlearn-score" "$INPUT" --model "$MODEL" --out "$OUT.part-$SLURM_ARRAY_TASK_ID-of-$N.csv" \
    --shard "$SLURM_ARRAY_TASK_ID/$N" --threads "${SLURM_CPUS_PER_TASK:-0}" ${SCORE_ARGS:-}
