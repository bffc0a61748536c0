#!/usr/bin/env bash
# One-shot GPU validation for a session that has a CUDA device: installs the package, runs the
# GPU-marked tests (kernels alone and the whole model on them) and the attention benchmark (Triton
# vs SDPA first, FlexAttention's compile-heavy pass last). Decoding has no stage (its stage left
# in cbaca33 to fit the time limit; CUDA-graph decoding is not written): GPU decoding is unmeasured.
# Each stage has its own time limit so a slow one cannot starve the rest; output goes to $OUT/
# when OUT is set (else ./gpu_check_out/). Exit status: 1 if any stage failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-gpu_check_out}"
mkdir -p "$out_dir"
dry=0; dry_flag=""
if [ "${1:-}" = "--dry-run" ]; then  # every stage on the CPU: interpreter, tiny shapes
  dry=1; dry_flag="--dry-run"; export TRITON_INTERPRET=1
else
  unset TRITON_INTERPRET  # the real compiler, not the CPU interpreter
fi

status=0
stage() {  # stage NAME SECONDS COMMAND...: run with a limit, tee to $out_dir/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee "$out_dir/$name.txt"
  timeout "$limit" "$@" 2>&1 | tee -a "$out_dir/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name exit $rc" | tee -a "$out_dir/$name.txt"
  [ "$rc" -eq 0 ] || status=1
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  pip install --no-deps -e . 2>&1 | tail -n 1
} 2>&1 | tee "$out_dir/env.txt"

if ! python -c "import pali.kernels" 2>/dev/null; then
  # An offline machine without setuptools cannot build the editable install: import from the
  # tree instead, with a temporary link standing in for the `pali.kernels` package-dir mapping.
  echo "pip install failed; importing from src/ with a kernels link" | tee -a "$out_dir/env.txt"
  ln -sfn ../../kernels src/pali/kernels
  trap 'rm -f src/pali/kernels' EXIT
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  python -c "import pali.kernels" 2>&1 | tee -a "$out_dir/env.txt" || status=1
fi

json="benchmarks/results/$(python -c "import torch,re,datetime;print(re.sub(r'[^a-z0-9]+','-',torch.cuda.get_device_name().lower()).strip('-') if torch.cuda.is_available() else 'dry-run')")-$(date -u +%F).json"
[ "$dry" = 1 ] && json="$out_dir/attention-dry-run.json"
stage compile_sm90 "${COMPILE_LIMIT:-60}" python benchmarks/compile_kernels.py --variants tma --kernels fwd
export PALI_KERNELS_AUTOTUNE=0; stage pytest_gpu "${PYTEST_LIMIT:-100}" python -m pytest -m gpu tests/test_kernels.py tests/test_attention.py -q -rs -p no:cacheprovider
unset PALI_KERNELS_AUTOTUNE; stage bench_attention "${ATTN_LIMIT:-200}" python benchmarks/attention.py $dry_flag --dtype bf16 --json "$json" --budget-s 170 --impls ours_bucket,ours_row,sdpa_flash,sdpa_cudnn,sdpa_mem
stage bench_attention_flex "${FLEX_LIMIT:-120}" python benchmarks/attention.py $dry_flag --dtype bf16 --no-check --json "$json" --budget-s 100 --impls flex_dense,flex_bucket
stage bench_attention_levers "${LEVER_LIMIT:-50}" python benchmarks/attention.py $dry_flag --dtype bf16 --no-check --json "$json" --budget-s 35 --shapes "mT5-L enc 588px" --impls ours_bucket_tma,ours_bucket_noexp2
python benchmarks/attention.py --summarize "$json" | tee "$out_dir/summary.md"
cp "$json" "$out_dir/" 2>/dev/null || true

echo "gpu_check status: $status" | tee "$out_dir/status.txt"
exit "$status"
