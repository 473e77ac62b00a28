#!/usr/bin/env bash
# Creates the venv of onnxruntime's quantizer for the peer benchmark: install_onnxruntime.sh VENV_DIR
set -euo pipefail
venv="$1"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -r "$(dirname "$0")/requirements-onnxruntime.txt"
touch "$venv/.installed"
