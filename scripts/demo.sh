#!/usr/bin/env bash
# Install nanovlm into .venv and run the main job: make the scenes data, train the demo model on CPU,
# print grounding accuracy and a few completions, save the model (runs/demo/model). Extra args go to `nanovlm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e .
nanovlm demo "$@"
