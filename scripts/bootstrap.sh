#!/usr/bin/env bash
# Set up everything napari-mil needs on a Debian/Ubuntu machine, idempotently:
# system libraries for Qt/OpenGL under Xvfb, a virtual environment in .venv that reuses the
# interpreter's installed packages, and the package itself with its test extras.
# Usage: source scripts/bootstrap.sh   (exports VENV_PY)   or   bash scripts/bootstrap.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

APT_PACKAGES=(xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
  libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)

missing_apt() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  echo "${missing[@]:-}"
}

apt_install() {
  [ "$#" -gt 0 ] || return 0
  command -v apt-get >/dev/null || { echo "bootstrap: please install: $*" >&2; return 0; }
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing system packages: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need=$(missing_apt "${APT_PACKAGES[@]}")
# shellcheck disable=SC2086
[ -z "$need" ] || apt_install $need

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "bootstrap: creating $ROOT/.venv"
  if ! "$PYTHON" -m venv --system-site-packages "$ROOT/.venv" 2>/dev/null; then
    ver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python${ver}-venv"
    rm -rf "$ROOT/.venv"
    "$PYTHON" -m venv --system-site-packages "$ROOT/.venv"
  fi
fi
VENV_PY="$ROOT/.venv/bin/python"
export VENV_PY

# Extras: the main job needs "all"; the test command adds "testing" and "foundation" (timm,
# torchvision, transformers for the named encoders: several GB), so the default set-up stays
# light. NAPARI_MIL_EXTRAS chooses them (scripts/test.sh sets it).
EXTRAS="${NAPARI_MIL_EXTRAS:-all,testing}"
# torch: with the foundation extra, one torch + torchvision pair (each torchvision wheel needs
# the torch release it was built for); otherwise the CPU build, which keeps machines off
# multi-GB CUDA wheels. A machine whose torch (and torchvision) already import keeps its own
# builds (e.g. CUDA on a GPU workstation).
case ",$EXTRAS," in
  *,foundation,*)
    TORCH_PAIR=("torch==2.14.1" "torchvision==0.29.1")
    if ! "$VENV_PY" -c "import torch, torchvision" 2>/dev/null; then
      echo "bootstrap: installing ${TORCH_PAIR[*]}"
      "$VENV_PY" -m pip install -q "${TORCH_PAIR[@]}"
    fi
    # the named-encoder tests fail rather than skip when the extra is missing
    export NAPARI_MIL_REQUIRE_FOUNDATION=1 ;;
  *)
    if ! "$VENV_PY" -c "import torch" 2>/dev/null; then
      "$VENV_PY" -m pip install -q "torch==2.13.0"
    fi ;;
esac
stamp="$ROOT/.venv/.napari-mil-installed"  # holds the extras installed
have_extras() {  # every extra asked for is in the stamp
  local e
  for e in ${EXTRAS//,/ }; do
    grep -q ",$e," <<< ",$(cat "$stamp" 2>/dev/null)," || return 1
  done
}
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || ! have_extras; then
  echo "bootstrap: installing napari-mil and its dependencies ($EXTRAS)"
  "$VENV_PY" -m pip install -q -e "$ROOT[$EXTRAS]"
  echo "$EXTRAS" > "$stamp"
fi

