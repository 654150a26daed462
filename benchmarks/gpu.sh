#!/usr/bin/env bash
# For a lent GPU machine (its python3 has torch, torchvision, transformers, tokenizers, safetensors,
# pytest; no Ray, no FastAPI, no network). Run from the repository root:  bash benchmarks/gpu.sh [STEP...]
#   tests   the CUDA tests (CUDA graphs == the eager fixed-shape step's tokens in fp32/fp16/bf16, and ==
#           the dynamic step's in fp32; GPU fp32 == CPU tokens; pixels through pinned memory on a copy
#           stream == the plain copy's tokens, and the copy runs while the model's stream is busy; the
#           folder job's rows the same with the input feed on and off), then the transformers parity
#           suite with blipcap on CUDA (BLIPCAP_TEST_DEVICE=cuda, float32)
#   bench   benchmarks/bench_gpu.py: blipcap fp16 (CUDA graphs, and the dynamic step without them) and bf16
#           vs transformers fp16 at batch 64, large shape, 3 beams, 20 new tokens, same images;
#           identical-token share; the split into preprocessing / encoding / decoding; fp16 at batch 256
#   bulk    benchmarks/bench_bulk.py: the folder job's images/s against the model alone, fp16, batch 64;
#           then (--overlap) both again in-process and warm with the input feed on (pinned, own copy
#           stream, batch N+1 staged during batch N) and off: the job's share of model only (>= 0.90)
#   decode  benchmarks/bench_gpu_decode.py: the same JPEGs decoded on CPU threads vs on the GPU
#           (torchvision.io.decode_jpeg on cuda), each against the model-only rate; pixel and token agreement
#   serve   benchmarks/bench_serve.py --model-only: `blipcap serve` under 128 concurrent clients, fp16,
#           batch 64, against the model alone on the same images (>= 0.90). Needs FastAPI, which that
#           machine lacks: run `bash benchmarks/gpu_wheels.sh` here first and carry .whl (the device tool's
#           carry: [".whl"]); the wheels are installed into /tmp/site. Skipped, and said so, without them.
# No STEP: all five in that order, about 9 minutes on an H100/H200 (estimated, not yet timed). Each
# step has its own time limit, and the limits of each half add up to under 590 s, so a lease runs
# them as two device calls (timeout_s 590 each) and a hung step still leaves the other steps' output:
#   bash benchmarks/gpu.sh tests bench        then        bash benchmarks/gpu.sh bulk decode serve
# A failing test or step is reported and makes the exit status non-zero, but the later steps still
# run (a lent GPU's minutes are scarce; the identical-token shares show whether the figures are
# sound). GPU_SH_SKIP_TESTS=1 drops the tests step from a run of all steps.
# Figures and logs go to $OUT when set (the device tool's folder), else to /tmp/blipcap-gpu-results.
set -euo pipefail
export PYTHONPATH="$PWD/src:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
results="${OUT:-/tmp/blipcap-gpu-results}"
mkdir -p "$results"
py=python3
photos=/tmp/blipcap-photos  # the 12-megapixel JPEGs, written once, shared by bulk and decode
steps=("$@")
if (( ! ${#steps[@]} )); then
  steps=(tests bench bulk decode serve)
  [[ "${GPU_SH_SKIP_TESTS:-0}" == 1 ]] && steps=(bench bulk decode serve)
fi
for s in "${steps[@]}"; do
  [[ " tests bench bulk decode serve " == *" $s "* ]] || { echo "unknown step: $s" >&2; exit 2; }
done
wants() { [[ " ${steps[*]} " == *" $1 "* ]]; }

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
$py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"

failed=()
if wants tests; then
  step "CUDA tests"
  timeout 170 $py -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/engine/test_feed.py \
    tests/jobs/test_bulk_feed.py 2>&1 | tee "$results/cuda-tests.log" \
    || failed+=("CUDA tests")
  step "parity with transformers, blipcap on CUDA"
  BLIPCAP_TEST_DEVICE=cuda timeout 130 $py -m pytest -q -p no:cacheprovider tests/engine/test_parity.py \
    2>&1 | tee "$results/parity-cuda.log" || failed+=("parity on CUDA")
fi

if wants bench; then
  step "blipcap vs transformers fp16, batch 64, large shape, 3 beams, 20 new tokens"
  timeout 280 $py -m benchmarks.bench_gpu --shape large --images 64 --batch-size 64 --big-batch 256 --beams 3 \
    --new-tokens 20 --repeats 3 --json "$results/bench_gpu.json" 2>&1 | tee "$results/bench_gpu.log" \
    || failed+=("bench_gpu")
fi

# 512 images: the job's first batch waits for its images to decode while model only does not, a cost
# that more batches spread thin
if wants bulk; then
  step "the folder job vs the model alone, fp16, batch 64 (512 12-megapixel JPEGs, 2 rounds; input feed on/off)"
  timeout 240 $py -m benchmarks.bench_bulk --device cuda --dtype float16 --batch-size 64 --images 512 --rounds 2 \
    --workers 16 --overlap --ab-repeats 2 --dir "$photos" 2>&1 | tee "$results/bench_bulk.log" \
    || failed+=("bench_bulk")
fi

if wants decode; then
  step "JPEG decoding on 16 CPU threads vs on the GPU (torchvision), 512 12-megapixel JPEGs, vs model only"
  timeout 150 $py -m benchmarks.bench_gpu_decode --device cuda --dtype float16 --batch-size 64 --images 512 \
    --workers 16 --dir "$photos" 2>&1 | tee "$results/bench_gpu_decode.log" || failed+=("bench_gpu_decode")
fi

if wants serve; then
  if [[ -d .whl ]] && ! $py -c "import fastapi, uvicorn, python_multipart, prometheus_client" 2>/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
  if $py -c "import fastapi, uvicorn, python_multipart, prometheus_client" 2>/dev/null; then
    step "blipcap serve under 128 clients vs the model alone, fp16, batch 64, 3 beams, 20 new tokens"
    timeout 180 $py -m benchmarks.bench_serve --device cuda --dtype float16 --max-batch-size 64 --beams 3 \
      --new-tokens 20 --clients 128 --requests 512 --sequential 4 --model-only 2>&1 \
      | tee "$results/bench_serve.log" || failed+=("bench_serve")
  else
    step "SKIPPED the server step: no FastAPI here (run benchmarks/gpu_wheels.sh and carry .whl)"
    failed+=("serve: no FastAPI")
  fi
fi

if (( ${#failed[@]} )); then
  step "FAILED: ${failed[*]} (see $results)"
  exit 1
fi
step "done: ${steps[*]} passed"
