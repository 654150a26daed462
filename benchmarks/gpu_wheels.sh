#!/usr/bin/env bash
# Fetches (here, from PyPI) the wheels that `blipcap serve` needs and the lent GPU machine lacks,
# for its Python 3.12 on x86-64, into .whl/ (git-ignored). Carry them to the GPU machine with the
# device tool's `carry: [".whl"]`; benchmarks/gpu.sh installs them into /tmp/site when .whl/ is
# there and then runs its server step, which it skips without them. The versions are the ones the
# test suite runs with here (prometheus_client too: the machine has one, of a version not tested
# here); pip resolves their own needs (anyio, h11, click, ...) for that Python.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 uvicorn==0.55.0 python-multipart==0.0.34 \
  prometheus_client==0.26.0
ls .whl
du -sh .whl
