#!/usr/bin/env bash
# Creates .venv (if missing) with the pinned development torch and installs diffalign editable,
# building its compiled core (CPU kernels; CUDA kernels too when nvcc is found). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q -c requirements/constraints.txt torch torchvision setuptools wheel ninja
# runtime and test dependencies, resolved against the pinned torch (planning renders headless through EGL:
# MUJOCO_GL=egl needs Mesa's libEGL, apt packages libegl1 libegl-mesa0, present on the CI image)
"${PIP[@]}" install -q -c requirements/constraints.txt -e ".[dev,rewards,eval,video,threed,molecule,docking,planning]" --no-build-isolation
# text-to-3D: nerfstudio's modules without its full dependency set (which downgrades numpy, timm and protobuf and
# pulls ~1 GB); the threed extra above holds what those modules import
"${PIP[@]}" install -q -c requirements/constraints.txt --no-deps nerfstudio nerfacc viser
# the molecule demo model's training data: only the MOSES SMILES file molsets ships is read (its dependencies,
# old pandas/Cython builds, do not install on this Python; scripts/train_molecule_demo_model.py)
"${PIP[@]}" install -q -c requirements/constraints.txt --no-deps molsets
.venv/bin/python -c "import diffalign.ops as o; print('diffalign installed; compiled ops:', o.extension_available(), '| CUDA kernels:', o.cuda_kernels_built())"
