#!/usr/bin/env bash
# Every GPU benchmark in one short run, for a machine that has torch, triton and transformers but not
# diffusers or sparsify: those come as wheels in .whl/ (see README, "GPU figures"). Figures and logs go
# to $OUT (default /tmp/gpu-session). The MiniCanvas precision check needs a trained study's SAEs and
# recipes in .gpu/saes and .gpu/recipes (it is skipped without them).
#
#   bash benchmarks/gpu_session.sh                       # on the GPU machine
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_session.sh    # the same steps at toy size, to check the script
set -uo pipefail
OUT=${OUT:-/tmp/gpu-session}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
PY=${PYTHON:-python3}
if [ -d .whl ] && ! $PY -c "import diffusers, sparsify" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
log="$OUT/session.log"
{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
} 2>&1 | tee "$log"

if [ -n "${QUICK:-}" ]; then
    sae_args=(--shape tiny --quality_steps 20 --rounds 1)
    overhead_args=(--setting minicanvas --steps 3 --rounds 1 --dtype float32)
    precision_args=(--dtypes float32 bfloat16 --seeds 1001)
    sd15_args=(--shape tiny --steps 5 --prompts 8 --train_steps 20)
else
    sae_args=(--profile)
    overhead_args=(--setting sd15 --setting minicanvas --dtype float16)
    precision_args=(--dtypes float32 float16 bfloat16 --seeds 1001 1002 1003 1004 1005)
    sd15_args=()
fi
status=0
run() {
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$log"
    local started=$SECONDS
    "$@" 2>&1 | grep -v -e "^Loading" -e "should be kept in float32" | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - started)) s" | tee -a "$log"
    [ "$rc" -eq 0 ] || status=1
}
run sae_step $PY benchmarks/sae_step.py --device "$DEVICE" --out "$OUT/sae_step.json" "${sae_args[@]}"
run sd15_shape $PY benchmarks/sd15_shape.py --device "$DEVICE" --out "$OUT/sd15_shape.json" "${sd15_args[@]}"
run unlearn_overhead $PY benchmarks/unlearn_overhead.py --device "$DEVICE" --out "$OUT/unlearn_overhead.json" "${overhead_args[@]}"
if [ -d .gpu/saes ] && [ -d .gpu/recipes ]; then
    run edit_precision $PY benchmarks/edit_precision.py --device "$DEVICE" --saes .gpu/saes --recipes .gpu/recipes \
        --out "$OUT/edit_precision.json" "${precision_args[@]}"
fi
exit $status
