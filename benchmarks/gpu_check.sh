#!/usr/bin/env bash
# One-shot GPU validation of the fused attention kernels, for a session that has a CUDA device:
# installs the package, runs the GPU-marked kernel tests, then the attention benchmark.
# Output goes to $OUT/ when OUT is set (else ./gpu_check_out/). Exit status: first failure.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-gpu_check_out}"
mkdir -p "$out_dir"
unset TRITON_INTERPRET  # the real compiler, not the CPU interpreter

status=0
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$out_dir/env.txt"

pip install --no-deps -e . 2>&1 | tail -n 2 | tee "$out_dir/install.txt"

python -m pytest -m gpu tests/test_kernels.py -q -rs 2>&1 | tee "$out_dir/pytest_gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

python benchmarks/attention.py --dtype bf16 2>&1 | tee "$out_dir/bench_attention_bf16.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "gpu_check status: $status" | tee "$out_dir/status.txt"
exit "$status"
