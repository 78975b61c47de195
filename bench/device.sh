#!/usr/bin/env bash
# The GPU check, in one command: the `cuda` tests, then the device benchmark (a Markdown table).
#
#   bash bench/device.sh               # on a machine with a CUDA GPU: under 8 minutes
#   bash bench/device.sh --cpu-smoke   # here, without a GPU: the same steps, tiny and on the CPU
#
# Offline: uses the machine's own python3 (with torch) and unpacks what is missing from the
# wheels carried in bench/wheels/ (fill it with bench/fetch_wheels.sh before the trip). Nothing
# is downloaded. VapourSynth, OpenCV, Ray and ffmpeg may be absent: what needs them is skipped.
# The table is printed and written to $OUT/device.md when $OUT is set (else bench/device.md).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
START=$SECONDS
TOTAL=${UAV_DEVICE_SECONDS:-450}  # the whole run's target, under the 8-minute slot
SMOKE=""
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=--cpu-smoke
# $PYTHON, else python3 with torch, else this checkout's .venv.
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && ! python3 -c "import torch" 2>/dev/null && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/uav-device-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
RESULT=${OUT:-$REPO/bench}/device.md
say() { echo "device.sh: $*" >&2; }

# 1. The interpreter and the GPU.
if ! "$PY" -c "import torch" 2>/dev/null; then
    say "$PY has no torch; set PYTHON to an interpreter that has it"; exit 2
fi
"$PY" - <<'EOF' >&2
import platform, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
print(f"device.sh: Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), {gpu}")
EOF
if [ -z "$SMOKE" ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine, or with --cpu-smoke to check the script"
    exit 2
fi

# 2. What is missing, from the carried wheels (pytest; transformers and friends).
SITE=$WORK/site
if [ -d bench/wheels ]; then
    "$PY" bench/carried.py bench/wheels "$SITE"
else
    say "bench/wheels/ is absent (run bench/fetch_wheels.sh before the trip); using what is installed"
fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if ! "$PY" -c "import safetensors.torch; from transformers import CLIPTextModel, CLIPTokenizer" 2>"$WORK/err"; then
    say "cannot load models: $(tail -1 "$WORK/err"); nothing can run"; exit 3
fi

# 3. The reference tiny model the tests use; a random tiny one where the fixtures did not travel.
if [ -z "${UAV_REFERENCE_DIR:-}" ] && [ ! -d "$REPO/../shared/reference/public/model" ]; then
    export UAV_REFERENCE_DIR=$WORK/reference
    "$PY" bench/random_model.py "$UAV_REFERENCE_DIR/public/model" --tiny --device cpu
fi

# 4. The cuda tests (and the overlap's CPU test).
TESTS_RC=skipped
if "$PY" -c "import pytest" 2>/dev/null; then
    "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py
    TESTS_RC=$?
    say "tests/test_cuda.py exit status $TESTS_RC"
else
    say "pytest is not importable: tests skipped"
fi

# 5. The benchmark, in what is left of the time (model build and load included).
LEFT=$((TOTAL - (SECONDS - START) - 90))
[ "$LEFT" -lt 60 ] && LEFT=60
"$PY" bench/bench_device.py $SMOKE --budget "$LEFT" --output "$WORK/device.md"
BENCH_RC=$?
if [ -f "$WORK/device.md" ]; then
    mkdir -p "$(dirname "$RESULT")" && cp "$WORK/device.md" "$RESULT" && say "table written to $RESULT"
fi
say "done in $((SECONDS - START)) s: tests $TESTS_RC, benchmark exit status $BENCH_RC"
[ "$TESTS_RC" = 0 ] || [ "$TESTS_RC" = skipped ] || exit 1
exit $BENCH_RC
