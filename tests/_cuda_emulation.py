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

    mine = importlib.import_module("miga_fast.ops.mine")  # miga_fast.ops.ssim is also a function
    ssim = importlib.import_module("miga_fast.ops.ssim")

    def fake(name):
        return torch.library.register_fake(f"miga_fast_emu::{name}")

    for name in ("pgd_step_linf_", "pgd_step_l2_", "mi_fgsm_step_", "project_linf_", "project_l2_",
                 "ssim_window_ball_project_"):
        fake(name)(lambda *args, **kwargs: None)
    fake("ssim")(lambda x, *args: x.new_empty(x.shape[:1]))
    fake("ssim_value_and_grad")(lambda x, y, *args: (x.new_empty(x.shape[:1]), torch.empty_like(x),
                                                     torch.empty_like(y)))
    fake("ssim_ball_scale")(lambda delta, x, *args: x.new_empty(x.shape[:1]))
    fake("mine_row_lse")(lambda u, *args: u.new_empty(u.shape[:1]))
    fake("mine_row_lse_backward")(lambda grad, u, v, w2, *args: (torch.empty_like(u), torch.empty_like(v),
                                                                  torch.empty_like(w2)))
    ssim._register_autograd("miga_fast_emu")
    mine._register_autograd("miga_fast_emu")
    _python_parts_registered = True
