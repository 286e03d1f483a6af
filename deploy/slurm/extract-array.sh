#!/usr/bin/env bash
# Extract backbone features as a Slurm job array: task I of N caches the files whose path hash
# falls in shard I/N into $OUT/shard-I-of-N/. Merge once every task has finished:
#
#   jid=$(sbatch --parsable --array=0-7 deploy/slurm/extract-array.sh)
#   sbatch --dependency=afterok:$jid --wrap "tlearn-extract merge --out $OUT"
#
# A task that is preempted or killed resumes where it stopped when requeued (--requeue):
# extraction journals its progress. Settings come from the environment (defaults below).
#SBATCH --job-name=tlearn-extract
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=tlearn-extract-%A_%a.log
set -euo pipefail
: "${SLURM_ARRAY_TASK_ID:?run this as a job array (sbatch --array=0-N-1)}"
N="${SLURM_ARRAY_TASK_COUNT:-$((SLURM_ARRAY_TASK_MAX - SLURM_ARRAY_TASK_MIN + 1))}"
BIN="${TLEARN_BIN:-target/release}"
DATA="${DATA:-data/elpv}"
BACKBONE="${BACKBONE:-vgg16}"
SIZE="${SIZE:-150}"
OUT="${OUT:-features/$(basename "$DATA")/$BACKBONE-$SIZE}"
exec "$BIN/tlearn-extract" --data "$DATA" --backbone "$BACKBONE" --size "$SIZE" --out "$OUT" \
    --shard "$SLURM_ARRAY_TASK_ID/$N" --threads "${SLURM_CPUS_PER_TASK:-0}" ${EXTRACT_ARGS:-}
