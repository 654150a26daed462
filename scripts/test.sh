#!/usr/bin/env bash
# Quickstart 2: set up, then run the whole test suite (no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh torch,test
.venv/bin/python -m pytest -q "$@"
