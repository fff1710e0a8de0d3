#!/usr/bin/env bash
# Set up, then run the tests: fast tiny-model tests plus the real-model end-to-end test (cached after the first run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
