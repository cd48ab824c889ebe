#!/usr/bin/env bash
# Runs the whole test suite (GUI tests under Xvfb, started by pytest-xvfb) after set-up.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export NAPARI_MIL_EXTRAS="${NAPARI_MIL_EXTRAS:-all,testing,foundation}"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
"$VENV_PY" -m pytest "$@"
