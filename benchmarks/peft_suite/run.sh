#!/usr/bin/env bash
# PEFT 0.21.2's own generic tests with GenFT and WeGeFT rows (a measurement; see README.md).
#
#   bash benchmarks/peft_suite/run.sh [CHECKOUT] [LABEL]
#
# CHECKOUT: the genft_tune checkout to measure (put first on PYTHONPATH; default: this
# repository). LABEL: names the work folder $PEFT_SUITE_WORK/LABEL (default: "run").
# Environment: PYTHON (default: this repository's .venv/bin/python), PEFT_SUITE_CACHE
# (sdist + pytest-timeout, default /tmp/peft_suite_cache), PEFT_SUITE_WORK (default
# /tmp/genft_peft_suite), PEFT_SUITE_FILES (default: test_custom_models.py and
# test_decoder_models.py), PEFT_SUITE_K (pytest -k, default: our rows on the locally
# built decoders), PEFT_SUITE_STRICT=1 (none of PEFT's shared-method skips for ours),
# PEFT_SUITE_TIMEOUT (whole run, seconds, default 1500), PEFT_SUITE_TEST_TIMEOUT
# (per test, default 120).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CHECKOUT="$(cd "${1:-$REPO}" && pwd)"
LABEL="${2:-run}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
CACHE="${PEFT_SUITE_CACHE:-/tmp/peft_suite_cache}"
WORK="${PEFT_SUITE_WORK:-/tmp/genft_peft_suite}/$LABEL"
PEFT_VERSION=0.21.2
FILES="${PEFT_SUITE_FILES:-tests/test_custom_models.py tests/test_decoder_models.py}"
# our rows; the decoder models PEFT loads that are not built here (GPT-J, Gemma3) are left out
K="${PEFT_SUITE_K:-(GenFT or WeGeFT) and not GPTJ and not Gemma3}"

mkdir -p "$CACHE"
SDIST="$CACHE/peft-$PEFT_VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then  # the sdist ships tests/ (the wheel does not)
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "peft==$PEFT_VERSION" -d "$CACHE"
fi
if [ ! -f "$CACHE/deps/pytest_timeout.py" ]; then
    "$PYTHON" -m pip install --quiet --target "$CACHE/deps" --no-deps pytest-timeout \
        || echo "run.sh: pytest-timeout not installed: only the whole-run timeout applies" >&2
fi

# PEFT_SUITE_OVERLAY: pip specs put first on PYTHONPATH (no deps), e.g. "torchao==0.15.0"
# to measure an old checkout in the environment it pinned, after the venv moved on
OVERLAY_PATH=""
if [ -n "${PEFT_SUITE_OVERLAY:-}" ]; then
    OVERLAY_PATH="$CACHE/overlay/$(echo "$PEFT_SUITE_OVERLAY" | tr -c 'A-Za-z0-9.=\n' '_')"
    if [ ! -d "$OVERLAY_PATH" ]; then
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install --quiet --target "$OVERLAY_PATH" --no-deps $PEFT_SUITE_OVERLAY
    fi
    OVERLAY_PATH="$OVERLAY_PATH:"
fi

rm -rf "$WORK"
mkdir -p "$WORK/stubs/diffusers"
tar xzf "$SDIST" -C "$WORK"
SUITE="$WORK/peft-$PEFT_VERSION"
# testing_common imports diffusers' StableDiffusionPipeline at the top, for PEFT's Stable
# Diffusion tests (not run here) and isinstance checks: a stub class instead of diffusers
printf 'class StableDiffusionPipeline:  # genft-tune harness stub: nothing is one\n    pass\n' \
    > "$WORK/stubs/diffusers/__init__.py"

STRICT=()
[ "${PEFT_SUITE_STRICT:-0}" = 1 ] && STRICT=(--strict)
"$PYTHON" "$HERE/add_rows.py" "$SUITE/tests" "${STRICT[@]}"
"$PYTHON" "$HERE/tiny_models.py" "$WORK/models"

export PYTHONPATH="$OVERLAY_PATH$CHECKOUT:$WORK/stubs:$CACHE/deps"
export GENFT_PEFT_SUITE_MODELS="$WORK/models" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HF_HOME="$WORK/hf_home" TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
COMMIT="$(git -C "$CHECKOUT" rev-parse --short HEAD 2>/dev/null || echo '?')"
DIRTY="$(git -C "$CHECKOUT" status --porcelain --untracked-files=no 2>/dev/null | wc -l)"
echo "genft_tune from: $("$PYTHON" -c 'import genft_tune, os; print(os.path.dirname(genft_tune.__file__))')" \
    "(commit $COMMIT, $DIRTY modified tracked files)"
"$PYTHON" -c 'import peft, transformers, torch, torchao; print("peft", peft.__version__, "transformers", transformers.__version__, "torch", torch.__version__, "torchao", torchao.__version__)'

TIMEOUT_ARGS=()
if [ -f "$CACHE/deps/pytest_timeout.py" ]; then  # its entry point loads it (PYTHONPATH)
    TIMEOUT_ARGS=(--timeout "${PEFT_SUITE_TEST_TIMEOUT:-120}")
fi

cd "$SUITE"
START=$(date +%s)
set +e
# PEFT's own pytest settings (filterwarnings, markers) apply, less its coverage addopts and
# two warnings: PEFT 0.21.2's PeftModel.__init__ reads transformers 5.23's deprecated
# is_gradient_checkpointing and its testing_common calls the deprecated
# gradient_checkpointing_enable; PEFT's "error::FutureWarning:transformers" turns these into
# failures of every decoder test of every method, PEFT's LoRA and VeRA included (checked)
nice -n 10 timeout "${PEFT_SUITE_TIMEOUT:-1500}" "$PYTHON" -m pytest $FILES -k "$K" \
    -p no:randomly -p no:cacheprovider -o addopts="" -q -rs "${TIMEOUT_ARGS[@]}" \
    -W "ignore:\`is_gradient_checkpointing\` is deprecated:FutureWarning" \
    -W "ignore:\`gradient_checkpointing_enable\` is deprecated:FutureWarning" \
    --junitxml="$WORK/junit.xml" > "$WORK/pytest.log" 2>&1
RC=$?
set -e
echo "pytest exit $RC in $(( $(date +%s) - START )) s; log: $WORK/pytest.log"
tail -n 3 "$WORK/pytest.log"
"$PYTHON" "$HERE/summarize.py" "$WORK/junit.xml" "$WORK/summary.json" | tee "$WORK/summary.txt"
