#!/usr/bin/env bash
# For a lent GPU machine (its python3 has torch, torchvision, transformers, tokenizers, safetensors,
# pytest; no Ray, no network). Run from the repository root:  bash benchmarks/gpu.sh
#   1. the CUDA tests (CUDA graphs == eager tokens in fp32/fp16/bf16; fp32 GPU == CPU tokens)
#   2. the transformers parity suite with blipcap on CUDA (BLIPCAP_TEST_DEVICE=cuda, float32)
#   3. benchmarks/bench_gpu.py: blipcap fp16 (CUDA graphs on and off) and bf16 vs transformers fp16 at
#      batch 64, large shape, 3 beams, 20 new tokens, same images; identical-token share; the split
#      into preprocessing / encoding / decoding; one more fp16 run at batch 256
#   4. benchmarks/bench_bulk.py: the folder job's images/s against the model alone, fp16, batch 64
# About 6 minutes on an H100/H200 (each step has a time limit; the whole stays under ~10).
# Any failure stops the script with a non-zero status. GPU_SH_SKIP_TESTS=1 reruns only 3 and 4.
# Figures and logs go to $OUT when set (the device tool's folder), else to /tmp/blipcap-gpu-results.
set -euo pipefail
export PYTHONPATH="$PWD/src:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
results="${OUT:-/tmp/blipcap-gpu-results}"
mkdir -p "$results"
py=python3

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
$py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"

if [[ "${GPU_SH_SKIP_TESTS:-0}" != 1 ]]; then
  step "CUDA tests"
  timeout 240 $py -m pytest -q -p no:cacheprovider -x tests/engine/test_cuda.py 2>&1 | tee "$results/cuda-tests.log"
  step "parity with transformers, blipcap on CUDA"
  BLIPCAP_TEST_DEVICE=cuda timeout 240 $py -m pytest -q -p no:cacheprovider -x tests/engine/test_parity.py \
    2>&1 | tee "$results/parity-cuda.log"
fi

step "blipcap vs transformers fp16, batch 64, large shape, 3 beams, 20 new tokens"
timeout 360 $py -m benchmarks.bench_gpu --shape large --images 64 --batch-size 64 --big-batch 256 --beams 3 \
  --new-tokens 20 --repeats 3 --json "$results/bench_gpu.json" 2>&1 | tee "$results/bench_gpu.log"

step "the folder job vs the model alone, fp16, batch 64 (256 12-megapixel JPEGs, 2 rounds)"
timeout 300 $py -m benchmarks.bench_bulk --device cuda --dtype float16 --batch-size 64 --images 256 --rounds 2 \
  --workers 16 2>&1 | tee "$results/bench_bulk.log"

step "done"
