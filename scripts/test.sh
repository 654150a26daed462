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
.venv/bin/python -m pytest -q -rs "$@"  # -rs: every skip and its reason in the output
# TensorFlow in an environment of its own (tensorflow-cpu beside the CPU torch the parity tests
# compare with), after the main suite and only for the whole suite (no arguments);
# BLIPCAP_REQUIRE_TF makes a missing TensorFlow fail these tests instead of skipping them.
if [ "$#" -eq 0 ]; then
  if [ ! -x .venv-tf/bin/python ]; then
    python3 -m venv .venv-tf
  fi
  .venv-tf/bin/python -m pip install --quiet -c constraints.txt -e ".[torch,tf,test]"
  BLIPCAP_REQUIRE_TF=1 .venv-tf/bin/python -m pytest -q tests/engine/test_tf_backend.py
fi
