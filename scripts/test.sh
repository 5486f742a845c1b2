#!/usr/bin/env bash
# Install everything the tests need into .venv and run them; extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/setup_venv.sh" test
# -p no:cacheprovider keeps the checkout clean; "no tests ran" is exit status 5, a failure here.
python -m pytest -p no:cacheprovider "$@"
