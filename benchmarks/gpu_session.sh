#!/usr/bin/env bash
# The one prepared script for a session that is lent a GPU (docs/benchmarks.md, "The first GPU run"): the GPU's
# name, benchmarks/gpu_check.py's table (step time, MFU, export ratios, operations, kernels and syncs per step,
# the top kernels), the tests that need CUDA, and what train.compile (the ViT blocks) buys in bf16, each log under
# $OUT. Run from the repository root:
#
#     bash benchmarks/gpu_session.sh            # OUT defaults to /tmp/gpu-session
#
# The GPU machine has torch, timm, h5py and click but not segmentation-models-pytorch: carry its wheel in .whl/
# (the device tool's README says how); nothing is installed, the checkout is on PYTHONPATH.
set -uo pipefail
OUT="${OUT:-/tmp/gpu-session}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import sys, torch; print('torch', torch.__version__, 'python', sys.version.split()[0])"
} 2>&1 | tee "$OUT/gpu.txt"
timeout 360 python3 -m benchmarks.gpu_check 2>&1 | tee "$OUT/gpu_check.md"
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs tests/test_lattice.py tests/test_precision.py \
    tests/test_refine.py tests/test_step_ops.py 2>&1 | tee "$OUT/cuda_tests.log"
timeout 180 python3 -m benchmarks.compile_step --preset voc --device cuda --amp bf16 --steps 10 2>&1 \
    | tee "$OUT/compile_step.md"
