#!/usr/bin/env bash
# Submit the same captioning job to a running Ray cluster with `ray job submit` (Ray's Jobs API):
# the driver runs on the head node, the runtime env installs blipcap on every node.
#
#   RAY_ADDRESS=http://HEAD:8265 bash deploy/ray-job-submit.sh 's3://my-bucket/laion-shards/*.tar' s3://my-bucket/captions/
#
# NOT RUN against a real cluster; the same command line was run here on a local Ray (see README.md).
set -euo pipefail
INPUTS=${1:?"shards, tables or folders to caption, e.g. 's3://bucket/shards/*.tar'"}
OUTPUT=${2:?"the output folder of Parquet shards, e.g. s3://bucket/captions/"}
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster's dashboard, e.g. http://HEAD:8265}"

ray job submit --address "$RAY_ADDRESS" \
  --runtime-env-json '{"pip": ["blipcap[torch,ray,datasets]==0.1.0"], "env_vars": {"HF_HOME": "/tmp/hf-cache"}}' \
  --entrypoint-num-cpus 0 \
  -- blipcap caption "$INPUTS" --engine ray --ray-address auto \
     --model large --dtype float16 --batch-size 32 --gpus-per-worker 1 --cpus-per-worker 4 \
     --output "$OUTPUT"
# Then: `ray job logs --follow JOB_ID` prints blipcap's summary; `ray job stop JOB_ID` stops it (the
# shards written are kept: submitting the same command again continues where it stopped).
