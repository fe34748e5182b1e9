#!/usr/bin/env bash
# The command for a lent GPU machine (H100/H200): verify, then every variant of the trainer and
# throughput checks, each in its own process; figures in $OUT (or ./gpu_check_out)/gpu_check.{json,md,log}.
#   bash benchmarks/gpu_check.sh [extra gpu_check.py arguments, e.g. --eager or --batch 16]
# The trainer needs pydantic, which a bare GPU machine may lack: put its wheels (pydantic,
# pydantic-core, annotated-types, typing-inspection) in $WHEELS and they are installed offline.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
if ! "$py" -c "import pydantic" 2>/dev/null && [ -n "${WHEELS:-}" ]; then
  "$py" -m pip install -q --no-index --find-links "$WHEELS" pydantic
fi
timeout "${GPU_CHECK_TIMEOUT:-290}" "$py" -m benchmarks.gpu_check --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
