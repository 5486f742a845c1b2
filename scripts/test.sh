#!/usr/bin/env bash
# Install everything the tests need into .venv (CPU torch first, so nothing pulls a CUDA build) and run them.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
# -p no:cacheprovider keeps a read-only checkout clean; "no tests ran" is exit status 5, a failure here.
python -m pytest -p no:cacheprovider "$@"
