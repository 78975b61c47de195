#!/usr/bin/env bash
# Set up vs-uav on this machine: a Python >= 3.12 virtual environment in .venv with the
# project installed (editable; the native uav plugin compiled into the venv's VapourSynth
# plugin folder), VapourSynth configured for vspipe, and ffmpeg.
# Safe to re-run. Override the interpreter with UAV_PYTHON=/path/to/python3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

ok_python() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }

find_python() {
  local c
  # 3.12 first: the versions in constraints.txt were tested together on it.
  for c in "${UAV_PYTHON:-}" python3.12 python3.13 python3.14; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && ok_python "$c" && { command -v "$c"; return; }
  done
  # pyenv keeps interpreters it did not activate under its root.
  local root; root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
  for c in $(ls -d "$root"/versions/3.12* 2>/dev/null | sort -V -r) \
           $(ls -d "$root"/versions/3.1[3-9]* 2>/dev/null | sort -V); do
    ok_python "$c/bin/python" && { echo "$c/bin/python"; return; }
  done
  command -v python3 >/dev/null 2>&1 && ok_python python3 && { command -v python3; return; }
  return 1
}

if [ ! -x "$VENV/bin/python" ] || ! ok_python "$VENV/bin/python"; then
  if ! PY=$(find_python); then
    echo "bootstrap: vs-uav needs Python >= 3.12 (the VapourSynth R81 wheel is cp312 abi3) and none was found;" \
         "install one (e.g. 'pyenv install 3.12' or 'apt-get install python3.12-venv') or set UAV_PYTHON=/path/to/python3.12" >&2
    exit 1
  fi
  echo "bootstrap: creating $VENV with $PY ($("$PY" --version))" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

# The native VapourSynth plugin (native/, core.uav) is compiled on install: it needs a C compiler
# (CMake comes from PyPI when the system has none).
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1 && ! command -v clang >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing a C compiler (gcc) with apt-get" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev) >/dev/null
  else
    echo "bootstrap: no C compiler found: install one (e.g. 'sudo apt-get install gcc') to build the uav plugin" >&2
    exit 1
  fi
fi

"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
# Exact versions tested together (constraints.txt); pyproject.toml keeps the ranges.
# The cluster extra (Ray) too: its tests are part of the suite.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,cluster,conform]"

# vspipe finds its Python through this per-user configuration file.
"$VENV/bin/vapoursynth" config >/dev/null

if ! command -v ffmpeg >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing ffmpeg with apt-get" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg) >/dev/null
  else
    echo "bootstrap: ffmpeg not found: install it (e.g. 'sudo apt-get install ffmpeg') to encode with vspipe | ffmpeg" >&2
  fi
fi
# The quality report's test opens the HTML page in a real headless browser: Debian's Chromium.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing chromium with apt-get (for the report's browser test)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
      >/dev/null || echo "bootstrap: chromium could not be installed; the report's browser test will be skipped" >&2
  else
    echo "bootstrap: no chromium: the report's browser test is skipped (e.g. 'sudo apt-get install chromium')" >&2
  fi
fi
echo "bootstrap: ready ($("$VENV/bin/python" --version), $VENV)" >&2
