#!/usr/bin/env bash
# Create .venv with specqd, the exporter and the test tools. Safe to re-run; takes seconds once done.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
# The CPU build of torch, held by a constraint through the whole install: a bare "torch" from PyPI is a
# multi-GB CUDA build, and optimum-intel's torchvision would otherwise upgrade torch to one.
constraint="$(mktemp)"; trap 'rm -f "$constraint"' EXIT
echo "torch==2.13.0" > "$constraint"
"${pip[@]}" install --quiet -c "$constraint" "torch==2.13.0"
"${pip[@]}" install --quiet -c "$constraint" -e ".[dev]"
# optimum-intel pulls in torchvision, whose PyPI build fails to import beside the CPU torch
# ("operator torchvision::nms does not exist") and then breaks transformers. Nothing here needs it.
"${pip[@]}" uninstall --quiet -y torchvision 2>/dev/null || true
# specqd's MXFP4 kernel (cached per OpenVINO version and source); without it MXFP4 levels run on OpenVINO's path.
.venv/bin/specqd build-kernel >/dev/null || echo "setup: MXFP4 kernel not built (see above); MXFP4 levels will use OpenVINO's own path"
echo "setup: .venv ready ($(.venv/bin/python -c 'import openvino; print("openvino", openvino.__version__)'))"
