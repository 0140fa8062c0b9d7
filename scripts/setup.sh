#!/usr/bin/env bash
# Set up everything spatialmix needs on a fresh machine: the Fashion-MNIST data package (where
# the operating system provides it), a virtual environment in .venv and the Python packages.
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "setup: installing the Debian package dataset-fashion-mnist"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
        || echo "setup: warning: could not install dataset-fashion-mnist; pass --data-dir or set SPATIALMIX_DATA"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
# Reinstall only when the dependencies changed.
STAMP=".venv/.spatialmix-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    echo "setup: installing Python packages (torch==2.14.1, torchvision==0.29.1, ...) into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    rm -f .venv/.spatialmix-*
    touch "$STAMP"
fi
