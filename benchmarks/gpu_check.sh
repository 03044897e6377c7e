#!/usr/bin/env bash
# The GPU check (issue 16): on a bare GPU machine holding a copy of this repository, installs
# lorascope with a CUDA build of torch from PyPI and prints one table (benchmarks/gpu_check.py):
# the GPU tests, recording overhead against TensorBoard and wandb, throughput against PEFT + the
# HF Trainer. Nothing is downloaded from a model hub. Under 8 minutes, the install included.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: prints the plan, checks the imports and
#                                            # runs every section on CPU with tiny models
#
# Environment: PYTHON (python3), LORASCOPE_TORCH (the torch spec to install when there is no
# torch; torch==2.13.0 by default, whose PyPI Linux wheel is built with CUDA), GPU_CHECK_BUDGET_S
# (450: seconds for the whole script), GPU_CHECK_OUT (where table.md is written), GPU_CHECK_ONLY
# (section names, space-separated: rerun only those, e.g. after a fix).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
started=$(date +%s)
budget=${GPU_CHECK_BUDGET_S:-450}
out=${GPU_CHECK_OUT:-${TMPDIR:-/tmp}/lorascope-gpu-check}
torch_spec=${LORASCOPE_TORCH:-torch==2.13.0}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true
mkdir -p "$out"

case "${1:-}" in
    --dry-run) dry=1 ;;
    "") dry=0 ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

if [ "$dry" = 1 ]; then
    echo "dry run: on a GPU machine this script runs, within ${budget} s:"
    echo "  1. LORASCOPE_TORCH='${torch_spec}' bash scripts/setup.sh --dev"
    echo "  2. nvidia-smi -L, and a check that torch sees the GPU"
    echo "  3. ${PY} -m benchmarks.gpu_check --budget-s <what is left> --install-seconds <step 1> --markdown ${out}/table.md"
    echo "checking the imports, then running every section on CPU with tiny models ..."
    exec "$PY" -m benchmarks.gpu_check --dry-run --budget-s 600 --markdown "$out/table-dry-run.md"
fi

nvidia-smi -L || echo "nvidia-smi is not available; torch's own check follows"
echo "installing (LORASCOPE_TORCH=${torch_spec}) ..."
t0=$(date +%s)
LORASCOPE_TORCH="$torch_spec" bash scripts/setup.sh --dev
install_s=$(( $(date +%s) - t0 ))
echo "installed in ${install_s} s"
"$PY" - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"error: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU; set LORASCOPE_TORCH "
             "to a torch build for this machine's driver and run again (an installed torch is kept: "
             "pip uninstall torch first)")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

# the sections stop starting new work at their budget; the hard limit leaves 15 s to print
left=$(( budget - ($(date +%s) - started) - 15 ))
status=0
only=()
[ -n "${GPU_CHECK_ONLY:-}" ] && read -r -a only <<< "--only $GPU_CHECK_ONLY"
timeout --signal=INT "$(( left + 10 ))" "$PY" -m benchmarks.gpu_check --budget-s "$left" \
    --install-seconds "$install_s" --markdown "$out/table.md" "${only[@]}" || status=$?
if [ "$status" = 124 ] || [ "$status" = 130 ]; then
    echo "the check ran past its budget and was stopped; the table as far as it got:"
    cat "$out/table.md" 2>/dev/null || echo "(no section finished)"
fi
echo "total $(( $(date +%s) - started )) s; table in ${out}/table.md"
exit "$status"
