"""Where an op family's compiled kernels live: torch.ops.miga_fast (the C++/CUDA
extension) or torch.ops.miga_fast_triton (the Triton kernels, imported on first use,
when the family's autograd for that namespace is registered too)."""

from __future__ import annotations

import importlib

import torch

_ready: set[str] = set()


def ops_for(backend: str, family: str, register_autograd=None):
    """The namespace holding `family`'s kernels for `backend`; on the first Triton call,
    imports miga_fast.triton_kernels and runs register_autograd("miga_fast_triton")."""
    if backend == "triton":
        if family not in _ready:
            importlib.import_module("miga_fast.triton_kernels")  # registers torch.ops.miga_fast_triton
            if register_autograd is not None:
                register_autograd("miga_fast_triton")
            _ready.add(family)
        return torch.ops.miga_fast_triton
    return torch.ops.miga_fast
