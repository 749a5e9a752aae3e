#!/usr/bin/env bash
# The measurements only a GPU gives, as one prepared script for a 15-minute device slot.
#
#   bash benchmarks/gpu_session.sh --prepare    # here: wheels for the device's Python into
#                                               # .gpu_wheels/ (git-ignored), ~1 minute
#   device run: command "bash benchmarks/gpu_session.sh", carry [".gpu_wheels"], timeout_s 560
#
# On the device (torch and transformers are in its image; the rest comes as wheels) it writes
# under $OUT, each step with its own time limit so a slow one cannot starve the others:
#   env.txt          nvidia-smi, versions
#   gpu_decode.txt   benchmarks/gpu_decode.py: dynamic vs static cache + CUDA graphs vs a bare
#                    forward loop, tiny-qwen-1m/-5m, 1 and 14 processes (issue 19)
#   teacher.txt      benchmarks/teacher_pass.py on the GPU (issue 19)
#   nccl.txt         one nccl rank under torchrun: a 2-step quickstart run through the
#                    data-parallel code on CUDA tensors (issue 17; one GPU holds one rank)
# Run here without --prepare it does the same on the CPU, where the GPU steps say so and exit 0
# (a check of the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    rm -rf .gpu_wheels && mkdir -p .gpu_wheels
    # the device image runs Python 3.12 on x86_64; binary wheels must match it
    python -m pip download --quiet --dest .gpu_wheels --only-binary=:all: \
        --python-version 3.12 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --no-deps pydantic pydantic-core annotated-types typing-inspection typing-extensions \
        bm25s PyStemmer RapidFuzz
    python -m pip wheel --quiet --no-deps --wheel-dir .gpu_wheels .
    ls -1 .gpu_wheels
    du -sh .gpu_wheels
    exit 0
fi

OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
step() {  # step NAME SECONDS COMMAND...: output to $OUT/NAME.txt, with its time and exit code
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "[$name] exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/$name.txt"
}

if [ -d .gpu_wheels ] && command -v nvidia-smi >/dev/null; then
    python -m pip install --quiet --no-deps .gpu_wheels/*.whl 2>&1 | tail -3
fi
{
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
} >"$OUT/env.txt" 2>&1

export HF_HUB_OFFLINE=1 SDAR_BENCH_CACHE=${SDAR_BENCH_CACHE:-/tmp/sdar_cache}
step gpu_decode 240 python benchmarks/gpu_decode.py
step teacher 100 python benchmarks/teacher_pass.py --steps 1 --reps 3 --threads 0

# one nccl rank: 2 steps of GRPO and SDAR from the shipped warm start, no eval until the end
suite=$(mktemp --suffix=.yaml)
sed -e 's/^  steps: 8$/  steps: 2/' -e 's/^seeds: \[0, 1\]$/seeds: [0]/' \
    -e 's/^  every: 4 *$/  every: 2/' -e 's/^  - vanilla .*$//' -e 's/^  - skill_prompt .*$//' \
    suites/quickstart.yaml >"$suite"
step nccl 150 torchrun --standalone --nproc-per-node 1 -m sdar_bench run-rank "$suite" \
    --results "$OUT/nccl_results" --no-mlflow --dist-timeout 120
if [ -d "$OUT/nccl_results" ]; then  # only the files that fit the way back: the tables
    find "$OUT/nccl_results" -name "*.md" -maxdepth 1 -exec cat {} + >>"$OUT/nccl.txt" 2>/dev/null
    rm -rf "$OUT/nccl_results"
fi
ls -l "$OUT"
