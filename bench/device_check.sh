#!/bin/bash
# One prepared check on a lent GPU machine, in one call of at most 10 minutes (bench/README.md, "Device check"):
# installs the carried wheels, unpacks the carried CIFAR-10 JPEG copy, and runs bench/device_check.py, which
# writes device_check.{json,md} under $OUT (this script adds its log there).
#
#   bench/device_check.sh                      # on the device machine: the whole check, results in $OUT
#   bench/device_rehearsal.sh                  # here, on the CPU: the same script, --cpu --tiny (see there)
#
# Knobs (environment): DEVICE_DIR (the carried folder: wheels/*.whl and cifar10-jpeg.tar.gz; default .device),
# DEVICE_WORK (scratch: the wheels' target folder, the data; default /tmp/device-check), OUT (results; default
# DEVICE_WORK/out). Arguments pass through to bench/device_check.py (--cpu --tiny for the rehearsal).
set -euo pipefail
cd "$(dirname "$0")/.."

# --- environment --------------------------------------------------------------
DEVICE_DIR=${DEVICE_DIR:-.device}
WORK=${DEVICE_WORK:-/tmp/device-check}
OUT=${OUT:-$WORK/out}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK" "$OUT"
LOG=$OUT/device_check.log
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true

# --- install: the carried wheels (pure Python) into a folder of their own; no index, no dependencies ----------
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
  "$DEVICE_DIR"/wheels/*.whl 2>&1 | tee -a "$LOG"
export PYTHONPATH=$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}

# --- data: the JPEG copy, unpacked once (train/ and test/ with a folder per class) ---------------------------
if [[ ! -d $WORK/cifar10-jpeg/test ]]; then
  mkdir -p "$WORK/cifar10-jpeg"
  tar -xzf "$DEVICE_DIR/cifar10-jpeg.tar.gz" -C "$WORK/cifar10-jpeg"
fi

# --- run ------------------------------------------------------------------------
"$PYTHON" bench/device_check.py --data "$WORK/cifar10-jpeg" --work "$WORK" --out "$OUT" "$@" 2>&1 | tee -a "$LOG"
