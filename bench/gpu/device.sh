#!/usr/bin/env bash
# On the lent GPU machine, in the repo root (the device tool's `run`, with carry [".gpu"]):
#   bash bench/gpu/device.sh --models sd15 --profile
#   bash bench/gpu/device.sh diagnose --family sdxl --only ...     (or graphs_probe: another of bench/gpu's tools)
#   bash bench/gpu/device.sh train [STAGE ...]                     (the demo world's retrain, demo_world/train.py;
#                                                                   default: every stage but evaluate)
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
  # A retrain into a folder of its own, $OUT/retrain (weights, report, stats, cycle logs: each file under 16 MiB),
  # which comes back whole even when the call is cut; the shipped weights are not touched. A folder carried as
  # out/retrain (what an earlier call brought back) is continued where it stopped. evaluate is left out by default:
  # the acceptance's time per image is the 2-core CPU's, so it runs there on what comes back.
  RETRAIN="$OUT/retrain"
  mkdir -p "$RETRAIN"
  [ -d out/retrain ] && cp -r out/retrain/. "$RETRAIN"/
  for stage in ${*:-vae diffusion refine outline classifiers}; do
    "$PY" -m demo_world.train --threads "$(nproc)" --out "$RETRAIN" --resume --stage "$stage" 2>&1 | tee -a "$OUT/gpu_train.log"
    rc="${PIPESTATUS[0]}"
    [ "$rc" = 0 ] || exit "$rc"
  done
  exit 0
fi
LOG="$OUT/gpu_bench.log"
[ "$TOOL" = run ] || LOG="$OUT/gpu_$TOOL.log"
"$PY" -m "bench.gpu.$TOOL" --out "$OUT" "$@" 2>&1 | tr '\r' '\n' | grep --line-buffered -v -e '^\[SPARE\]' -e '^[[:space:]]*$' | tee "$LOG"
exit "${PIPESTATUS[0]}"
