#!/bin/bash
# Prepares the folder a device call carries (.device, ignored by git): the wheels the device image lacks and the
# CIFAR-10 JPEG copy. Run here, once, from the repository root (bench/README.md, "Device check").
#
#   bench/device_prepare.sh                    # DEVICE_DIR=.device, the tarball from ../shared/data
#
# omegaconf 2.4.0 is a pure-Python wheel (it needs PyYAML, which the device has); airbench 0.1.8 is published as
# a source distribution only, built here into a pure-Python wheel (py3-none-any). No dependencies are fetched:
# the device has torch, torchvision, accelerate, rich, scipy and PyYAML.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE_DIR=${DEVICE_DIR:-.device}
TARBALL=${CIFARLAB_JPEG_TARBALL:-../shared/data/cifar10-jpeg.tar.gz}
PYTHON=${PYTHON:-python3}
mkdir -p "$DEVICE_DIR/wheels"
if ! compgen -G "$DEVICE_DIR/wheels/omegaconf-2.4.0-*.whl" >/dev/null; then
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
    --platform any -d "$DEVICE_DIR/wheels" omegaconf==2.4.0
fi
if ! compgen -G "$DEVICE_DIR/wheels/airbench-0.1.8-py3-none-any.whl" >/dev/null; then
  "$PYTHON" -m pip download -q --no-deps --no-binary=:all: -d "$DEVICE_DIR/sdist" airbench==0.1.8
  "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DEVICE_DIR/wheels" "$DEVICE_DIR"/sdist/airbench-0.1.8.tar.gz
  rm -rf "$DEVICE_DIR/sdist"
fi
[[ -f $DEVICE_DIR/cifar10-jpeg.tar.gz ]] || cp "$TARBALL" "$DEVICE_DIR/cifar10-jpeg.tar.gz"
ls -l "$DEVICE_DIR" "$DEVICE_DIR/wheels"
