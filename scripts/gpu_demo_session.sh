#!/usr/bin/env bash
# One call on a GPU machine: the demo model trained within a time budget (scripts/train_demo_gpu.py),
# then the official-size GPU benchmark (benchmarks/bench_engine.py --device cuda). Run from the
# repository root; results go to $OUT. docs/training.md, "Training on a GPU", says how to prepare
# (scripts/prepare_gpu_carry.sh) and how to finish on a CPU (scripts/finish_gpu_stages.sh).
#
# Settings (environment): MINUTES (training stages' wall time, default 4), TRAIN_LIMIT / BENCH_LIMIT
# (hard limits in seconds, default 370 / 150), TRAIN_ARGS (more options for train_demo_gpu.py),
# BENCH_ARGS (replaces the benchmark's options). The stages come back as stages.tar.part-* (pieces
# of 15 MiB: a device returns no file over 16 MiB); cat them into one tar.
set -uo pipefail
OUT=${OUT:-/tmp/ldae-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/ldae-site${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu/mricron ] && export LDAE_MRICRON_TEMPLATES="$PWD/.gpu/mricron"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/ldae-site .whl/*.whl || exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available(), 'cores', __import__('os').cpu_count())"

rm -rf /tmp/ldae-stages
limit=${TRAIN_LIMIT:-370}
timeout "$limit" python3 scripts/train_demo_gpu.py --work /tmp/ldae-run --out /tmp/ldae-stages \
  --minutes "${MINUTES:-4}" --by $((limit * 85 / 100)) ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/train.log"
echo "training: exit ${PIPESTATUS[0]}"
if [ -d /tmp/ldae-stages ]; then
  (cd /tmp/ldae-stages && tar cf - . | split -b 15m - "$OUT/stages.tar.part-")
fi

timeout "${BENCH_LIMIT:-150}" python3 benchmarks/bench_engine.py ${BENCH_ARGS:---device cuda --modes float32 bfloat16 --steps 10 \
  --stages aekl_encode aekl_decode semantic unet_step edit_cold edit_warm --no-fixture --quiet-wait 0} \
  --out "$OUT/bench_cuda.json" --md "$OUT/bench_cuda.md" 2>&1 | tail -40
echo "benchmark: exit ${PIPESTATUS[0]}"
