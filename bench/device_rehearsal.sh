#!/bin/bash
# The device check (bench/device_check.sh) rehearsed on this machine's CPU, with the device's package set: a
# fresh virtual environment that sees this Python's installed packages *except* omegaconf, wandb and cifarlab
# (symbolic links to each of the others, no copies and no downloads: the device has torch, torchvision,
# accelerate, rich, scipy, numpy, PyYAML, but no omegaconf and no wandb), into which device_check.sh installs
# the carried wheels exactly as on the device. What differs from the device: this Python's version (the device
# has 3.12) and its torch build, and the CPU (--cpu --tiny: see bench/device_check.py).
#
#   bench/device_prepare.sh && bench/device_rehearsal.sh     # results in $OUT (default /tmp/device-rehearsal/out)
#
# PYTHON: the Python whose packages stand in for the device's (default: python3 on PATH, e.g. an activated venv).
# Arguments pass through to bench/device_check.py (after --cpu --tiny).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
WORK=${DEVICE_WORK:-/tmp/device-rehearsal}
export OUT=${OUT:-$WORK/out}
SOURCE=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# --- environment: the device's package set ---------------------------------------------------------------------
rm -rf "$WORK/venv" "$WORK/device-site" "$WORK/site" "$OUT"
mkdir -p "$WORK/device-site"
for entry in "$SOURCE"/*; do
  name=$(basename "$entry")
  case $name in
    omegaconf*|antlr4*|wandb*|cifarlab*|__editable__*|*.pth) ;;  # absent on the device (cifarlab: the checkout)
    *) ln -s "$entry" "$WORK/device-site/$name" ;;
  esac
done
"$PYTHON" -m venv --without-pip "$WORK/venv"
VENV_SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$WORK/device-site" > "$VENV_SITE/device-site.pth"
for missing in omegaconf wandb; do
  if "$WORK/venv/bin/python" -c "import $missing" 2>/dev/null; then
    echo "rehearsal: $missing is importable in the device-like environment; it must not be" >&2
    exit 1
  fi
done

# --- run: the device's script -----------------------------------------------------------------------------------
PYTHON=$WORK/venv/bin/python DEVICE_WORK=$WORK bench/device_check.sh --cpu --tiny "$@"
