#!/usr/bin/env bash
# Sets up lorascope with its test dependencies and runs the whole test suite (CPU only; GPU tests
# are skipped without CUDA). The browser test needs Debian's chromium, and the file-format tests
# HDF5's own command-line tools (h5dump, h5ls, h5clear of Debian's hdf5-tools, HDF5 1.10): both
# are installed here when apt-get is available as root, otherwise those tests are skipped with a
# reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
        || echo "chromium could not be installed; the browser test will be skipped" >&2
fi
if ! command -v h5dump >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq hdf5-tools >/dev/null) \
        || echo "hdf5-tools could not be installed; the h5dump/h5ls tests will be skipped" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec "${PYTHON:-python3}" -m pytest -q "$@"
