"""NVTX ranges for Nsight: the `nvtx` package where installed, else torch.cuda.nvtx on a
CUDA build with a GPU, else a no-op (torch.cuda.nvtx raises on a CPU-only setup)."""

from __future__ import annotations

import contextlib

import torch

try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - nvtx is a dependency
    _nvtx = None


@contextlib.contextmanager
def nvtx_range(name: str):
    """`with nvtx_range("pgd_step"):` marks a region in Nsight Systems / Compute."""
    if _nvtx is not None:
        with _nvtx.annotate(name, domain="miga_fast"):
            yield
    elif torch.cuda.is_available():
        torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            torch.cuda.nvtx.range_pop()
    else:
        yield
