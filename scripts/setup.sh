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
STAMP=".venv/.spatialmix-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    echo "setup: installing Python packages (torch, torchvision, ... as pinned in constraints.txt) into .venv"
    .venv/bin/python -m pip install -q -c constraints.txt --upgrade pip setuptools
    # The build uses the pinned setuptools just installed (no isolated build environment to download).
    .venv/bin/python -m pip install -q -c constraints.txt --no-build-isolation -e '.[test]'
    # torchattacks (the reference attacks of benchmarks/ and the comparison tests) pins
    # requests~=2.25.1 but never imports requests: without its dependencies it changes nothing else.
    .venv/bin/python -m pip install -q -c constraints.txt --no-deps torchattacks
    rm -f .venv/.spatialmix-*
    touch "$STAMP"
fi

# The documentation tools live in their own environment (see docs/requirements.txt).
if [ ! -x .venv-docs/bin/python ]; then
    "$PYTHON" -m venv .venv-docs
fi
DOCS_STAMP=".venv-docs/.spatialmix-docs-$(sha256sum docs/requirements.txt | cut -c1-16)"
if [ ! -f "$DOCS_STAMP" ]; then
    echo "setup: installing the documentation tools into .venv-docs"
    .venv-docs/bin/python -m pip install -q -r docs/requirements.txt
    rm -f .venv-docs/.spatialmix-docs-*
    touch "$DOCS_STAMP"
fi
