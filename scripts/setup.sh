#!/usr/bin/env bash
# Creates .venv (once) and installs blipcap into it with the given extras, e.g. `torch,test`.
# torch is pinned by constraints.txt to the CPU build CI uses; the package itself asks for a range.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-torch}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[${extras}]"
