#!/usr/bin/env bash
# For a lent GPU machine (its python3 has torch, transformers, tokenizers, safetensors, onnxruntime):
# the CUDA and parity tests, then blipcap vs transformers at batch 64 on the random large shape.
# Under 5 minutes on an H100. Run from the repository root: bash benchmarks/gpu.sh
set -uo pipefail
export PYTHONPATH="$PWD/src" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# the benchmark runs even when a test fails (its figures are still worth having), but the script's
# exit status then says so: a failed GPU test must not pass for a green run
python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/engine/test_parity.py -x 2>&1 | tail -15
tests=${PIPESTATUS[0]}
python3 -m blipcap bench --random large --device cuda --dtype float16 --batch-size 64 --images 64 \
  --beams 3 --new-tokens 20 --against transformers
bench=$?
exit $(( tests != 0 ? tests : bench ))
