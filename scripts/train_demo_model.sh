#!/usr/bin/env bash
# Reproduce the shipped demo model (LDAELib/resources/demo_model) from nothing, in one command:
# the synthetic cohort, the three training stages and the probes, the bundle (float16 weights, as
# shipped), its directions oriented by what they render (ldae orient), and the evaluation report on the held-out subjects and the real heads installed here.
# The cost on a 2-core CPU is in docs/training.md ("The demo model"); a CPU with AVX-512 BF16 (or a
# GPU) runs the recipe's bfloat16 autocast natively, others about 3× slower.
#
#   scripts/train_demo_model.sh [OUT_DIR]        # default: demo_run/
#
# Run it again after an interruption: the cohort is kept, training resumes from its checkpoints.
set -euo pipefail
OUT="${1:-demo_run}"
THREADS="${LDAE_THREADS:-2}"
RECIPE="$(python -c 'from LDAELib.training.config import DEMO_RECIPE; print(DEMO_RECIPE)')"
ldae cohort "$OUT/cohort" --subjects 120 --seed 0 --labels --threads "$THREADS"
ldae train all --cohort "$OUT/cohort" --workdir "$OUT/run" --threads "$THREADS" --config "$RECIPE" \
    --output "$OUT/trained_model" --bundle-dtype float16
# state what one unit of each direction renders (and flip one that renders against its label): docs/training.md
[ -e "$OUT/demo_model" ] || ldae orient --workdir "$OUT/run" --model "$OUT/trained_model" --output "$OUT/demo_model" --disease-axis contrast --age-axis contrast --threads "$THREADS"
ldae evaluate --workdir "$OUT/run" --model "$OUT/demo_model" --output "$OUT/evaluation" --threads "$THREADS" --steps 10 20
echo "bundle: $OUT/demo_model   report: $OUT/evaluation/report.md"
