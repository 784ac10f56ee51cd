"""Build of diffalign and its compiled core ``diffalign._C``.

CPU kernels (OpenMP) are always built. CUDA kernels are added when the installed torch has CUDA and
nvcc is found (CUDA_HOME); no GPU is needed to compile them. Environment switches:
  DIFFALIGN_CUDA=1|0     force the CUDA kernels on or off (default: auto)
  DIFFALIGN_BUILD_EXT=0  skip the extension entirely (pure-PyTorch reference ops, with a warning)
  TORCH_CUDA_ARCH_LIST   CUDA architectures; default here "8.0;9.0" when no GPU is visible
Install with ``pip install --no-build-isolation -e .`` so the build uses the torch you installed.
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name, default=None):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.lower() not in ("0", "false", "no", "off")


def _extensions():
    if not _flag("DIFFALIGN_BUILD_EXT", True):
        return [], {}
    # torch guesses CUDA_HOME from nvcc's location and can land on /usr/local (no CUDA headers);
    # prefer the toolkit folder when the user did not choose one
    if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    try:
        import torch
    except ImportError:
        raise SystemExit("diffalign compiles its core against the torch you run with: install torch first, then "
                         "`pip install --no-build-isolation .` (or set DIFFALIGN_BUILD_EXT=0 for the pure-PyTorch ops)")
    from torch.utils import cpp_extension

    want_cuda = _flag("DIFFALIGN_CUDA")
    can_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if want_cuda is None:
        want_cuda = can_cuda
    if want_cuda and not can_cuda:
        raise RuntimeError("DIFFALIGN_CUDA=1 but torch has no CUDA or nvcc was not found (set CUDA_HOME)")

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/cpu/*.cpp") + rel("csrc/torch/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # no -std here: cpp_extension picks the standard the installed torch was built with (C++20 for
    # 2.14, C++17 before); a mismatch breaks exceptions thrown across the torch boundary
    cxx = ["-O3", "-fno-math-errno", "-fopenmp"]
    define_macros = []
    extra_link = ["-fopenmp"]
    if want_cuda:
        sources += rel("csrc/cuda/*.cu") + rel("csrc/torch/cuda/*.cpp")
        # The pip CUDA wheels keep some headers (cusparse.h) under site-packages/nvidia/cu*/include.
        # Search them after CUDA_HOME's own headers (-idirafter): that folder also holds a partial
        # copy of the runtime headers that must not shadow the toolkit's.
        try:
            import nvidia
            for base in getattr(nvidia, "__path__", []):
                for inc in sorted(glob.glob(os.path.join(base, "cu*", "include"))):
                    cxx += ["-idirafter", inc]
        except ImportError:  # a torch not from PyPI: its toolkit has all headers
            pass
        define_macros.append(("DIFFALIGN_WITH_CUDA", "1"))
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        ext = cpp_extension.CUDAExtension(
            "diffalign._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
            extra_link_args=extra_link)
    else:
        ext = cpp_extension.CppExtension(
            "diffalign._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
            extra_link_args=extra_link)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

packages = find_packages(include=["diffalign", "diffalign.*"])
packages += ["diffalign.modalities"] + [
    "diffalign.modalities." + p for p in find_packages(where="modalities")]

setup(
    name="diffalign",
    version="0.1.0",
    description="Align diffusion models with human preferences and rewards",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"diffalign": "diffalign", "diffalign.modalities": "modalities"},
    package_data={"diffalign": ["configs/*.yaml", "assets/**/*"]},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "pyyaml",
        "tqdm",
        "safetensors",
        "tensorboard",
        "pillow",
        "pyarrow",
        "matplotlib",
        "diffusers>=0.30",
        "transformers>=4.40",
        "peft>=0.12",
        "accelerate>=0.34",
    ],
    extras_require={
        "dev": ["pytest", "expecttest", "ninja"],
        # reward backbones (HPS v2 is an open_clip model) and the evaluation suite (FID / KID / IS)
        "rewards": ["open_clip_torch>=2.20", "scipy"],
        "eval": ["torchmetrics>=1.0", "torch-fidelity", "scipy"],
        # the video modality's clip files (mp4 through PyAV's ffmpeg, gif through pillow)
        "video": ["imageio>=2.30", "av>=12"],
        # the planning modality: MuJoCo environments (offscreen rendering through EGL) and HDF5 trajectory files
        "planning": ["gymnasium[mujoco]>=1.0", "h5py>=3"],
    },
    # console script and entry points (diffalign.modalities / diffalign.rewards): pyproject.toml
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
