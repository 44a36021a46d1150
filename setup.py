"""Builds miga_fast._C: the CPU kernels always, the CUDA kernels when nvcc and a CUDA
build of torch are present.

Environment:
  MIGA_FAST_CUDA=1      build the CUDA kernels or fail loudly; =0 skip them; unset: auto
  TORCH_CUDA_ARCH_LIST  the archs to build for (default: the visible GPU's, else
                        csrc/DEFAULT_CUDA_ARCH, 9.0 = H100/H200; CMake reads the same file)
  MAX_JOBS              parallel compile jobs (default: the core count)
  CUDA_HOME             the toolkit (default /usr/local/cuda when it exists)

Torch extensions build against the installed torch: install with
`pip install --no-build-isolation .` (the Makefile does).
"""

import os
import sys
from pathlib import Path

from setuptools import find_namespace_packages, setup

ROOT = Path(__file__).resolve().parent

# torch guesses CUDA_HOME from the nvcc on PATH (here /usr/local, which has no
# libcudart) when the variable is unset, and fixes it at import: set it first.
if not os.environ.get("CUDA_HOME") and Path("/usr/local/cuda/bin/nvcc").exists():
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _want_cuda():
    """(build CUDA?, reason) from MIGA_FAST_CUDA, torch.version.cuda and CUDA_HOME.
    Never from torch.cuda.is_available(): a build machine needs no GPU."""
    flag = os.environ.get("MIGA_FAST_CUDA", "").strip()
    if flag == "0":
        return False, "MIGA_FAST_CUDA=0"
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build")
    home = cpp_extension.CUDA_HOME
    if not home or not Path(home, "bin", "nvcc").exists():
        problems.append("no nvcc found (set CUDA_HOME)")
    if problems:
        if flag == "1":
            sys.exit("miga_fast: MIGA_FAST_CUDA=1 but CUDA cannot be built: " + "; ".join(problems))
        return False, "; ".join(problems)
    return True, f"CUDA {torch.version.cuda} at {home}"


def _arch_list(with_cuda):
    if not with_cuda:
        return ""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():  # torch builds for the visible GPU
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    # torch's build code fails with no visible GPU and no list: the project's default
    default = (ROOT / "csrc" / "DEFAULT_CUDA_ARCH").read_text().strip()
    os.environ["TORCH_CUDA_ARCH_LIST"] = default
    return default


def _write_build_info(with_cuda, reason, archs):
    text = (
        '"""Written by setup.py at build time: what miga_fast._C was built against."""\n'
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"TORCH_CUDA_VERSION = {torch.version.cuda!r}\n"
        f"WITH_CUDA = {with_cuda!r}\n"
        f"CUDA_REASON = {reason!r}\n"
        f"CUDA_ARCH_LIST = {archs!r}\n"
        f"PYTHON_VERSION = {'.'.join(map(str, sys.version_info[:3]))!r}\n"
    )
    (ROOT / "miga_fast" / "_build_info.py").write_text(text)


def _extension():
    with_cuda, reason = _want_cuda()
    archs = _arch_list(with_cuda)
    _write_build_info(with_cuda, reason, archs)
    csrc = ROOT / "csrc"
    rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731
    sources = [rel(csrc / "ops.cpp"), rel(csrc / "python_module.cpp")]
    sources += sorted(rel(p) for p in (csrc / "cpu").glob("*.cpp"))
    # torch sets -std (C++20 from torch 2.13). -fno-trapping-math lets gcc if-convert selects
    # (ReLU, clamps) so loops vectorise; it changes no result (nothing reads the FP flags).
    cxx = ["-O3", "-fno-trapping-math", "-fvisibility=hidden"]
    # at::parallel_for is a header template: without -fopenmp (and torch built on OpenMP)
    # it compiles to a serial loop, and every CPU kernel runs on one thread. The runtime is
    # torch's own libgomp.so.1 (same soname, already loaded when the extension is).
    link = []
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if with_cuda:
        sources += sorted(rel(p) for p in (csrc / "cuda").glob("*.cpp"))
        sources += sorted(rel(p) for p in (csrc / "cuda").glob("*.cu"))
        print(f"miga_fast: building the CPU and CUDA kernels ({reason}; archs {archs})")
        return cpp_extension.CUDAExtension(
            "miga_fast._C",
            sources,
            include_dirs=[str(csrc)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link,
        )
    print(f"miga_fast: building without CUDA ({reason}): CPU kernels only")
    return cpp_extension.CppExtension(
        "miga_fast._C", sources, include_dirs=[str(csrc)], extra_compile_args={"cxx": cxx}, extra_link_args=link
    )


# Packages are discovered, not listed: every folder under miga_fast/ (the checkpoint folder
# is a namespace package holding data only), plus the Triton kernels, which live in the
# top-level triton_kernels/ folder and install inside the package (a bare `triton_kernels`
# would clash with another published package).
PACKAGES = find_namespace_packages(
    include=["miga_fast", "miga_fast.*"], exclude=["*.__pycache__", "miga_fast.triton_kernels"]
) + ["miga_fast.triton_kernels"]

setup(
    packages=PACKAGES,
    package_dir={"miga_fast.triton_kernels": "triton_kernels"},
    # The committed checkpoints, their manifest and the diffusion model's sample sheet.
    package_data={"miga_fast.models.checkpoints": ["*.pt", "*.json", "*.png"]},
    include_package_data=False,
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
