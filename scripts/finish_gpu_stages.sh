#!/usr/bin/env bash
# Here, after a GPU call of scripts/gpu_demo_session.sh: the stages it trained, taken into a work
# folder on this machine, then the probes and a float16 bundle (CPU work).
#   scripts/finish_gpu_stages.sh FILES_DIR COHORT RUN
# FILES_DIR holds stages.tar.part-*; COHORT is the same cohort (ldae cohort COHORT --subjects 120
# --seed 0 --labels makes identical files); RUN is a new work folder. The bundle goes to RUN/bundle.
set -euo pipefail
files=$1 cohort=$2 run=$3
stages=$run.stages
mkdir -p "$stages"
cat "$files"/stages.tar.part-* | tar xf - -C "$stages"
for s in autoencoder ddpm representation; do
  if [ -f "$stages/$s.safetensors" ]; then
    ldae train "$s" --cohort "$cohort" --workdir "$run" --config "$stages/recipe.json" --load-stage "$stages/$s.safetensors"
  fi
done
ldae train all --cohort "$cohort" --workdir "$run" --config "$stages/recipe.json" --bundle-dtype float16
