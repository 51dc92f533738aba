#!/usr/bin/env bash
# The GPU machine's command for benchmarks/gpu_check.py, run from the repository root. That
# machine's python3 has torch, torchvision, timm, transformers and pytest but not all of vlpipe's
# dependencies: the missing ones travel as wheels in .whl/ (git-ignored; which ones and how to fetch
# them: benchmarks/README.md) and are installed into /tmp/site first. Results go to $OUT.
#   bash benchmarks/gpu_check.sh [gpu_check.py options, e.g. --checks seed_architecture,step_mlm_ap_mim]
set -eu
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python3 benchmarks/gpu_check.py --out "${OUT:-benchmarks/results/gpu_check}" "$@"
