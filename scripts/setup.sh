#!/usr/bin/env bash
# Install torch_lottery with its test and example dependencies on a fresh machine of this kind.
# torch/torchvision are pinned here (not in the library): these builds install from this machine's disk.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[dev]"
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
        || echo "setup.sh: could not install Debian's dataset-fashion-mnist; data tests will be skipped" >&2
fi
