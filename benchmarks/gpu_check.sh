#!/usr/bin/env bash
# The command for a lent GPU machine (H100/H200): structure and host syncs of the compiled step,
# FlexAttention verified, then every variant timed at 8 x 512 and 32 x 1024, each in its own
# process, within a 9-minute budget; figures in $OUT (or ./gpu_check_out): gpu_check.{json,md,log}
# and compile.log (dynamo's recompiles and graph breaks).
#   bash benchmarks/gpu_check.sh [extra gpu_check.py arguments, e.g. --eager or --budget 300]
# The trainer needs pydantic, which a bare GPU machine may lack: its wheels (pydantic,
# pydantic-core, annotated-types, typing-inspection) in $WHEELS (default .whl/) are installed offline.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
wheels="${WHEELS:-.whl}"
if ! "$py" -c "import pydantic" 2>/dev/null && [ -d "$wheels" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/localist-site "$wheels"/*.whl \
    && export PYTHONPATH="/tmp/localist-site${PYTHONPATH:+:$PYTHONPATH}"
fi
{ nvidia-smi || echo "(no nvidia-smi)"; } 2>&1 | tee "$out/gpu_check.log"
timeout "${GPU_CHECK_TIMEOUT:-570}" "$py" -m benchmarks.gpu_check --budget "${GPU_CHECK_BUDGET:-530}" --out "$out" "$@" 2>&1 \
  | tee -a "$out/gpu_check.log"
