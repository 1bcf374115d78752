#!/bin/bash
# The gpu preset on one GPU in a fixed time: CUDA MPS on (the 12 small models' kernels then run side by side), the
# sweep under a hard limit, the report rebuilt from whatever finished, a line added to device.txt naming the GPU and
# what the call did. Run it again to resume: finished runs are kept and skipped.
#
#   bash scripts/reproduce_gpu.sh [LIMIT_S=600] [more scripts/reproduce.py options]
#
# Output: results/paper-gpu (or the --output_dir given). MPS is used where nvidia-cuda-mps-control exists and
# works, else the runs share the GPU by time-slicing (slower).
set -u
START=$(date +%s)
LIMIT=${1:-600}; [ $# -gt 0 ] && shift
case "$LIMIT" in ''|*[!0-9]*) echo "LIMIT_S must be a whole number of seconds, got '$LIMIT'" >&2; exit 2;; esac
DIR=results/paper-gpu
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[i]}" = "--output_dir" ] && DIR=${args[i+1]:-$DIR}; done
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
say() { echo "[reproduce_gpu $(( $(date +%s) - START )) s] $*"; }
PY=${PYTHON:-python}
MPS=off
if command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/mps-pipe} CUDA_MPS_LOG_DIRECTORY=${CUDA_MPS_LOG_DIRECTORY:-/tmp/mps-log}
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d && timeout 60 $PY -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    MPS=on
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
say "MPS $MPS; the sweep starts, limit $LIMIT s"
# the sweep in a process group of its own (its worker processes join it), so the limit stops it and nothing else
setsid $PY scripts/reproduce.py --preset gpu --output_dir "$DIR" "${args[@]}" & pid=$!
SECONDS=0
while kill -0 $pid 2>/dev/null && [ $SECONDS -lt "$LIMIT" ]; do sleep 1; done
STOPPED=""; kill -0 $pid 2>/dev/null && STOPPED=" (stopped at the $LIMIT s limit)"
kill -KILL -- -$pid 2>/dev/null  # the sweep at the limit, or the workers a failed one left behind
wait $pid; rc=$?
say "sweep exit $rc$STOPPED"
if [ $rc -ne 0 ]; then  # stopped (or failed): a report on the runs that finished
  $PY scripts/reproduce.py --preset gpu --report_only --output_dir "$DIR" "${args[@]}" >/dev/null; say "report exit $?"
fi
mkdir -p "$DIR"
# one line per call, appended: a sweep resumed over several calls (or machines) keeps the record of each
GPU=$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | paste -sd ';' || echo "no nvidia-smi")
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) reproduce_gpu.sh $LIMIT ${args[*]}: $GPU; MPS $MPS; sweep exit $rc$STOPPED; $(ls "$DIR/runs" 2>/dev/null | wc -l) run files; $(( $(date +%s) - START )) s in all" >> "$DIR/device.txt"
[ "$MPS" = on ] && echo quit | nvidia-cuda-mps-control
exit $rc
