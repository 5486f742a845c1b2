#!/usr/bin/env bash
# Install nanovlm into .venv and run the main job: draw the scenes, train the demo model on CPU, print grounding
# accuracy and a few completions, save the model (runs/demo/model). Extra arguments go to `nanovlm demo`.
set -euo pipefail
# an explicit (empty) argument: sourced without one, setup_venv.sh would read our arguments as its extras
. "$(dirname "$0")/setup_venv.sh" ""
nanovlm demo "$@"
