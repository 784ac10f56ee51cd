#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (python3 with a CUDA torch, nvcc, ninja, no internet):
# build the extension there, run the op tests on the GPU, run the kernel and end-to-end benchmarks,
# print the tables. Results land in $OUT (the device tool brings that folder back) or /tmp/diffalign-gpu.
#   bash benchmarks/gpu_check.sh [extra args for benchmarks/bench_ops.py]
# Environment:
#   STAGES            comma-separated subset of tests,kernels,e2e (default: all three, in that order);
#                     the build always runs first, unless a carried build is reused
#   E2E_COMPILE=1     (default) e2e runs once, sd15 only, with the UNet also compiled by inductor: that run
#                     times eager, diffalign, the UNet-only floor and the compiled loop side by side, so a
#                     separate uncompiled run would repeat three of its four rows. E2E_COMPILE=0: tiny and
#                     sd15 without the compiled loop.
#   KERNELS_TIMEOUT / E2E_TIMEOUT (s) bound the two benchmarks.
# A carried .gpu_so/_C*.so built there earlier (the build.so this script leaves in $OUT) is reused
# instead of building again.
set -uo pipefail
OUT=${OUT:-/tmp/diffalign-gpu}
mkdir -p "$OUT"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
export DIFFALIGN_EXPECT_EXTENSION=1
if [ -d .whl ]; then  # wheels carried for packages the machine lacks (diffusers for e2e; see README: GPU check)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

t0=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# without pip install, diffalign.modalities (setup.py maps it to the top-level modalities/) needs a link
[ -e diffalign/modalities ] || ln -s ../modalities diffalign/modalities
if ls .gpu_so/_C*.so > /dev/null 2>&1; then
  cp .gpu_so/_C*.so diffalign/ && echo "reusing the carried extension build"
# build in place (no pip: the machine has no index to fetch build requirements from)
elif ! DIFFALIGN_CUDA=1 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
else
  cp diffalign/_C*.so "$OUT/build.so"
fi
echo "build: $(( $(date +%s) - t0 )) s"
python3 -c "import diffalign.ops as o; assert o.extension_available() and o.cuda_kernels_built(), o.unavailable_reason(); print('extension with CUDA kernels: ok')" || exit 1
# Diagnosis of the crash seen on this image (torch 2.11, built with /opt/gcc's g++): a ValueError raised in
# the ops' C++ segfaulted the process. Which compiler built us, and does a C++ error reach Python here?
echo "compiler: $(command -v g++) $(g++ -dumpfullversion 2>/dev/null)" | tee -a "$OUT/gpu.txt"
python3 -c "
import torch, diffalign.ops
try:
    torch.ops.diffalign.gaussian_logprob(torch.randn(2, 3), torch.randn(2, 4), torch.ones(()), 0)
except ValueError as e:
    print('C++ ValueError reaches Python: ok')
" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
echo "C++ error probe exit code: ${PIPESTATUS[0]} (139: segfault)" | tee -a "$OUT/gpu.txt"

stage() { [[ ",${STAGES:-tests,kernels,e2e}," == *",$1,"* ]]; }

if stage tests; then
  t0=$(date +%s)
  python3 -m pytest -q -p no:cacheprovider tests/ops/test_ops_numerics.py tests/ops/test_ops_long_rows.py \
    tests/ops/test_ops_masks.py tests/trainer/test_fsdp_gpu.py \
    tests/ops/test_ops_api.py 2>&1 | tee "$OUT/tests.log" | tail -15
  echo "tests: $(( $(date +%s) - t0 )) s"
fi
if stage kernels; then
  t0=$(date +%s)
  timeout "${KERNELS_TIMEOUT:-300}" python3 benchmarks/bench_ops.py --device cuda --json "$OUT/kernels_cuda.json" "$@" 2>&1 | \
    tee "$OUT/bench.log" | sed -n '/^op /,$p'
  echo "kernels: $(( $(date +%s) - t0 )) s"
fi
if stage e2e; then
  t0=$(date +%s)
  if [ "${E2E_COMPILE:-1}" = "1" ]; then
    # inductor compiles the SD1.5 UNet forward and backward first: minutes
    timeout "${E2E_TIMEOUT:-300}" python3 benchmarks/bench_e2e.py --device cuda --models sd15 --compile inductor \
      --json "$OUT/e2e_cuda_compiled.json" 2>&1 | tee "$OUT/e2e_compiled.log" | tail -12
  else
    timeout "${E2E_TIMEOUT:-240}" python3 benchmarks/bench_e2e.py --device cuda --json "$OUT/e2e_cuda.json" 2>&1 | \
      tee "$OUT/e2e.log" | tail -12
  fi
  echo "e2e: $(( $(date +%s) - t0 )) s"
fi
