#!/usr/bin/env bash
# Everything here that needs a CUDA GPU, in one command, meant to finish in under 8 minutes
# on one H100/H200 (written in a session without a GPU: not yet run in this form; the
# parts it chains before the fused kernels each ran on an H100 in session 2):
# the `gpu` tests (float8 + compile on CUDA, activation offloading, NCCL, CUDA memory stats,
# torchao optimizers, NF4; the fused generator's compiled Triton kernels against fp64 and
# the eager path, bf16, FSDP2) and two speed/memory tables (Llama-3.2-1B, all 16 layers, at
# 8k tokens/step; Llama-2-7B truncated to 8 layers at 2k), q and v adapted, for LoRA r16,
# DoRA r16, GenFT dense (eager, eager + recompute, fused), GenFT low-rank and WeGeFT.
#
# Usage, from the repo root of a machine whose Python has a CUDA torch:
#     bash benchmarks/gpu_checks.sh OUTDIR [compiled]
# torchtune 0.6.1, torchao 0.15.0, omegaconf, torchdata, datasets, ... are used from the
# environment, or installed from wheels in .whl/ when torchtune is missing (download them
# here with `pip download --no-deps` for the GPU machine's Python; see benchmarks/README.md).
# Triton comes with CUDA torch (2.13.0 pins triton 3.7.1). `compiled` adds the torch.compile
# 7B table (a few more minutes). Every result lands in OUTDIR, and the speed tables (JSON and
# text) are copied to benchmarks/results/ with the GPU's name in the file name; a failing
# part does not stop the others.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_checks.sh OUTDIR [compiled]}
extra=${2:-}
mkdir -p "$out"

if ! python3 -c "import torchtune" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "torchtune missing and .whl/ unusable" >&2; exit 1; }
    export PYTHONPATH=/tmp/site
fi
# the package and the recipes (top-level modules once installed) from this checkout
export PYTHONPATH="$PWD:$PWD/recipes${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, torchtune, torchao, triton; print('torch', torch.__version__, 'torchtune', torchtune.__version__, 'torchao', torchao.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oiE 'h100|h200|a100|l40s|l4' | head -1 | tr 'A-Z' 'a-z')
gpu=${gpu:-gpu}

# Time limits keep the whole run under 8 minutes; the first Triton compiles take seconds each.
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_fused_generator.py \
    2>&1 | tee "$out/pytest_gpu_fused.log"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_recipes_gpu.py \
    2>&1 | tee "$out/pytest_gpu.log"

variants=lora_r16,dora_r16,genft_dense,genft_dense_recompute,genft_dense_fused,genft_lowrank,wegeft
speed() {  # name, then speed_memory.py arguments
    local name=$1
    shift
    timeout 100 python3 benchmarks/speed_memory.py --device cuda --dtype bf16 --steps 10 --warmup 3 \
        --decode-tokens 16 --prompt-len 64 --out "$out/speed_$name.json" "$@" 2>&1 | tee "$out/speed_$name.txt"
    mkdir -p benchmarks/results
    for ext in json txt; do
        [ -f "$out/speed_$name.$ext" ] && cp "$out/speed_$name.$ext" "benchmarks/results/speed_${name}_$gpu.$ext"
    done
}
speed llama3_2_1b_16l_8k_qv --shape llama3_2_1b --tokens 8192 --seq-len 2048 --variants "$variants"
speed llama2_7b_8l_2k_qv --shape llama2_7b --layers 8 --tokens 2048 --seq-len 2048 --variants "$variants"
if [ "$extra" = compiled ]; then
    speed llama2_7b_8l_2k_qv_compiled --shape llama2_7b --layers 8 --tokens 2048 --seq-len 2048 --compile \
        --variants lora_r16,genft_dense_recompute,genft_dense,genft_dense_fused,genft_lowrank
fi
echo "results in $out (speed tables also in benchmarks/results/speed_*_$gpu.*)"
