"""Builds and loads the emulated-CUDA library (csrc/emulation/): the CUDA kernels and
their torch glue compiled as C++ against a fiber emulator, registered as CPU kernels of
torch.ops.miga_fast_emu. It lets CI run every CUDA kernel without a GPU. Needs only the
CUDA headers (no GPU, no nvcc); the build is cached under build/cuda_emulation."""
from __future__ import annotations

import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
FAMILIES = ("projection", "ssim", "mine")


def cuda_include() -> Path | None:
    from torch.utils.cpp_extension import CUDA_HOME

    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda", CUDA_HOME):
        inc = Path(home or "/nonexistent") / "include"
        if (inc / "cuda_runtime_api.h").exists() and (inc / "cuda_fp16.h").exists():
            return inc
    return None


def load() -> None:
    """Compiles (first call; ~2 min on 2 cores) and loads the library into torch.ops.miga_fast_emu."""
    if hasattr(torch.ops, "miga_fast_emu") and hasattr(torch.ops.miga_fast_emu, "ssim"):
        return
    from torch.utils.cpp_extension import load as load_extension

    include = cuda_include()
    if include is None:
        raise FileNotFoundError("the CUDA headers (cuda_runtime_api.h) are not installed")
    build = ROOT / "build" / "cuda_emulation"
    build.mkdir(parents=True, exist_ok=True)
    sources = [CSRC / "emulation" / "library.cpp", CSRC / "emulation" / "selftest.cpp"]
    for family in FAMILIES:
        sources += [CSRC / "emulation" / f"{family}_kernels.cpp", CSRC / "cuda" / f"{family}.cpp"]
    load_extension(
        name="miga_fast_cuda_emulation",
        sources=[str(s) for s in sources],
        extra_cflags=["-O2", "-std=c++20", "-DMIGA_FAST_CUDA_EMULATION"],
        extra_include_paths=[str(CSRC), str(include)],
        build_directory=str(build),
        is_python_module=False,
        verbose=False,
    )


_python_parts_registered = False


def register_python_parts() -> None:
    """What miga_fast.ops adds to torch.ops.miga_fast, added to miga_fast_emu: fake kernels
    (so opcheck can trace the ops) and the autograd formulas (so gradcheck goes through
    the emulated backward kernels)."""
    global _python_parts_registered
    if _python_parts_registered:
        return
    import importlib

    # the modules (miga_fast.ops.ssim and .mine are also functions)
    for family in ("projection", "ssim", "mine"):
        importlib.import_module(f"miga_fast.ops.{family}")._register_cpp("miga_fast_emu")
    _python_parts_registered = True
