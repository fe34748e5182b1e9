#!/usr/bin/env bash
# The command for a lent GPU machine (H100/H200): every mode of benchmarks/gpu_check.py, in well
# under 5 minutes, figures written to $OUT (or ./gpu_check_out) as they are measured.
#   bash benchmarks/gpu_check.sh [extra gpu_check.py arguments, e.g. --compile or --batch 16]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
timeout "${GPU_CHECK_TIMEOUT:-290}" "${PYTHON:-python3}" -m benchmarks.gpu_check --json "$out/gpu_check.json" "$@" \
  2>&1 | tee "$out/gpu_check.log"
