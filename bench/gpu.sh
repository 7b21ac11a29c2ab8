#!/usr/bin/env bash
# The GPU benchmarks, one command on a machine with one GPU (H100/H200), within 10 minutes:
#
#   make bench-gpu                                   # with the project's .venv where there is one
#   PYTHON=python3 OUT=/tmp/gpu bash bench/gpu.sh    # any Python with torch and torchvision
#   bash bench/gpu.sh --smoke                        # (or SMOKE=1) every step, tiny, on the CPU
#
# Needs only torch and torchvision (frelon runs from src/ through PYTHONPATH); a step that needs
# more (pandas, PyYAML, tqdm for the engine; pycocotools; snakemake; pytest) is skipped with the
# reason. In order, each with its own time limit, all within BUDGET seconds (570; a step that would
# start with less than 20 s left is skipped, the last two need their whole limit):
#   gpu_throughput        bf16 matmul TFLOP/s; ResNet-18 training at 224, bf16, channels-last,
#                         eager and compiled, and the fraction of the matmul rate it reaches
#   checkpointing         per-stage vs none at 224, batch 64 and 256; then compiled variants (whole:
#                         train.compile, the GPU default; cudagraphs, segments), none started after 150 s
#   engine_classification engine vs bare loop vs one batch kept on the GPU, ResNet-18 at 224 on 12,000
#                         prepared images
#   engine_detection      the same, CenterNet at 512 on 1,500 generated COCO-layout images
#   input_pipeline        frelon's loaders vs ImageFolder/PIL with this machine's cores less two, and
#                         loader images/s / training images/s at 224 and 512
#   centernet             inference with decoding at 512, batch 1 and 32, beside the paper's 142
#                         FPS, and batch 1 as one CUDA graph replay (`frelon detect`'s way, target
#                         710 images/s); 30 training steps of each decoder
#   coco_eval             COCO evaluation of 5,000 images' detections (CPU, needs pycocotools)
#   pipeline_overhead     snakemake -n on the course config (needs snakemake)
#   checkpointing_profile host against kernel time of a checkpointed step, batch 64 and 256
#   exactness             the tests' CUDA cases (checkpointing, batched augmentation, detection input and
#                         targets, the CUDA-graph detector; needs pytest)
# STUDY=1 adds the course's checkpointing study (config/config.yaml, about 4.5 minutes: over the
# budget, so raise BUDGET too). Logs and <step>.json under $OUT (bench/out), then
# bench/summary.py prints the table and writes summary.{json,md}. Exit 1 when a step broke or
# ran out of time (a missed target is in the table, not the exit status).
# shellcheck disable=SC2086  # the option strings below are split into words on purpose
set -u
[ "${1:-}" = --smoke ] && SMOKE=1
SMOKE=${SMOKE:-0}
PY=${PYTHON:-python3}
OUT=${OUT:-bench/out}
BUDGET=${BUDGET:-$([ "$SMOKE" = 1 ] && echo 1800 || echo 570)}
SCALE=$([ "$SMOKE" = 1 ] && echo 3 || echo 1)  # the CPU compiles slower than any GPU host
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/summary.md
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 BENCH_OUT="$OUT"
failed=()

# record NAME EXIT LAST-LINE: a result file for a step that wrote none (pytest, a crash, a timeout),
# or a note added to the one it wrote before its time ran out
record() {
    "$PY" - "$OUT/$1.json" "$1" "$2" "$3" <<'EOF'
import json, os, sys
path, name, code, last = sys.argv[1:]
result = json.load(open(path)) if os.path.exists(path) else {"bench": name, "name": name, "status": "ok", "rows": []}
ended = {"124": "timed out", "137": "killed at its time limit", "skipped": "skipped"}.get(code, f"exit {code}")
status = "pass" if code == "0" else "skipped" if code == "skipped" else "fail"
if code != "0" or not result["rows"]:
    result["rows"].append({"metric": f"{name}: step", "value": f"{ended}: {last}"[:200], "unit": "",
                           "target": None, "status": status})
json.dump(result, open(path, "w"), indent=1)
EOF
}

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$(($2 * SCALE)) left=$((BUDGET - SECONDS))
    shift 2
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left"
        record "$name" skipped "budget of ${BUDGET}s spent"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s, ${left}s of the budget left)"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 3 "$OUT/$name.log" | cut -c 1-300
    echo "== $name: exit $rc after $((SECONDS - start))s"
    if [ "$rc" != 0 ] || [ ! -f "$OUT/$name.json" ]; then
        record "$name" "$rc" "$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1)"
    fi
    [ "$rc" = 0 ] || failed+=("$name")
}

if_time() {  # if_time SECONDS NAME COMMAND...: step NAME SECONDS COMMAND... when the budget holds SECONDS
    local need=$(($1 * SCALE)) name=$2
    shift 2
    if [ $((BUDGET - SECONDS)) -lt "$need" ]; then
        echo "== $name: skipped, needs ${need}s, $((BUDGET - SECONDS))s of the budget left"
        record "$name" skipped "needs ${need}s, $((BUDGET - SECONDS))s of the ${BUDGET}s budget left"
    else
        step "$name" $((need / SCALE)) "$@"
    fi
}

command -v nvidia-smi > /dev/null && nvidia-smi -L
"$PY" -c 'import os, torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
"cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU",
"cpus", len(os.sched_getaffinity(0)))' || exit 1

if [ "$SMOKE" = 1 ]; then
    echo "SMOKE: every step on the CPU with tiny sizes; the figures mean nothing"
    D=cpu W=2
    GPU_THROUGHPUT="--matmul 256 --size 32 --batch 4 --steps 2 --warmup 2"
    ENGINE_CLS="--precision bf16 --channels-last --images 64 --size 32 --batch 16 --epochs 2 --rounds 1"
    ENGINE_DET="--precision bf16 --channels-last --images 16 --size 64 --batch 8 --epochs 2 --rounds 1"
    INPUT="--images 100 --detection-images 16 --epochs 1 --train-batch 4 --detection-train-batch 2"
    CENTERNET="--size 64 --batches 1 2 --iterations 1 --train-batch 2 --steps 1"
    CHECKPOINTING="--size 32 --batches 2 4 --steps 2 --warmup 3 --rounds 1 --compile-batches 2"
    PROFILE="--size 32 --batches 2 --steps 2"
    COCO="--images 200"
    CHECKPOINTING_DEADLINE=1000
else
    D=cuda W=$("$PY" -c 'import os; print(max(1, len(os.sched_getaffinity(0)) - 2))')  # 2 cores for the trainer
    GPU_THROUGHPUT=""
    ENGINE_CLS="--precision bf16 --channels-last --images 12000 --size 224 --batch 128 --epochs 3 --rounds 1"
    ENGINE_DET="--precision bf16 --channels-last --images 1500 --size 512 --batch 32 --epochs 3 --rounds 1"
    INPUT="--images 3000 --detection-images 800 --epochs 3"
    CENTERNET="--iterations 30 --steps 30"
    CHECKPOINTING="--batches 64 256 --steps 20 --warmup 5"
    PROFILE="--batches 64 256 --steps 10"
    COCO=""
    CHECKPOINTING_DEADLINE=150
fi

# the option strings are split into words on purpose
step gpu_throughput 120 "$PY" bench/gpu_throughput.py --device $D $GPU_THROUGHPUT
# compiled variants in this order (whole first: frelon's train.compile, what a GPU run does by default); none
# starts after CHECKPOINTING_DEADLINE seconds, and one takes about a minute to compile and time on a GPU host
step checkpointing 210 "$PY" bench/checkpointing.py --device $D $CHECKPOINTING \
    --compile whole cudagraphs segments --deadline "$CHECKPOINTING_DEADLINE"
step engine_classification 150 "$PY" bench/engine_throughput.py --device $D --workers $W $ENGINE_CLS
step engine_detection 100 "$PY" bench/engine_throughput.py --task detection --device $D --workers $W $ENGINE_DET
step input_pipeline 120 "$PY" bench/input_pipeline.py --device $D --workers $W $INPUT
step centernet 90 "$PY" bench/centernet.py --device $D $CENTERNET
step coco_eval 120 "$PY" bench/coco_eval.py $COCO
step pipeline_overhead 60 "$PY" bench/pipeline_overhead.py --repeat 1
# diagnostics, only where the budget still holds their whole limit
if_time 60 checkpointing_profile "$PY" bench/checkpointing_profile.py --device $D $PROFILE
if ! "$PY" -c 'import pytest' 2> /dev/null; then
    record exactness skipped "needs pytest, not installed in this Python"
else
    if_time 100 exactness "$PY" -m pytest -q -p no:cacheprovider tests/test_checkpointing.py \
        tests/test_batch_augment.py tests/test_transforms.py tests/test_centernet_targets.py \
        tests/test_detect_fast.py -k "cuda or gpu"
fi
if [ "${STUDY:-0}" = 1 ]; then
    step study 360 "$PY" -c '
import sys, yaml
from frelon.studies.checkpointing import run_study
out = sys.argv[1]
settings = yaml.safe_load(open("config/config.yaml"))["checkpointing"]
run_study(settings, sys.argv[2], f"{out}/checkpointing.csv", f"{out}/checkpointing.md", f"{out}/checkpointing.png")
' "$OUT" "$D"
fi

echo "== all steps in $((SECONDS))s"
"$PY" bench/summary.py --out "$OUT" --command "bench/gpu.sh$([ "$SMOKE" = 1 ] && echo ' --smoke')"
if [ ${#failed[@]} -gt 0 ]; then
    echo "GPU benchmarks: broke or ran out of time: ${failed[*]}"
    exit 1
fi
