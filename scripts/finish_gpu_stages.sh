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
# Stages the GPU run took from hand-over files (train_demo_gpu.py --load; paths as given there, from
# the repository root) are loaded from the same files here, before the ones it trained.
repo=$(cd "$(dirname "$0")/.." && pwd)
for s in autoencoder ddpm representation; do
  from=$(python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("loaded", {}).get(sys.argv[2], ""))' "$stages/gpu_training.json" "$s")
  [ -n "$from" ] && [ "${from:0:1}" != / ] && from="$repo/$from"
  [ -f "$stages/$s.safetensors" ] && from="$stages/$s.safetensors"
  if [ -n "$from" ]; then
    ldae train "$s" --cohort "$cohort" --workdir "$run" --config "$stages/recipe.json" --load-stage "$from"
  fi
done
ldae train all --cohort "$cohort" --workdir "$run" --config "$stages/recipe.json" --bundle-dtype float16
