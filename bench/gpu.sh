#!/usr/bin/env bash
# The GPU check, in one go on a machine with one GPU (about 8 minutes on an H200 before step 6 was added):
#
#   make bench-gpu                         # with the project's .venv where there is one
#   PYTHON=python3 OUT=/tmp/gpu bash bench/gpu.sh   # with a Python that already has torch
#
# 1. the checkpointing exactness tests on the GPU (gradients, batch-norm statistics, peak memory);
# 2. bench/checkpointing.py: ResNet-18 at 224, batch 256, per-stage checkpointing, saved bytes and
#    time ratios against the target (at batch 64 an H200 is host-bound; see step 4);
# 3. the course's checkpointing study (config/config.yaml `checkpointing`: ResNet-18/34 at 224,
#    CenterNet at 512) -> $OUT/checkpointing.{csv,md,png};
# 4. bench/checkpointing_profile.py: host against kernel time of a checkpointed step, batches 64, 256;
# 5. bench/engine_throughput.py in bf16 with channels-last (epochs long enough, about 1.5 s on an
#    H200, that the per-epoch costs of both loops do not decide the ratio);
# 6. bench/centernet.py: CenterNet inference with decoding at 512, batch 1 and 32 (beside the paper's
#    142 FPS), and 200 training steps of each decoder (deconv, dcn, unet) at 512, batch 32, bf16.
# Each step has its own time limit and log under $OUT; the exit status is 1 when any step failed.
set -u
PY=${PYTHON:-python3}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start))s"
    [ "$rc" = 0 ] || failed+=("$name")
}

nvidia-smi -L || true
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
"cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU")'

step exactness "${EXACTNESS_LIMIT:-100}" "$PY" -m pytest -q -p no:cacheprovider tests/test_checkpointing.py -k "cuda or gpu"
step bench_checkpointing "${BENCH_LIMIT:-90}" "$PY" bench/checkpointing.py --device cuda --batch 256 --steps 20 --warmup 5
step study "${STUDY_LIMIT:-360}" "$PY" -c '
import sys, yaml
from frelon.studies.checkpointing import run_study
out = sys.argv[1]
settings = yaml.safe_load(open("config/config.yaml"))["checkpointing"]
run_study(settings, "cuda", f"{out}/checkpointing.csv", f"{out}/checkpointing.md", f"{out}/checkpointing.png")
' "$OUT"
step checkpointing_profile "${PROFILE_LIMIT:-120}" "$PY" bench/checkpointing_profile.py --device cuda --batches 64 256
step engine_throughput "${ENGINE_LIMIT:-180}" "$PY" bench/engine_throughput.py --device cuda --precision bf16 \
    --channels-last --images 12000 --size 128 --batch 128 --workers 4 --epochs 3
step centernet "${CENTERNET_LIMIT:-240}" "$PY" bench/centernet.py --device cuda --steps 200

if [ ${#failed[@]} -gt 0 ]; then
    echo "GPU check: failed: ${failed[*]}"
    exit 1
fi
echo "GPU check: all steps passed"
