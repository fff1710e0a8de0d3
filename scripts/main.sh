#!/usr/bin/env bash
# From nothing to ML-SpecQD on the default real models: set up, fetch, convert, export, then generate with
# ML-SpecQD's chain target <- target-mxfp4 <- draft and with the chain `specqd tune` finds fastest, each
# compared with the BF16 target alone on the same prompt.
# Everything heavy is cached under ${SPECQD_CACHE:-~/.cache/specqd}; a second run only generates.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cache="${SPECQD_CACHE:-$HOME/.cache/specqd}"
out="${1:-$cache/exports/qwen2.5-coder-1.5b}"
if [ -f "$out/specqd.json" ]; then
  echo "reusing the export in $out (delete it to export again):"
  .venv/bin/python - "$out" <<'PY'
import sys
from specqd.exporter.cli import summary_table
from specqd.runtime.manifest import Manifest
print(summary_table(Manifest.read(sys.argv[1])))
PY
else
  # The extra formats are for `specqd bench`, which compares them.
  .venv/bin/export-mxfp4 qwen2.5-coder-1.5b "$out" --draft qwen2.5-coder-0.5b \
    --format mxfp4,int4_sym --draft-format bf16,mxfp4,int4_sym
fi
# The 0.5B INT4 draft with its lm_head cut to the 32k most frequent tokens drafts fastest (docs/draft-vocabulary.md).
grep -q '"draft-int4_sym-v32k"' "$out/specqd.json" || .venv/bin/reduce-vocabulary "$out" draft-int4_sym --sizes 32768
# Choose the fastest chain and draft lengths for this machine once (about 4 minutes); the demo shows it too.
grep -q '"tuned": {' "$out/specqd.json" || .venv/bin/specqd tune "$out"
.venv/bin/python scripts/demo.py "$out"
