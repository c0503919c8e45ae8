#!/usr/bin/env bash
# On the lent GPU machine, in the repo root (the device tool's `run`, with carry [".gpu"]):
#   bash bench/gpu/device.sh --models sd15 --profile
#   bash bench/gpu/device.sh diagnose --family sdxl --only ...     (or graphs_probe: another of bench/gpu's tools)
#   bash bench/gpu/device.sh train --stage outline                 (the demo world's training, demo_world/train.py)
# Installs the carried wheels (.gpu/wheels, made by bench/gpu/prepare.py), uses the carried ComfyUI
# (.gpu/ComfyUI), stubs PyAV when it is missing, and runs bench/gpu/run.py (or the named tool) with the
# given arguments; results, profiles and the log go to $OUT (what the tool brings back).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/bench/results}"
mkdir -p "$OUT"
[ -d .gpu/ComfyUI ] && [ -d .gpu/wheels ] || { echo "no .gpu/: run bench/gpu/prepare.py here first and carry .gpu" >&2; exit 2; }
PY="${PYTHON:-python3}"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import av" 2>/dev/null || export PYTHONPATH="$PYTHONPATH:$PWD/bench/gpu/stubs"
export SPARE_COMFYUI_DIR="$PWD/.gpu/ComfyUI" SPARE_COMFYUI_PYTHON="$(command -v "$PY")" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
set +e  # the log is filtered (no progress-bar lines) and kept; the exit status is the benchmark's
TOOL=run
case "${1:-}" in diagnose|graphs_probe|train_probe|train) TOOL="$1"; shift ;; esac
if [ "$TOOL" = train ]; then
  # The retrained weights and the training report come back in $OUT (7 files, each under 16 MiB).
  "$PY" -m demo_world.train --threads "$(nproc)" "$@" 2>&1 | tee "$OUT/gpu_train.log"
  rc="${PIPESTATUS[0]}"
  cp demo_world/weights/*.safetensors docs/demo_world/training_stats.json docs/demo_world/TRAINING.md "$OUT"/
  exit "$rc"
fi
LOG="$OUT/gpu_bench.log"
[ "$TOOL" = run ] || LOG="$OUT/gpu_$TOOL.log"
"$PY" -m "bench.gpu.$TOOL" --out "$OUT" "$@" 2>&1 | tr '\r' '\n' | grep --line-buffered -v -e '^\[SPARE\]' -e '^[[:space:]]*$' | tee "$LOG"
exit "${PIPESTATUS[0]}"
