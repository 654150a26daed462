#!/usr/bin/env bash
# Quickstart 2: set up, then run the whole test suite (no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh torch,serve,test,ray
# A second environment with onnxruntime and no torch: the tests prove an ONNX export captions there.
if [ ! -x .venv-torchfree/bin/python ]; then
  python3 -m venv .venv-torchfree
fi
.venv-torchfree/bin/python -m pip install --quiet -c constraints.txt -e ".[onnx]"
export BLIPCAP_TORCHFREE_PYTHON="$PWD/.venv-torchfree/bin/python" BLIPCAP_REQUIRE_TORCHFREE=1
export BLIPCAP_REQUIRE_RAY=1  # the Ray job's tests fail, rather than skip, without the ray extra
export BLIPCAP_REQUIRE_EXIFTOOL=1  # so do --embed's, without exiftool (.ci/run installs it)
# the layer contracts of shared/DESIGN.md ([tool.importlinter] in pyproject.toml)
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
