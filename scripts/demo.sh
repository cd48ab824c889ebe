#!/usr/bin/env bash
# The main job: napari with the bundled sample slide and model. Without a display it renders the
# same session off-screen (Xvfb) and writes screenshots and exports into a folder it prints.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/napari-mil" demo "$@"
