#!/usr/bin/env bash
# Create .venv with specqd, the exporter and the test tools. Safe to re-run; takes about 30 s once done.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
# The CPU build of torch, held by a constraint through the whole install: a bare "torch" from PyPI is a
# multi-GB CUDA build, and optimum-intel's torchvision would otherwise upgrade torch to one.
constraint="$(mktemp)"; trap 'rm -f "$constraint"' EXIT
echo "torch==2.13.0" > "$constraint"
"${pip[@]}" install --quiet -c "$constraint" "torch==2.13.0"
# The editable install compiles specqd's MXFP4 kernel (CMake + g++, about 20 s; see pyproject.toml).
"${pip[@]}" install --quiet -c "$constraint" -e ".[dev]"
# optimum-intel pulls in torchvision, whose PyPI build fails to import beside the CPU torch
# ("operator torchvision::nms does not exist") and then breaks transformers. Nothing here needs it.
"${pip[@]}" uninstall --quiet -y torchvision 2>/dev/null || true
# What the README promises: the CPU torch, and none of the multi-GB CUDA wheels a newer torch would bring.
cuda="$("${pip[@]}" list --format=freeze | grep -iE '^(nvidia-|triton|cuda-)' | tr '\n' ' ' || true)"
torch="$(.venv/bin/python -c 'from importlib.metadata import version; print(version("torch"))')"
if [ "$torch" != "2.13.0+cpu" ] || [ -n "$cuda" ]; then
    echo "setup: expected torch 2.13.0+cpu and no CUDA wheels, got torch $torch $cuda" >&2
    exit 1
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import openvino; print("openvino", openvino.__version__)'), torch $torch)"
