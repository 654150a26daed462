#!/usr/bin/env bash
# Quickstart 1: set up, then caption the bundled example photos with the default model (BLIP large;
# the first run downloads it, ~1.9 GB, into the Hugging Face cache).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh torch
.venv/bin/blipcap caption examples/ "$@"
