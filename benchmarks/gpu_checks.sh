#!/usr/bin/env bash
# Everything here that needs a CUDA GPU, in one command (written in a session without a GPU:
# not yet run; the parts it chains each ran on an H100 in session 2):
# the `gpu` tests (float8 + compile on CUDA, activation offloading, NCCL, CUDA memory stats,
# torchao optimizers, NF4) and the speed/memory tables of benchmarks/README.md (Llama-3.2-1B
# at 8k tokens/step, Llama-2-7B 8 layers at 2k, eager and compiled).
#
# Usage, from the repo root of a machine whose Python has a CUDA torch:
#     bash benchmarks/gpu_checks.sh OUTDIR [quick]
# torchtune 0.6.1, torchao 0.15.0, omegaconf, torchdata, datasets, ... are used from the
# environment, or installed from wheels in .whl/ when torchtune is missing (download them
# here with `pip download --no-deps` for the GPU machine's Python; see benchmarks/README.md).
# `quick` skips the compiled speed runs. Every result lands in OUTDIR; a failing part does
# not stop the others.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_checks.sh OUTDIR [quick]}
quick=${2:-}
mkdir -p "$out"

if ! python3 -c "import torchtune" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "torchtune missing and .whl/ unusable" >&2; exit 1; }
    export PYTHONPATH=/tmp/site
fi
# the package and the recipes (top-level modules once installed) from this checkout
export PYTHONPATH="$PWD:$PWD/recipes${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, torchtune, torchao; print('torch', torch.__version__, 'torchtune', torchtune.__version__, 'torchao', torchao.__version__)" | tee -a "$out/gpu.txt"

python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_recipes_gpu.py 2>&1 | tee "$out/pytest_gpu.log"

speed() {  # name, then speed_memory.py arguments
    local name=$1
    shift
    python3 benchmarks/speed_memory.py --device cuda --dtype bf16 --steps 10 --warmup 3 \
        --decode-tokens 32 --prompt-len 64 --out "$out/speed_$name.json" "$@" 2>&1 | tee "$out/speed_$name.txt"
}
speed llama3_2_1b_qv --shape llama3_2_1b --tokens 8192 --seq-len 2048
speed llama2_7b_8l_qv --shape llama2_7b --layers 8 --tokens 2048 --seq-len 2048
if [ "$quick" != quick ]; then
    speed llama2_7b_8l_qv_compiled --shape llama2_7b --layers 8 --tokens 2048 --seq-len 2048 --compile \
        --variants lora_r16,genft_dense_recompute,genft_dense,genft_lowrank
fi
echo "results in $out"
