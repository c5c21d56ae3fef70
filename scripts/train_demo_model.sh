#!/usr/bin/env bash
# Reproduce the shipped demo model (LDAELib/resources/demo_model) from nothing, in one command:
# the synthetic cohort, the three training stages and the probes, the bundle, and the evaluation
# report on the held-out subjects. About 75 minutes on a 2-core CPU (docs/training.md).
#
#   scripts/train_demo_model.sh [OUT_DIR]        # default: demo_run/
#
# Run it again after an interruption: the cohort is kept, training resumes from its checkpoints.
set -euo pipefail
OUT="${1:-demo_run}"
THREADS="${LDAE_THREADS:-2}"
ldae cohort "$OUT/cohort" --subjects 80 --seed 0 --labels --threads "$THREADS"
ldae train all --cohort "$OUT/cohort" --workdir "$OUT/run" --threads "$THREADS" \
    --config "$(python -c 'from LDAELib.training.config import DEMO_RECIPE; print(DEMO_RECIPE)')"
ldae evaluate --workdir "$OUT/run" --output "$OUT/evaluation" --threads "$THREADS"
echo "bundle: $OUT/run/bundle   report: $OUT/evaluation/report.md"
