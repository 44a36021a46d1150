"""Loads the emulated-CUDA library (csrc/emulation/): the CUDA kernels and their torch
glue compiled as C++ against a fiber emulator, registered as CPU kernels of
torch.ops.miga_fast_emu. It lets CI run every CUDA kernel without a GPU. Needs only the
CUDA headers (no GPU, no nvcc).

The library is CMake's target miga_fast_cuda_emulation (built by `make test-cpp`) when
MIGA_FAST_EMULATION_LIB names it, or when build/cmake holds one newer than every source it
is built from; otherwise it is built here with torch.utils.cpp_extension (cached under
build/cuda_emulation)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
FAMILIES = ("projection", "ssim", "mine", "sampler")


def cuda_include() -> Path | None:
    from torch.utils.cpp_extension import CUDA_HOME

    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda", CUDA_HOME):
        inc = Path(home or "/nonexistent") / "include"
        if (inc / "cuda_runtime_api.h").exists() and (inc / "cuda_fp16.h").exists():
            return inc
    return None


CMAKE_LIBRARY = ROOT / "build" / "cmake" / "libmiga_fast_cuda_emulation.so"


def _sources() -> list[Path]:
    return [
        *(CSRC / "emulation").rglob("*"),
        *(CSRC / "cuda").glob("*"),
        *(CSRC / "common").glob("*"),
        CSRC / "schemas.h",
    ]


def prebuilt() -> Path | None:
    """The CMake-built library to load, if there is one that is up to date."""
    named = os.environ.get("MIGA_FAST_EMULATION_LIB")
    if named:
        if not Path(named).exists():
            raise FileNotFoundError(f"MIGA_FAST_EMULATION_LIB={named} does not exist")
        return Path(named)
    if CMAKE_LIBRARY.exists():
        built = CMAKE_LIBRARY.stat().st_mtime
        if all(p.stat().st_mtime <= built for p in _sources() if p.is_file()):
            return CMAKE_LIBRARY
    return None


def load() -> None:
    """Loads the library into torch.ops.miga_fast_emu (building it first, ~2 min on 2 cores,
    when CMake has not)."""
    if hasattr(torch.ops, "miga_fast_emu") and hasattr(torch.ops.miga_fast_emu, "sampler_step"):
        return
    library = prebuilt()
    if library is not None:
        torch.ops.load_library(str(library))
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
        extra_cflags=["-O2", "-std=c++20"],
        # the shim first: its cuda_runtime.h and c10/cuda headers stand in for the real ones
        extra_include_paths=[str(CSRC / "emulation" / "shim"), str(CSRC), str(include)],
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
    for family in FAMILIES:
        importlib.import_module(f"miga_fast.ops.{family}")._register_cpp("miga_fast_emu")
    _python_parts_registered = True
