#!/usr/bin/env bash
# The one prepared script for the lent GPU machine: build there, run the GPU
# tests and the GPU benchmarks, and write everything into the directory given.
#
#   bash benchmarks/device_check.sh "$OUT"
#
# The GPU machine has its own torch/triton/python (nothing to download), so
# the extension is compiled there. Every step runs even if an earlier one
# fails; the log and each step's output land in OUT. A failed step (a failed
# benchmark of gpu_suite.py among them) is named at the end, and the exit
# status is then 1. PYTHON picks the interpreter (default python3).
set -u -o pipefail
OUT=${1:?usage: bash benchmarks/device_check.sh OUT_DIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
exec > >(tee -a "$OUT/device_check.log") 2>&1
PY=${PYTHON:-python3}
FAILED=""
failed() { FAILED="$FAILED${FAILED:+, }$1"; echo "!! FAILED: $1"; }

echo "== device"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" - <<'PYV' || failed "python/torch import"
import torch, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton missing:", e)
PYV

echo "== build"
export MAX_JOBS=${MAX_JOBS:-16} RSPNET_BUILD_CUDA=1
t0=$(date +%s)
if ! "$PY" -m pip install -e . --no-build-isolation --no-deps -q; then
  echo "pip editable install failed; building in place instead"
  "$PY" setup.py build_ext --inplace || failed "build"
  [ -e rspnet/kernels ] || ln -s ../kernels rspnet/kernels
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
echo "build took $(( $(date +%s) - t0 )) s"
"$PY" -m rspnet.info | tee "$OUT/info.txt" || failed "rspnet.info"

echo "== static facts of the CUDA kernels (registers, stack, spills, 16-byte accesses)"
"$PY" -m tests.helpers.cuda_static 2>&1 | tee "$OUT/cuda_static.txt" || failed "tests.helpers.cuda_static"

echo "== GPU tests"
"$PY" -m pytest -m gpu tests -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" 2>&1 | tail -40 \
  | tee "$OUT/gpu_tests.txt" || failed "GPU tests (see $OUT/gpu_tests.txt)"

echo "== GPU benchmarks"
"$PY" benchmarks/gpu_suite.py --out "$OUT" 2>&1 | tee "$OUT/gpu_suite.txt" \
  || failed "benchmarks/gpu_suite.py (see $OUT/gpu_suite.txt)"
for extra in benchmarks/search_memory.py; do
  [ -f "$extra" ] || { failed "$extra is missing"; continue; }
  "$PY" "$extra" --device cuda --json "$OUT/$(basename "$extra" .py).json" 2>&1 | tail -20 || failed "$extra"
done
echo "== done"
if [ -n "$FAILED" ]; then
  grep -h "FAILED" "$OUT/gpu_suite.txt" 2>/dev/null
  echo "device_check.sh: FAILED: $FAILED"
  exit 1
fi
echo "device_check.sh: every step passed"
